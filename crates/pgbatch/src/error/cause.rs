//! Why a statement or the commit failed, classified by SQLSTATE.

use std::fmt;

use super::guard::GuardFailure;
use super::server::{ServerError, SqlState};

/// The server-side reason a statement or the commit failed.
///
/// The integrity-constraint variants carry the constraint, table and column the server
/// reported; map them to your domain ("already exists", "no such parent", ...).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Cause {
    /// `23505`: a unique or primary-key constraint was violated.
    UniqueViolation(Violation),
    /// `23503`: a foreign-key constraint was violated.
    ForeignKeyViolation(Violation),
    /// `23514`: a check constraint was violated.
    CheckViolation(Violation),
    /// `23502`: a `NOT NULL` column was given no value.
    NotNullViolation(Violation),
    /// `23P01`: an exclusion constraint was violated.
    ExclusionViolation(Violation),
    /// `40001`: the transaction could not be serialized with concurrent ones. Safe to retry.
    SerializationFailure(Box<ServerError>),
    /// `40P01`: the transaction was chosen as a deadlock victim. Safe to retry.
    Deadlock(Box<ServerError>),
    /// `25006`: the server does not accept writes: a hot standby, or a primary that is
    /// still read-only during a failover. Nothing was written. A batch run on a pool or a
    /// [`Multiplexed`](crate::Multiplexed) client is replayed on a fresh connection (this one is discarded: it will not become
    /// writable), as its retry policy allows; on a bare connection, reconnect, with
    /// `target_session_attrs=read-write` so that only a server that accepts writes is
    /// chosen.
    ReadOnly(Box<ServerError>),
    /// A guard of the batch failed on the server.
    GuardFailed(GuardFailure),
    /// Any other SQLSTATE, with the server's message, detail and hint.
    Server(Box<ServerError>),
}

impl Cause {
    /// Classifies a server error by its SQLSTATE.
    pub(crate) fn from_server(error: ServerError) -> Self {
        let violation = |error| Violation { error: Box::new(error) };
        match *error.code() {
            SqlState::UNIQUE_VIOLATION => Cause::UniqueViolation(violation(error)),
            SqlState::FOREIGN_KEY_VIOLATION => Cause::ForeignKeyViolation(violation(error)),
            SqlState::CHECK_VIOLATION => Cause::CheckViolation(violation(error)),
            SqlState::NOT_NULL_VIOLATION => Cause::NotNullViolation(violation(error)),
            SqlState::EXCLUSION_VIOLATION => Cause::ExclusionViolation(violation(error)),
            SqlState::T_R_SERIALIZATION_FAILURE => Cause::SerializationFailure(Box::new(error)),
            SqlState::T_R_DEADLOCK_DETECTED => Cause::Deadlock(Box::new(error)),
            SqlState::READ_ONLY_SQL_TRANSACTION => Cause::ReadOnly(Box::new(error)),
            _ => Cause::Server(Box::new(error)),
        }
    }

    /// A short name of the kind of failure, without any of the server's text.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Cause::UniqueViolation(_) => "unique violation",
            Cause::ForeignKeyViolation(_) => "foreign-key violation",
            Cause::CheckViolation(_) => "check violation",
            Cause::NotNullViolation(_) => "not-null violation",
            Cause::ExclusionViolation(_) => "exclusion violation",
            Cause::SerializationFailure(_) => "serialization failure",
            Cause::Deadlock(_) => "deadlock",
            Cause::ReadOnly(_) => "read-only server",
            Cause::GuardFailed(_) => "guard failed",
            Cause::Server(_) => "server error",
        }
    }

    /// The violated constraint's name, for integrity-constraint violations.
    pub fn constraint(&self) -> Option<&str> {
        self.violation().and_then(Violation::constraint)
    }

    /// The violation detail, for the integrity-constraint variants.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Cause::UniqueViolation(v)
            | Cause::ForeignKeyViolation(v)
            | Cause::CheckViolation(v)
            | Cause::NotNullViolation(v)
            | Cause::ExclusionViolation(v) => Some(v),
            _ => None,
        }
    }

    /// The server's error, for every variant but [`Cause::GuardFailed`].
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Cause::SerializationFailure(e) | Cause::Deadlock(e) | Cause::ReadOnly(e) | Cause::Server(e) => Some(e),
            Cause::GuardFailed(_) => None,
            _ => self.violation().map(|v| &*v.error),
        }
    }

    /// The SQLSTATE code, for every variant but [`Cause::GuardFailed`].
    pub fn code(&self) -> Option<&SqlState> {
        self.server_error().map(ServerError::code)
    }

    /// Whether replaying the same batch may succeed: serialization failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        matches!(self, Cause::SerializationFailure(_) | Cause::Deadlock(_))
    }

    /// Whether the server ended the session with this error (`FATAL`/`PANIC`), for
    /// example when the backend was terminated.
    pub fn ended_connection(&self) -> bool {
        self.server_error().is_some_and(ServerError::ended_session)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::SerializationFailure(e) | Cause::Deadlock(e) => write!(f, "{}: {}", self.kind(), e.message()),
            Cause::GuardFailed(guard) => guard.fmt(f),
            Cause::ReadOnly(e) => write!(
                f,
                "the server does not accept writes ({}): it is a standby or not yet a writable primary; connect \
                 with target_session_attrs=read-write",
                e.message()
            ),
            Cause::Server(e) => e.fmt(f),
            _ => {
                let violation = self.violation().expect("integrity variants carry a violation");
                f.write_str(self.kind())?;
                if let Some(constraint) = violation.constraint() {
                    write!(f, " on {constraint:?}")?;
                }
                if let Some(table) = violation.table() {
                    match violation.column() {
                        Some(column) => write!(f, " (column {table}.{column})")?,
                        None => write!(f, " (table {table})")?,
                    }
                }
                write!(f, ": {}", violation.message())
            }
        }
    }
}

/// A cause for logs: its kind, SQLSTATE and constraint, without the server's message
/// (which can quote bind values).
pub(crate) struct CauseSummary<'a>(pub(crate) &'a Cause);

impl fmt::Display for CauseSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = self.0;
        if let Cause::GuardFailed(guard) = cause {
            return guard.fmt(f);
        }
        write!(f, "{} {}", cause.kind(), cause.code().map_or("", |c| c.code()))?;
        if let Some(constraint) = cause.constraint() {
            write!(f, " on {constraint:?}")?;
        }
        if let Some(column) = cause.violation().and_then(Violation::column) {
            write!(f, " (column {column})")?;
        }
        Ok(())
    }
}

/// An integrity-constraint violation as the server reported it.
#[derive(Debug, Clone)]
pub struct Violation {
    error: Box<ServerError>,
}

impl Violation {
    /// The violated constraint, when the server names one (not-null violations don't).
    pub fn constraint(&self) -> Option<&str> {
        self.error.constraint()
    }
    /// The table the constraint belongs to.
    pub fn table(&self) -> Option<&str> {
        self.error.table()
    }
    /// The column, for not-null violations.
    pub fn column(&self) -> Option<&str> {
        self.error.column()
    }
    /// The table's schema.
    pub fn schema(&self) -> Option<&str> {
        self.error.schema()
    }
    /// The server's primary message.
    pub fn message(&self) -> &str {
        self.error.message()
    }
    /// The server's detail, which may contain the offending values: it is left out of
    /// `Display` so that it does not reach logs by accident.
    pub fn detail(&self) -> Option<&str> {
        self.error.detail()
    }
    /// The full server error.
    pub fn server_error(&self) -> &ServerError {
        &self.error
    }
}

//! Errors: what went wrong, where, and what became of every statement.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use tokio_postgres::error::{DbError, Severity, SqlState};

use crate::guard::GuardFailure;

/// The error of running a batch.
///
/// Every variant says whether anything may have been committed:
///
/// | variant | committed? |
/// |---|---|
/// | [`Invalid`](Error::Invalid), [`Connection`](Error::Connection), [`ConnectionClosed`](Error::ConnectionClosed), [`Pool`](Error::Pool) | no |
/// | [`Statement`](Error::Statement), [`Domain`](Error::Domain), [`Commit`](Error::Commit), [`IdempotencyMarker`](Error::IdempotencyMarker), [`Send`](Error::Send) | no, the transaction was rolled back |
/// | [`AlreadyCommitted`](Error::AlreadyCommitted) | not now: an earlier run with the same key did |
/// | [`OutcomeUnknown`](Error::OutcomeUnknown) | unknown: it may have committed |
///
/// `E` is the domain error that fragments map their failures to (see
/// [`Fragment`](crate::Fragment)); a batch built without fragment mappings uses
/// [`Infallible`] and never returns [`Error::Domain`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E = Infallible> {
    /// A statement could not be rendered or encoded, or is not allowed in a batch. Raised
    /// before anything is sent: the database was not touched.
    ///
    /// This is a bug in the calling code (or a value that cannot be encoded); retrying the
    /// same batch fails the same way. The source says which rule was broken.
    #[error("batch not sent: {}: {source}", StatementRefDisplay(statement.as_ref()))]
    Invalid {
        /// The offending statement, when the problem belongs to one.
        statement: Option<StatementRef>,
        /// What is wrong with it.
        source: Arc<BuildError>,
    },

    /// A statement failed on the server (or its guard failed), so the whole transaction was
    /// rolled back: nothing of the batch is in the database.
    ///
    /// Inspect [`StatementFailure::cause`] to decide: a unique violation usually means
    /// "already exists" to the caller, a serialization failure or deadlock can be retried
    /// (pgbatch retries those itself when a [`RetryPolicy`](crate::RetryPolicy) allows).
    #[error(transparent)]
    Statement(Box<StatementFailure>),

    /// A statement that belongs to a fragment failed, and the fragment mapped the failure to
    /// its domain error. The transaction was rolled back, exactly as for
    /// [`Error::Statement`]; `failure` keeps the statement-level detail.
    #[error("{error} ({failure})")]
    Domain {
        /// The fragment's domain error.
        error: E,
        /// The statement-level failure the domain error was derived from.
        failure: Box<StatementFailure>,
    },

    /// Every statement succeeded but `COMMIT` failed (a deferred constraint, a
    /// serialization failure detected at commit). The transaction was rolled back.
    #[error(transparent)]
    Commit(Box<CommitFailure>),

    /// The connection was lost after `COMMIT` may have reached the server: the batch may
    /// or may not have committed.
    ///
    /// Never treat this as success or failure. Resolve it: with an idempotency key, call
    /// [`resolve`](crate::idempotency::resolve); otherwise read back the rows the batch
    /// writes. See `docs/unknown-outcomes.md`.
    #[error(transparent)]
    OutcomeUnknown(Box<OutcomeUnknown>),

    /// The connection failed before any statement of the batch ran (a custom-type lookup
    /// failed, or the server refused `BEGIN`). Nothing was written; the batch can be run
    /// again on another connection.
    #[error("batch not sent: connection failed: {0}")]
    Connection(#[source] tokio_postgres::Error),

    /// The batch's idempotency key had already committed: this run applied nothing.
    /// Treat it as the earlier run's success (see [`idempotency`](crate::idempotency)).
    #[error(transparent)]
    AlreadyCommitted(crate::idempotency::AlreadyCommitted),

    /// The idempotency marker could not be written, so nothing was committed. Usually the
    /// marker table is missing: create it with
    /// [`idempotency::install`](crate::idempotency::install).
    #[error("batch rolled back: its idempotency marker could not be written: {cause}")]
    IdempotencyMarker {
        /// The server's reason.
        cause: Cause,
        /// How many times the batch was run.
        attempts: u32,
    },

    /// The connection was closed before the batch's `COMMIT` could be sent: nothing was
    /// committed. Run the batch again; a pool discards closed connections.
    #[error("batch not committed: the connection is closed")]
    ConnectionClosed,

    /// No connection could be had from the pool. Nothing was sent.
    #[error("batch not sent: {0}")]
    Pool(#[source] PoolError),

    /// tokio-postgres refused to send a statement after the ones before it were sent, so
    /// pgbatch sent `ROLLBACK` in place of `COMMIT`: nothing was committed.
    ///
    /// pgbatch checks every statement before sending, so this indicates a statement the
    /// checks missed; please report it.
    #[error("batch rolled back: {statement} could not be sent: {source}")]
    Send {
        /// The statement that could not be sent.
        statement: StatementRef,
        /// tokio-postgres's reason.
        source: tokio_postgres::Error,
    },
}

impl<E> Error<E> {
    /// Whether the batch may have committed. Only [`Error::OutcomeUnknown`] says yes; every
    /// other error guarantees that nothing of the batch was committed.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, Error::OutcomeUnknown(_))
    }

    /// The failed statement, for [`Error::Statement`] and [`Error::Domain`].
    pub fn statement_failure(&self) -> Option<&StatementFailure> {
        match self {
            Error::Statement(failure) | Error::Domain { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// The server-side cause of a statement or commit failure.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Error::Statement(failure) | Error::Domain { failure, .. } => Some(failure.cause()),
            Error::Commit(failure) => Some(failure.cause()),
            Error::IdempotencyMarker { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// The domain error, for [`Error::Domain`].
    pub fn domain(&self) -> Option<&E> {
        match self {
            Error::Domain { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The number of attempts made: more than one when the batch was retried.
    pub fn attempts(&self) -> u32 {
        match self {
            Error::Statement(failure) | Error::Domain { failure, .. } => failure.attempts,
            Error::Commit(failure) => failure.attempts,
            Error::OutcomeUnknown(unknown) => unknown.attempts,
            Error::IdempotencyMarker { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// Whether replaying the batch could succeed: a serialization failure or deadlock, at
    /// a statement or at commit.
    pub fn is_transient(&self) -> bool {
        self.cause().is_some_and(Cause::is_transient)
    }
}

/// A one-line description of an error for logs: which statement, which kind of failure,
/// the SQLSTATE and the constraint — never the server's message or detail, nor an
/// encoder's message, which can quote bind values.
pub(crate) struct LogSummary<'a, E>(&'a Error<E>);

impl<E> fmt::Display for LogSummary<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Error::Invalid { statement, source } => {
                write!(f, "not sent: {}: ", StatementRefDisplay(statement.as_ref()))?;
                match &**source {
                    BuildError::Render { .. } => f.write_str("Diesel could not render the SQL"),
                    BuildError::Encode { bind, .. } => write!(f, "bind {bind} could not be encoded"),
                    other => other.fmt(f),
                }
            }
            Error::Statement(failure) => write!(
                f,
                "{} of {} failed: {}",
                failure.statement,
                failure.statement_count,
                CauseSummary(&failure.cause)
            ),
            Error::Domain { failure, .. } => write!(
                f,
                "{} of {} failed: {} (a domain error)",
                failure.statement,
                failure.statement_count,
                CauseSummary(&failure.cause)
            ),
            Error::Commit(failure) => write!(f, "commit failed: {}", CauseSummary(&failure.cause)),
            Error::OutcomeUnknown(_) => {
                f.write_str("outcome unknown: connection lost after COMMIT may have been received")
            }
            Error::Connection(source) => match source.code() {
                Some(code) => write!(f, "connection failed: {}", code.code()),
                None => f.write_str("connection failed"),
            },
            Error::ConnectionClosed => f.write_str("connection closed before COMMIT"),
            Error::Pool(source) => source.fmt(f),
            Error::Send { statement, .. } => write!(f, "{statement} could not be sent; rolled back"),
            Error::AlreadyCommitted(already) => already.fmt(f),
            Error::IdempotencyMarker { cause, .. } => write!(f, "idempotency marker failed: {}", CauseSummary(cause)),
        }
    }
}

/// A cause without the server's message.
struct CauseSummary<'a>(&'a Cause);

impl fmt::Display for CauseSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = self.0;
        if let Cause::GuardFailed(guard) = cause {
            return guard.fmt(f);
        }
        let kind = match cause {
            Cause::UniqueViolation(_) => "unique violation",
            Cause::ForeignKeyViolation(_) => "foreign-key violation",
            Cause::CheckViolation(_) => "check violation",
            Cause::NotNullViolation(_) => "not-null violation",
            Cause::ExclusionViolation(_) => "exclusion violation",
            Cause::SerializationFailure(_) => "serialization failure",
            Cause::Deadlock(_) => "deadlock",
            _ => "server error",
        };
        write!(f, "{kind} {}", cause.code().map_or("", |c| c.code()))?;
        if let Some(constraint) = cause.constraint() {
            write!(f, " on {constraint:?}")?;
        }
        if let Some(column) = cause.violation().and_then(Violation::column) {
            write!(f, " (column {column})")?;
        }
        Ok(())
    }
}

impl<E> Error<E> {
    /// The error for logs: no server messages, no values.
    pub(crate) fn log_summary(&self) -> LogSummary<'_, E> {
        LogSummary(self)
    }
}

impl Error<Infallible> {
    /// Converts into an error with any domain type: an `Error<Infallible>` never holds a
    /// domain error.
    pub fn with_domain<E>(self) -> Error<E> {
        match self {
            Error::Invalid { statement, source } => Error::Invalid { statement, source },
            Error::Statement(failure) => Error::Statement(failure),
            Error::Domain { error, .. } => match error {},
            Error::Commit(failure) => Error::Commit(failure),
            Error::OutcomeUnknown(unknown) => Error::OutcomeUnknown(unknown),
            Error::Connection(source) => Error::Connection(source),
            Error::ConnectionClosed => Error::ConnectionClosed,
            Error::AlreadyCommitted(already) => Error::AlreadyCommitted(already),
            Error::IdempotencyMarker { cause, attempts } => Error::IdempotencyMarker { cause, attempts },
            Error::Pool(source) => Error::Pool(source),
            Error::Send { statement, source } => Error::Send { statement, source },
        }
    }
}

/// A statement's position in its batch and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRef {
    pub(crate) index: usize,
    pub(crate) label: Option<Cow<'static, str>>,
}

impl StatementRef {
    /// The statement's zero-based position in the batch, counting only the caller's
    /// statements (not the `BEGIN`/`COMMIT` pgbatch adds).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The label given with [`StatementBuilder::label`](crate::StatementBuilder::label).
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(label) => write!(f, "statement {} ({label:?})", self.index),
            None => write!(f, "statement {}", self.index),
        }
    }
}

struct StatementRefDisplay<'a>(Option<&'a StatementRef>);

impl fmt::Display for StatementRefDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(statement) => statement.fmt(f),
            None => f.write_str("batch"),
        }
    }
}

/// Why a statement could not be made ready to send. Always raised before anything is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Diesel could not render the statement's SQL. Fix the query.
    #[error("Diesel could not render the SQL: {source}")]
    Render {
        /// Diesel's error.
        source: diesel::result::Error,
    },
    /// A bind value could not be encoded (its `ToSql` implementation failed, or the value
    /// is too large for the protocol). Fix or validate the value.
    #[error("bind {bind} could not be encoded: {source}")]
    Encode {
        /// The zero-based position of the bind in the statement.
        bind: usize,
        /// The encoder's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The statement has more binds than the 65535 the PostgreSQL protocol can carry.
    /// Split it (for example a multi-row insert) into several statements of the batch.
    #[error("{count} binds, more than the protocol's limit of {max}", max = crate::statement::MAX_BINDS)]
    TooManyBinds {
        /// How many binds the statement has.
        count: usize,
    },
    /// The statement controls transactions itself (`COMMIT`, `SAVEPOINT`, ...), uses the
    /// `COPY` sub-protocol, or is refused by PostgreSQL inside a transaction block
    /// (`VACUUM`, `CREATE INDEX CONCURRENTLY`, ...). Run it outside a batch.
    #[error("{keywords} is not allowed in a batch: {reason}")]
    NotAllowedInTransaction {
        /// The statement's leading keywords.
        keywords: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The SQL text cannot be sent as it is.
    #[error("invalid SQL: {reason}")]
    InvalidSql {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A guard was put on a statement that neither returns nor modifies rows.
    #[error("a row-count guard needs a statement that returns or modifies rows")]
    GuardOnStatementWithoutRows,
    /// A custom type used by a bind does not exist in the database the connection is on.
    /// Create the type (run the migrations) or fix its name in the Diesel schema.
    #[error("custom type {name} does not exist in this database")]
    UnknownType {
        /// The type's name, schema-qualified when Diesel gave a schema.
        name: String,
    },
}

/// Why no connection could be had from the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool had no idle connection and could not open one within its
    /// `connection_timeout`. The pool is too small for the load, or the database is slow.
    #[error("timed out waiting for a pooled connection")]
    TimedOut,
    /// Opening a new connection failed.
    #[error("could not open a connection: {0}")]
    Connect(#[source] ConnectError),
}

/// Why a connection could not be opened or is no longer usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// tokio-postgres could not connect (unreachable server, authentication, TLS).
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The connection was closed (by the server, the network, or an earlier failure).
    #[error("the connection is closed")]
    Closed,
    /// The connection was left in a state pgbatch cannot vouch for (a two-phase batch
    /// whose `ROLLBACK` could not be queued). It is discarded, never reused.
    #[error("the connection was left in an unknown transaction state")]
    Poisoned,
}

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
    SerializationFailure(Box<DbError>),
    /// `40P01`: the transaction was chosen as a deadlock victim. Safe to retry.
    Deadlock(Box<DbError>),
    /// A guard of the batch failed on the server.
    GuardFailed(GuardFailure),
    /// Any other SQLSTATE, with the server's message, detail and hint.
    Server(Box<DbError>),
}

impl Cause {
    pub(crate) fn from_db_error(error: &DbError) -> Self {
        let violation = || Violation { error: Box::new(error.clone()) };
        match *error.code() {
            SqlState::UNIQUE_VIOLATION => Cause::UniqueViolation(violation()),
            SqlState::FOREIGN_KEY_VIOLATION => Cause::ForeignKeyViolation(violation()),
            SqlState::CHECK_VIOLATION => Cause::CheckViolation(violation()),
            SqlState::NOT_NULL_VIOLATION => Cause::NotNullViolation(violation()),
            SqlState::EXCLUSION_VIOLATION => Cause::ExclusionViolation(violation()),
            SqlState::T_R_SERIALIZATION_FAILURE => Cause::SerializationFailure(Box::new(error.clone())),
            SqlState::T_R_DEADLOCK_DETECTED => Cause::Deadlock(Box::new(error.clone())),
            _ => Cause::Server(Box::new(error.clone())),
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
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Cause::SerializationFailure(e) | Cause::Deadlock(e) | Cause::Server(e) => Some(e),
            Cause::GuardFailed(_) => None,
            _ => self.violation().map(|v| &*v.error),
        }
    }

    /// The SQLSTATE code, for every variant but [`Cause::GuardFailed`].
    pub fn code(&self) -> Option<&SqlState> {
        self.db_error().map(DbError::code)
    }

    /// Whether replaying the same batch may succeed: serialization failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        matches!(self, Cause::SerializationFailure(_) | Cause::Deadlock(_))
    }

    /// Whether the server ended the session with this error (`FATAL`/`PANIC`), for
    /// example when the backend was terminated.
    pub fn ended_connection(&self) -> bool {
        self.db_error()
            .and_then(DbError::parsed_severity)
            .is_some_and(|s| matches!(s, Severity::Fatal | Severity::Panic))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Cause::UniqueViolation(_) => "unique violation",
            Cause::ForeignKeyViolation(_) => "foreign-key violation",
            Cause::CheckViolation(_) => "check violation",
            Cause::NotNullViolation(_) => "not-null violation",
            Cause::ExclusionViolation(_) => "exclusion violation",
            Cause::SerializationFailure(e) => return write!(f, "serialization failure: {}", e.message()),
            Cause::Deadlock(e) => return write!(f, "deadlock: {}", e.message()),
            Cause::GuardFailed(guard) => return guard.fmt(f),
            Cause::Server(e) => return write!(f, "{} {}: {}", e.severity(), e.code().code(), e.message()),
        };
        let violation = self.violation().expect("integrity variants carry a violation");
        f.write_str(kind)?;
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

/// An integrity-constraint violation as the server reported it.
#[derive(Debug, Clone)]
pub struct Violation {
    error: Box<DbError>,
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
    pub fn db_error(&self) -> &DbError {
        &self.error
    }
}

/// What became of one statement of a failed batch. (In a committed batch every statement
/// ran and committed.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementOutcome {
    /// The statement ran, then the transaction was rolled back.
    RolledBack,
    /// The statement is the one that failed.
    Failed,
    /// The statement was never executed: an earlier one had already failed.
    Skipped,
}

/// A statement that failed on the server, and the state of every statement of the batch.
#[derive(Debug)]
pub struct StatementFailure {
    pub(crate) statement: StatementRef,
    pub(crate) statement_count: usize,
    pub(crate) cause: Cause,
    pub(crate) attempts: u32,
}

impl StatementFailure {
    /// The failed statement's position in the batch.
    pub fn index(&self) -> usize {
        self.statement.index
    }
    /// The failed statement's label.
    pub fn label(&self) -> Option<&str> {
        self.statement.label()
    }
    /// The failed statement.
    pub fn statement(&self) -> &StatementRef {
        &self.statement
    }
    /// Why it failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// How many statements the batch had.
    pub fn statement_count(&self) -> usize {
        self.statement_count
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// What became of statement `index`: the ones before the failure ran and were rolled
    /// back, the ones after it were skipped. `None` when `index` is out of range.
    pub fn outcome(&self, index: usize) -> Option<StatementOutcome> {
        use std::cmp::Ordering::*;
        (index < self.statement_count).then(|| match index.cmp(&self.statement.index) {
            Less => StatementOutcome::RolledBack,
            Equal => StatementOutcome::Failed,
            Greater => StatementOutcome::Skipped,
        })
    }
    /// The outcome of every statement, in order.
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = StatementOutcome> + '_ {
        (0..self.statement_count).map(|i| self.outcome(i).expect("index in range"))
    }
}

impl fmt::Display for StatementFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} failed: {}; ", self.statement, self.statement_count, self.cause)?;
        let index = self.statement.index;
        let after = self.statement_count - index - 1;
        match (index, after) {
            (0, 0) => f.write_str("nothing committed")?,
            (0, _) => write!(f, "{after} later skipped, nothing committed")?,
            (_, 0) => write!(f, "{index} earlier rolled back, nothing committed")?,
            _ => write!(f, "{index} earlier rolled back, {after} later skipped, nothing committed")?,
        }
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for StatementFailure {}

/// Every statement succeeded but `COMMIT` failed; all of them were rolled back.
#[derive(Debug)]
pub struct CommitFailure {
    pub(crate) statement_count: usize,
    pub(crate) cause: Cause,
    pub(crate) attempts: u32,
}

impl CommitFailure {
    /// Why `COMMIT` failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// How many statements ran and were rolled back.
    pub fn statement_count(&self) -> usize {
        self.statement_count
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commit failed: {}; all {} statements rolled back", self.cause, self.statement_count)
    }
}

impl std::error::Error for CommitFailure {}

/// The connection was lost while the batch's `COMMIT` may have reached the server.
#[derive(Debug)]
pub struct OutcomeUnknown {
    pub(crate) source: Option<tokio_postgres::Error>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) attempts: u32,
}

impl OutcomeUnknown {
    /// The batch's idempotency key, if it had one: pass it to
    /// [`resolve`](crate::idempotency::resolve) to learn whether it committed.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outcome unknown: the connection was lost after COMMIT may have reached the server")?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        match &self.idempotency_key {
            Some(key) => write!(f, "; resolve idempotency key {key:?} to learn whether it committed"),
            None => f.write_str("; read the rows back to learn whether it committed"),
        }
    }
}

impl std::error::Error for OutcomeUnknown {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Why a handle's result could not be read from a committed batch. The batch itself did
/// commit; this is about the shape or type of one statement's rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The handle belongs to another batch. Use the results of the batch that issued it.
    #[error("the handle belongs to another batch")]
    ForeignHandle,
    /// The statement returned a number of rows the handle does not accept (`one` on zero
    /// rows, `optional` on two). Use a guard to make the batch fail instead of committing.
    #[error("{statement} returned {actual} rows, expected {expected}")]
    UnexpectedRowCount {
        /// The statement.
        statement: StatementRef,
        /// What the handle accepts.
        expected: &'static str,
        /// How many rows came back.
        actual: usize,
    },
    /// A row could not be decoded into the requested type: the Rust type does not match
    /// the statement's columns.
    #[error("{statement}: row {row} could not be decoded: {source}")]
    Decode {
        /// The statement.
        statement: StatementRef,
        /// The zero-based row.
        row: usize,
        /// Diesel's deserialization error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

//! One-line descriptions of errors for logs: which statement, which kind of failure, the
//! SQLSTATE and the constraint — never the server's message or detail, nor an encoder's
//! message, which can quote bind values.

use std::fmt;

use super::build::BuildError;
use super::cause::{Cause, CauseSummary};
use super::connect::WireError;
use super::server::SqlState;
use super::statement::StatementRef;
use super::unknown::UnknownReason;
use super::{Error, StatementFailure};

/// An error as logs may show it.
pub(crate) struct LogSummary<'a, E>(pub(crate) &'a Error<E>);

impl<E> fmt::Display for LogSummary<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = |f: &mut fmt::Formatter<'_>, failure: &StatementFailure| {
            write!(
                f,
                "{} of {} failed: {}",
                failure.statement(),
                failure.statement_count(),
                CauseSummary(failure.cause())
            )
        };
        match self.0 {
            Error::Invalid { statement, source } => {
                write!(f, "not sent: {}: ", StatementOrBatch(statement.as_ref()))?;
                match &**source {
                    BuildError::Render { .. } => f.write_str("Diesel could not render the SQL"),
                    BuildError::Encode { bind, .. } => write!(f, "bind {bind} could not be encoded"),
                    other => other.fmt(f),
                }
            }
            Error::Begin(failure) => write!(f, "BEGIN failed: {}", CauseSummary(failure.cause())),
            Error::SessionReset(failure) => {
                write!(f, "not run: the session reset before it failed: {}", CauseSummary(failure.cause()))
            }
            Error::Statement(failure) => failed(f, failure),
            Error::Domain { failure, .. } => {
                failed(f, failure)?;
                f.write_str(" (a domain error)")
            }
            Error::Commit(failure) => write!(f, "commit failed: {}", CauseSummary(failure.cause())),
            Error::OutcomeUnknown(unknown) => match unknown.reason() {
                UnknownReason::ConnectionLost(source) => {
                    write!(f, "outcome unknown: connection lost after COMMIT was sent ({})", WireSummary(source))
                }
                UnknownReason::Ambiguous(error) => {
                    write!(f, "outcome unknown: COMMIT answered {}", error.code().code())
                }
            },
            Error::Connection(source) => write!(f, "not committed: {}", WireSummary(source)),
            Error::ConnectionClosed => f.write_str("not sent: connection closed"),
            Error::Pool(source) => source.fmt(f),
            Error::AlreadyCommitted(already) => already.fmt(f),
            Error::IdempotencyMarker { cause, .. } => write!(f, "idempotency marker failed: {}", CauseSummary(cause)),
            Error::KeyFenced { .. } => f.write_str("not committed: the idempotency key is fenced"),
            Error::InEnclosingTransaction { reason } => {
                write!(f, "not sent: inside the caller's transaction, and {reason}")
            }
            Error::NotMultiplexable { reason } => write!(f, "not sent: cannot be multiplexed, because {reason}"),
        }
    }
}

impl<E> Error<E> {
    /// The class of the error as telemetry reports it (`error.type`): one word a dashboard
    /// can group by, or none when nothing failed (the key had already committed).
    pub(crate) fn telemetry_class(&self) -> Option<&'static str> {
        let of_cause = |cause: &Cause, otherwise| match cause {
            Cause::GuardFailed(_) => "guard",
            _ => cause.code().map_or(otherwise, |code| statement_class(code, otherwise)),
        };
        Some(match self {
            Error::Invalid { .. } => "invalid",
            Error::SessionReset(_) => "session_reset",
            Error::Begin(_) => "begin",
            Error::Statement(failure) | Error::Domain { failure, .. } => of_cause(failure.cause(), "statement"),
            Error::Commit(failure) => of_cause(failure.cause(), "commit"),
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::Connection(_) => "connection",
            Error::AlreadyCommitted(_) => return None,
            Error::IdempotencyMarker { .. } => "idempotency_marker",
            Error::KeyFenced { .. } => "key_fenced",
            Error::ConnectionClosed => "connection_closed",
            Error::Pool(_) => "pool",
            Error::InEnclosingTransaction { .. } => "in_enclosing_transaction",
            Error::NotMultiplexable { .. } => "not_multiplexable",
        })
    }

    /// The SQLSTATE the error ended with (`db.response.status_code`), when the server gave
    /// one.
    pub(crate) fn status_code(&self) -> Option<&str> {
        match self {
            Error::OutcomeUnknown(unknown) => match unknown.reason() {
                UnknownReason::Ambiguous(error) => Some(error.code().code()),
                UnknownReason::ConnectionLost(WireError::Session(error)) => Some(error.code().code()),
                UnknownReason::ConnectionLost(_) => None,
            },
            Error::Connection(WireError::Session(error)) => Some(error.code().code()),
            _ => self.cause().and_then(Cause::code).map(|code| code.code()),
        }
    }
}

/// The class a failure the server reported shows to telemetry (`error.type`), by its
/// SQLSTATE: the ones a retry policy replays by name, any other as `otherwise`. Batches
/// (through [`Error::telemetry_class`]) and diesel-async queries both classify here.
pub(crate) fn statement_class(code: &SqlState, otherwise: &'static str) -> &'static str {
    match *code {
        SqlState::T_R_SERIALIZATION_FAILURE => "serialization_failure",
        SqlState::T_R_DEADLOCK_DETECTED => "deadlock",
        _ => otherwise,
    }
}

/// A connection failure without the server's message.
struct WireSummary<'a>(&'a WireError);

impl fmt::Display for WireSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            WireError::Io(error) => write!(f, "I/O error: {}", error.kind()),
            WireError::Closed => f.write_str("closed by the server"),
            WireError::Session(error) => write!(f, "session ended: {}", error.code().code()),
            WireError::Protocol(_) => f.write_str("protocol violation"),
        }
    }
}

/// A statement, or "batch" when an error belongs to no single statement.
pub(crate) struct StatementOrBatch<'a>(pub(crate) Option<&'a StatementRef>);

impl fmt::Display for StatementOrBatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(statement) => statement.fmt(f),
            None => f.write_str("batch"),
        }
    }
}

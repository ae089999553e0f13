//! The error types of the crate: what went wrong, where, and what became of every
//! statement. This module imports nothing else from the crate, so every layer can use it.

mod build;
mod cause;
mod connect;
mod guard;
mod result;
mod server;
mod statement;
mod summary;
mod unknown;

use std::convert::Infallible;
use std::sync::Arc;

pub use build::BuildError;
pub use cause::{Cause, Violation};
pub use connect::{ConnectError, PoolError, WireError};
pub use guard::{Expectation, GuardFailure};
pub use result::ResultError;
pub use server::{ServerError, Severity, SqlState};
pub use statement::{BeginFailure, CommitFailure, ResetFailure, StatementFailure, StatementOutcome, StatementRef};
pub(crate) use summary::LogSummary;
#[cfg(feature = "diesel-async")]
pub(crate) use summary::statement_class;
pub use unknown::{AlreadyCommitted, OutcomeUnknown, UnknownReason};

/// The error of running a batch.
///
/// Every variant says whether anything may have been committed:
///
/// | variant | committed? |
/// |---|---|
/// | [`Invalid`](Error::Invalid), [`ConnectionClosed`](Error::ConnectionClosed), [`Pool`](Error::Pool) | no, nothing was sent |
/// | [`SessionReset`](Error::SessionReset) | no, the server skipped the batch |
/// | [`Begin`](Error::Begin), [`Statement`](Error::Statement), [`Domain`](Error::Domain), [`Commit`](Error::Commit), [`IdempotencyMarker`](Error::IdempotencyMarker), [`KeyFenced`](Error::KeyFenced), [`Connection`](Error::Connection) | no, the transaction was rolled back |
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
    #[error("batch not sent: {}: {source}", summary::StatementOrBatch(statement.as_ref()))]
    Invalid {
        /// The offending statement, when the problem belongs to one.
        statement: Option<StatementRef>,
        /// What is wrong with it.
        source: Arc<BuildError>,
    },

    /// The session could not be made clean before the batch (the reset that clears what an
    /// earlier holder of the connection left was stopped by a cancel request, a
    /// `statement_timeout` or a lock), so the server skipped the batch: nothing of it ran,
    /// and nothing ever runs on a session the reset did not clear. The connection was
    /// closed with its session, unless the session had been cleared
    /// ([`ResetFailure::session_cleared`]).
    ///
    /// A batch run on a pool or a [`Multiplexed`](crate::Multiplexed) client is replayed as
    /// its retry policy allows (on a fresh connection when this one was closed); this error
    /// reaches the caller when no attempt is left, on a bare connection, or from a two-phase
    /// batch's first round trip (never replayed): run the batch again (on a new connection
    /// when [`Error::ConnectionClosed`] follows). Seen often, it
    /// means something leaves sessions that take longer to reset than the session setup's
    /// `statement_timeout` allows (thousands of temporary tables, say).
    #[error(transparent)]
    SessionReset(Box<ResetFailure>),

    /// `BEGIN` failed, so no statement ran: a cancel request or `statement_timeout` landed
    /// on it, or the server cannot start the transaction the batch asked for (a hot
    /// standby and a read-write batch). Nothing was written; running the batch again is
    /// safe. A batch run on a pool or a [`Multiplexed`](crate::Multiplexed) client whose
    /// `BEGIN` met a session the server had already ended (a backend terminated while its
    /// connection sat idle) is replayed on a fresh connection, as its retry policy allows;
    /// this error reaches the caller when no attempt is left.
    #[error(transparent)]
    Begin(Box<BeginFailure>),

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
    /// serialization failure detected at commit, a cancel landing on it). The transaction
    /// was rolled back.
    #[error(transparent)]
    Commit(Box<CommitFailure>),

    /// The batch may or may not have committed: the connection was lost after `COMMIT`
    /// was sent, or the server said it cannot tell (CockroachDB's `40003`).
    ///
    /// Never treat this as success or failure. Resolve it: with an idempotency key, call
    /// [`resolve`](crate::idempotency::resolve) (a batch run on a pool does this by
    /// itself, see [`Batch::idempotency_key`](crate::Batch::idempotency_key)); otherwise
    /// read back the rows the batch writes. See `docs/unknown-outcomes.md`.
    #[error(transparent)]
    OutcomeUnknown(Box<OutcomeUnknown>),

    /// The connection failed before the batch's `COMMIT` could have reached the server:
    /// nothing was committed. Run the batch again; a pool discards the failed connection.
    #[error("batch not committed: {0}")]
    Connection(#[source] WireError),

    /// The batch's idempotency key had already committed: this run applied nothing.
    /// Treat it as the earlier run's success (see [`idempotency`](crate::idempotency)).
    #[error(transparent)]
    AlreadyCommitted(AlreadyCommitted),

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

    /// The batch's idempotency key is *fenced*: a resolution ([`resolve`](crate::idempotency::resolve),
    /// or a pool settling an unknown outcome) found it not committed and voided it, so that
    /// the lost run can never commit if its bytes arrive late. This run is refused like that
    /// lost run would be: nothing was committed.
    ///
    /// To replay the batch, resolve the key again and run the batch with the key that
    /// [`Resolution::NotCommitted`](crate::idempotency::Resolution::NotCommitted) returns.
    #[error(
        "batch rolled back: its idempotency key {key:?} was fenced by a resolution that found it not committed; \
         to replay, resolve the key and run the batch with the key the resolution returns"
    )]
    KeyFenced {
        /// The key.
        key: String,
        /// How many times the batch was run.
        attempts: u32,
    },
    /// The connection was already closed, or left unusable by an interrupted batch, when
    /// this batch started: nothing was sent. Run the batch again; a pool discards such
    /// connections by itself.
    #[error("batch not sent: the connection is closed")]
    ConnectionClosed,

    /// No connection could be had from the pool. Nothing was sent.
    #[error("batch not sent: {0}")]
    Pool(#[source] PoolError),

    /// The connection is inside a transaction the caller opened (a diesel-async
    /// transaction, or `begin_test_transaction`), and this batch cannot join it: it has an
    /// idempotency key (whose marker would commit or roll back with the caller, so that no
    /// resolution could be final), transaction options (isolation, read-only) that only a
    /// `BEGIN` can set, a retry policy that keeps its transaction (CockroachDB's), or it is
    /// two-phase; or the enclosing transaction is already aborted. Nothing was sent, and the
    /// caller's transaction is untouched.
    ///
    /// Run the batch outside the transaction (on another pooled connection, or after it
    /// ends), or without what `reason` names; roll an aborted transaction back first.
    #[error("batch not sent: the connection is inside a transaction the caller opened, and {reason}")]
    InEnclosingTransaction {
        /// Why the batch cannot join the transaction.
        reason: &'static str,
    },
    /// The batch was given to a [`Multiplexed`](crate::Multiplexed) client but needs a
    /// connection of its own: its retry policy keeps a transaction open between attempts
    /// (CockroachDB's restart savepoint), which would hold the shared connection. Nothing
    /// was sent.
    ///
    /// Run it on a pooled connection ([`Multiplexed::pool`](crate::Multiplexed::pool)), or
    /// with a retry policy that replays whole batches.
    #[error("batch not sent: it cannot share a multiplexed connection, because {reason}; run it on a pool")]
    NotMultiplexable {
        /// What needs a connection of its own.
        reason: &'static str,
    },
}

impl<E> Error<E> {
    /// A statement that could not be made ready to send.
    pub(crate) fn invalid(statement: Option<StatementRef>, source: impl Into<Arc<BuildError>>) -> Self {
        Error::Invalid { statement, source: source.into() }
    }

    /// Whether the batch may have committed. Only [`Error::OutcomeUnknown`] says yes; every
    /// other error guarantees that nothing of this run was committed.
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

    /// The server-side cause of a failure at `BEGIN`, a statement, `COMMIT` or the session
    /// reset before the batch.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Error::Statement(failure) | Error::Domain { failure, .. } => Some(failure.cause()),
            Error::Begin(failure) => Some(failure.cause()),
            Error::Commit(failure) => Some(failure.cause()),
            Error::SessionReset(failure) => Some(failure.cause()),
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
            Error::Statement(failure) | Error::Domain { failure, .. } => failure.attempts(),
            Error::Begin(failure) => failure.attempts(),
            Error::Commit(failure) => failure.attempts(),
            Error::SessionReset(failure) => failure.attempts(),
            Error::OutcomeUnknown(unknown) => unknown.attempts(),
            Error::IdempotencyMarker { attempts, .. } | Error::KeyFenced { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// Whether replaying the batch could succeed: a serialization failure or deadlock, at
    /// a statement or at commit.
    pub fn is_transient(&self) -> bool {
        self.cause().is_some_and(Cause::is_transient)
    }

    /// Whether the batch wrote nothing because of the connection it was given, and another
    /// connection could run it: the server refused writes on this one ([`Cause::ReadOnly`]:
    /// a standby, or a primary still read-only in a failover), or had ended its session
    /// before the batch began (a backend terminated while the connection sat idle in a
    /// pool, its notice not yet read when the connection was lent out).
    /// A session reset that could not clear the session closed the connection: the same.
    pub(crate) fn wants_another_connection(&self) -> bool {
        match self {
            Error::Begin(failure) if failure.cause().ended_connection() => true,
            Error::SessionReset(failure) => !failure.session_cleared(),
            _ => matches!(self.cause(), Some(Cause::ReadOnly(_))),
        }
    }

    /// Whether the batch did not run because of its session's reset, which cleared the
    /// session and stays due on the connection: replaying it there is safe and likely to
    /// succeed (the cancel the reset drew has been delivered).
    pub(crate) fn wants_replay_on_same_connection(&self) -> bool {
        matches!(self, Error::SessionReset(failure) if failure.session_cleared())
    }

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
            Error::Begin(failure) => Error::Begin(failure),
            Error::SessionReset(failure) => Error::SessionReset(failure),
            Error::Statement(failure) => Error::Statement(failure),
            Error::Domain { error, .. } => match error {},
            Error::Commit(failure) => Error::Commit(failure),
            Error::OutcomeUnknown(unknown) => Error::OutcomeUnknown(unknown),
            Error::Connection(source) => Error::Connection(source),
            Error::ConnectionClosed => Error::ConnectionClosed,
            Error::AlreadyCommitted(already) => Error::AlreadyCommitted(already),
            Error::IdempotencyMarker { cause, attempts } => Error::IdempotencyMarker { cause, attempts },
            Error::KeyFenced { key, attempts } => Error::KeyFenced { key, attempts },
            Error::Pool(source) => Error::Pool(source),
            Error::InEnclosingTransaction { reason } => Error::InEnclosingTransaction { reason },
            Error::NotMultiplexable { reason } => Error::NotMultiplexable { reason },
        }
    }
}

//! Outcomes that a run could not observe: unknown, or decided by an earlier run.

use std::fmt;
use std::time::SystemTime;

use super::connect::WireError;
use super::server::ServerError;

/// The batch's `COMMIT` may have reached the server, but its answer did not reach pgbatch.
#[derive(Debug)]
pub struct OutcomeUnknown {
    reason: UnknownReason,
    idempotency_key: Option<String>,
    attempts: u32,
}

/// Why the outcome is unknown.
#[derive(Debug)]
#[non_exhaustive]
pub enum UnknownReason {
    /// The connection failed after `COMMIT` was sent and before its answer arrived.
    ConnectionLost(WireError),
    /// The server answered `COMMIT` with an error that says it cannot tell whether the
    /// commit applied: CockroachDB's `40003` (`statement_completion_unknown`), `08007`
    /// (`transaction_resolution_unknown`), or a `FATAL` that ended the session during the
    /// commit.
    Ambiguous(Box<ServerError>),
}

impl OutcomeUnknown {
    pub(crate) fn new(reason: UnknownReason, idempotency_key: Option<String>, attempts: u32) -> Self {
        OutcomeUnknown { reason, idempotency_key, attempts }
    }

    /// The batch's idempotency key, if it had one: pass it to
    /// [`resolve`](crate::idempotency::resolve) to learn whether it committed.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// Why the outcome is unknown.
    pub fn reason(&self) -> &UnknownReason {
        &self.reason
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn into_reason(self) -> UnknownReason {
        self.reason
    }
}

impl fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            UnknownReason::ConnectionLost(source) => {
                write!(
                    f,
                    "outcome unknown: the connection was lost after COMMIT may have reached the server ({source})"
                )?;
            }
            UnknownReason::Ambiguous(error) => {
                write!(f, "outcome unknown: the server could not tell whether COMMIT applied ({error})")?;
            }
        }
        match &self.idempotency_key {
            Some(key) => write!(f, "; resolve idempotency key {key:?} to learn whether it committed"),
            None => f.write_str("; read the rows back to learn whether it committed"),
        }
    }
}

impl std::error::Error for OutcomeUnknown {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            UnknownReason::ConnectionLost(source) => Some(source),
            UnknownReason::Ambiguous(error) => Some(&**error),
        }
    }
}

/// The batch with this key committed, in an earlier call (this run applied nothing), or in
/// this call when its answer was lost and pgbatch settled it by resolving the key (see
/// [`committed_by_this_call`](Self::committed_by_this_call)). Either way the key's batch is in the database
/// exactly once: treat it as success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch with idempotency key {key:?} already committed{}", committed_at.map(|_| "").unwrap_or(" (its marker has just been purged)"))]
pub struct AlreadyCommitted {
    key: String,
    committed_at: Option<SystemTime>,
    by_this_call: bool,
}

impl AlreadyCommitted {
    pub(crate) fn new(key: String, committed_at: Option<SystemTime>) -> Self {
        AlreadyCommitted { key, committed_at, by_this_call: false }
    }

    /// The batch of this very call committed, but its connection was lost before the
    /// answer came back; pgbatch learnt it by reading the key on another connection.
    pub(crate) fn by_this_call(mut self) -> Self {
        self.by_this_call = true;
        self
    }

    /// Whether this call's own run committed, and pgbatch learnt it after losing the
    /// answer (rather than an earlier call committing the key): the rows are there, the
    /// results of this run were lost with its connection.
    pub fn committed_by_this_call(&self) -> bool {
        self.by_this_call
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// When the earlier run committed, by the server's clock. `None` only when the marker
    /// was purged between the conflict and the lookup.
    pub fn committed_at(&self) -> Option<SystemTime> {
        self.committed_at
    }
}

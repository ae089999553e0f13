//! Observing every statement of every run, for metrics and probes.

use std::time::Duration;

/// What became of one statement of a run, as an [`Observer`] hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observed {
    /// The run committed, this statement with it.
    Committed,
    /// The statement ran, then the transaction was rolled back.
    RolledBack,
    /// The statement is the one that failed.
    Failed,
    /// The statement never ran: a step before it failed.
    Skipped,
    /// The connection was lost after `COMMIT` may have reached the server.
    Unknown,
}

/// One statement of one run of a batch.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StatementEvent<'a> {
    /// The statement's position in its batch.
    pub index: usize,
    /// Its label, if it has one.
    pub label: Option<&'a str>,
    /// What became of it.
    pub outcome: Observed,
    /// The run's round trip: from its first byte sent to its last answer. A batch travels
    /// as one unit and the server answers it at once, so every statement of a run shares
    /// this time.
    pub elapsed: Duration,
    /// Which attempt of the batch this was (1, or more after a retry).
    pub attempt: u32,
}

/// Hears of every statement of every run on the connections it is set on (see
/// [`ConnectionManager::observer`](crate::ConnectionManager::observer)): count them, time
/// them, export them. It is called on the task that runs the batch, after the run, so it
/// must be quick; nothing is called, and nothing costs, when no observer is set.
///
/// A two-phase batch ([`Batch::prepare`](crate::Batch::prepare)) is heard of once: when its
/// first round trip fails, or once it is decided (committed, rolled back, or dropped
/// undecided), with the time from its first byte to the decision's answer.
pub trait Observer: Send + Sync + 'static {
    /// One statement of a run.
    fn statement(&self, event: &StatementEvent<'_>);
}

impl<F> Observer for F
where
    F: Fn(&StatementEvent<'_>) + Send + Sync + 'static,
{
    fn statement(&self, event: &StatementEvent<'_>) {
        self(event);
    }
}

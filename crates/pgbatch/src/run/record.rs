//! What a run leaves for those who watch it: the `outcome` and `error` fields of its tracing
//! span, and, when its connection has an [`Observer`], an event for every statement. Runs
//! (`run`) and two-phase batches (`prepare`, then `commit` or `rollback`) both record
//! through here, so the words and the events are the same for both.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::plan::{Observed, Observer, StatementEvent};

/// What became of a run (or of one round trip of a two-phase batch), as the one word of its
/// span's `outcome` field that a log query can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `committed`.
    Committed,
    /// `not_committed`: nothing of the run was committed.
    NotCommitted,
    /// `already_committed`: an earlier run with the same key was.
    AlreadyCommitted,
    /// `unknown`: it may have committed.
    Unknown,
    /// `open`: a two-phase batch's statements ran; the transaction waits for the decision.
    Open,
    /// `rolled_back`: a two-phase batch was rolled back as the caller decided.
    RolledBack,
    /// `released`: the batch joined a transaction the caller had open; it commits or rolls
    /// back with that transaction.
    Released,
}

impl Outcome {
    /// The span field's word.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::NotCommitted => "not_committed",
            Outcome::AlreadyCommitted => "already_committed",
            Outcome::Unknown => "unknown",
            Outcome::Open => "open",
            Outcome::RolledBack => "rolled_back",
            Outcome::Released => "released",
        }
    }

    /// What a failed run's error says became of it.
    pub(crate) fn of<E>(error: &Error<E>) -> Self {
        match error {
            Error::OutcomeUnknown(_) => Outcome::Unknown,
            Error::AlreadyCommitted(_) => Outcome::AlreadyCommitted,
            _ => Outcome::NotCommitted,
        }
    }
}

/// Records on `span` what became of a run: `success` when it succeeded, otherwise the
/// error's outcome and its value-free summary.
pub(crate) fn record<T, E>(span: &tracing::Span, result: &Result<T, Error<E>>, success: Outcome) {
    match result {
        Ok(_) => {
            span.record("outcome", success.word());
        }
        Err(error) => {
            span.record("outcome", Outcome::of(error).word());
            span.record("error", tracing::field::display(error.log_summary()));
        }
    }
}

/// What became of statement `index` of a run that ended in `result`.
pub(crate) fn statement_outcome<E>(result: Result<(), &Error<E>>, index: usize) -> Observed {
    use std::cmp::Ordering::*;
    match result {
        Ok(()) => Observed::Committed,
        Err(Error::Statement(failure) | Error::Domain { failure, .. }) => match index.cmp(&failure.index()) {
            Less => Observed::RolledBack,
            Equal => Observed::Failed,
            Greater => Observed::Skipped,
        },
        Err(Error::Commit(_) | Error::Connection(_)) => Observed::RolledBack,
        Err(Error::OutcomeUnknown(_)) => Observed::Unknown,
        Err(_) => Observed::Skipped,
    }
}

/// The observer of a connection and the labels of a batch's statements, kept by a
/// two-phase batch until it is decided.
pub(crate) struct Watched {
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) labels: Vec<Option<String>>,
}

/// Tells `observer` what became of every statement of a run, `outcome` saying it for each
/// index.
pub(crate) fn observe<'l>(
    observer: &dyn Observer,
    labels: impl Iterator<Item = Option<&'l str>>,
    outcome: impl Fn(usize) -> Observed,
    elapsed: Duration,
    attempt: u32,
) {
    for (index, label) in labels.enumerate() {
        observer.statement(&StatementEvent { index, label, outcome: outcome(index), elapsed, attempt });
    }
}

//! What a run leaves for those who watch it: its tracing span, with pgbatch's fields and
//! OpenTelemetry's conventional attributes (see [`telemetry`](crate::telemetry)), its
//! metrics, and, when its connection has an [`Observer`], an event for every statement.
//! Runs (`run`), two-phase batches (`prepare`, then `commit` or `rollback`) and diesel-async
//! queries all record through here, so the words and the events are the same for each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Peer;
use crate::error::Error;
use crate::plan::{Observed, Observer, StatementEvent};
use crate::telemetry;

/// The span of one client operation: OpenTelemetry's conventional attributes (the kind, the
/// system, the operation and batch size; the database and server once a connection is had;
/// the status code and error class when it fails), then pgbatch's own fields.
macro_rules! client_span {
    ($name:literal, $operation:expr, $batch_size:expr, $($field:tt)*) => {
        tracing::debug_span!(
            $name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = $crate::telemetry::SYSTEM_NAME,
            db.operation.name = $operation,
            db.operation.batch.size = $batch_size,
            db.namespace = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            db.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            $($field)*
        )
    };
}
pub(crate) use client_span;

/// Records on `span` the database and server an operation runs on.
pub(crate) fn record_peer(span: &tracing::Span, peer: Option<&Peer>) {
    if let Some(peer) = peer {
        span.record("db.namespace", peer.database.as_str());
        span.record("server.address", peer.address.as_str());
        if let Some(port) = peer.port {
            span.record("server.port", port);
        }
    }
}

/// What a finished operation reports to metrics besides its result.
#[derive(Clone, Copy)]
pub(crate) struct Report {
    /// `db.operation.name`, when the operation has one.
    pub(crate) operation: Option<&'static str>,
    /// `pgbatch.transport`, for an operation that counts as a batch.
    pub(crate) transport: Option<&'static str>,
    /// When the operation began.
    pub(crate) started: Instant,
}

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

/// Records on `span` and in the metrics what became of a run: `success` when it succeeded,
/// otherwise the error's outcome, class, SQLSTATE and value-free summary.
pub(crate) fn record<T, E>(span: &tracing::Span, result: &Result<T, Error<E>>, success: Outcome, report: Report) {
    let (outcome, class) = match result {
        Ok(_) => (success, None),
        Err(error) => {
            span.record("error", tracing::field::display(error.log_summary()));
            (Outcome::of(error), record_failure(span, error.telemetry_class(), error.status_code()))
        }
    };
    span.record("outcome", outcome.word());
    let elapsed = report.started.elapsed();
    telemetry::operation_finished(report.operation, Some(outcome.word()), class, report.transport, elapsed);
}

/// Records on `span` that its operation failed, with its class and SQLSTATE; returns the
/// class.
pub(crate) fn record_failure(
    span: &tracing::Span,
    class: Option<&'static str>,
    code: Option<&str>,
) -> Option<&'static str> {
    if let Some(class) = class {
        span.record("error.type", class);
        span.record("otel.status_code", "ERROR");
    }
    if let Some(code) = code {
        span.record("db.response.status_code", code);
    }
    class
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

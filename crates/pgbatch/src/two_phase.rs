//! Two-phase batches: run the statements, decide in Rust, then commit or roll back.
//!
//! An extension on top of [`Batch`]: it runs the batch's unit without its end, keeps the
//! connection, and ends the transaction in a second round trip.

use std::marker::PhantomData;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;

use crate::connection::{Connection, End, Exchange};
use crate::error::{Error, ResultError};
use crate::outcome::{Committed, EndVerdict};
use crate::plan::{Handle, Observed, Results};
use crate::pool::Acquire;
use crate::run::Batch;
use crate::run::record::{Outcome, Report, Watched, client_span, observe, record, record_peer, statement_outcome};
use crate::telemetry::BATCH_OPERATION;

/// `pgbatch.transport` of a two-phase batch.
const TWO_PHASE: &str = "two_phase";

impl<E> Batch<E> {
    /// Runs the statements in a first round trip and leaves the transaction open, so that
    /// the caller can inspect their results in Rust before deciding: then
    /// [`Prepared::commit`] or [`Prepared::rollback`] is the second round trip.
    ///
    /// Dropping the [`Prepared`] (or this future) without deciding rolls back: `ROLLBACK` is
    /// queued on the connection at once, and a pool never lends out a connection whose
    /// transaction may still be open. Two-phase batches are not retried: a serialization
    /// failure at commit is returned as [`Error::Commit`], and the caller decides again.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run); a failure in the first round trip rolls back before it
    /// is returned (one more round trip, on that path only).
    pub async fn prepare<A: Acquire>(&self, target: A) -> Result<Prepared<A::Lease, E>, Error<E>> {
        let span = client_span!(
            "pgbatch.prepare",
            BATCH_OPERATION,
            self.len(),
            statements = self.len(),
            labels = %self.label_summary(),
            round_trip_ms = Empty,
            outcome = Empty,
            error = Empty,
        );
        let started = Instant::now();
        let mut observer = None;
        let prepared: Result<Prepared<A::Lease, E>, Error<E>> = async {
            let statements = self.wire_statements()?;
            let mut lease = target.acquire().await.map_err(Error::Pool)?;
            record_peer(&span, lease.peer().map(Arc::as_ref));
            observer.clone_from(&lease.session().observer);
            let begin = self.begin_sql();
            let exchange = Exchange::new(Some(&begin), &statements, End::Open);
            let verdict = self.verdict(End::Open, 1);
            let answers = lease.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
            let ending = verdict.end_verdict();
            let results = verdict.judge(answers)?;
            // The statements' fate is told once the caller decides (or drops it).
            let watched = observer.take().map(|observer| Watched {
                observer,
                labels: self.labels().map(|label| label.map(str::to_owned)).collect(),
            });
            Ok(Prepared { lease, results: Some(results), open: true, ending, watched, started, domain: PhantomData })
        }
        .instrument(span.clone())
        .await;
        span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
        // The transaction waits for the caller's decision, which counts as the batch's run;
        // a first round trip that failed is the run.
        let transport = prepared.is_err().then_some(TWO_PHASE);
        record(&span, &prepared, Outcome::Open, Report { operation: Some(BATCH_OPERATION), transport, started });
        if let (Err(error), Some(observer)) = (&prepared, observer) {
            let outcome = |index| statement_outcome(Err(error), index);
            observe(&*observer, self.labels(), outcome, started.elapsed(), 1);
        }
        prepared
    }
}

/// A batch whose statements ran in an open transaction, waiting for the caller's decision.
///
/// Made by [`Batch::prepare`]. Read the statements' results with [`get`](Self::get), then
/// [`commit`](Self::commit) or [`rollback`](Self::rollback): one round trip each. Dropping
/// it undecided queues `ROLLBACK` on its connection immediately. While it lives it holds
/// the connection and the transaction's locks: decide quickly.
///
/// ```no_run
/// # use diesel::prelude::*;
/// # diesel::table! { disk (id) { id -> Int8, instance_id -> Nullable<Int8> } }
/// # async fn example(pool: &pgbatch::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut batch = pgbatch::Batch::new();
/// batch.push(diesel::update(disk::table.find(7)).set(disk::instance_id.eq(Some(3))));
/// let attached = batch.push(disk::table.filter(disk::instance_id.eq(3)).count()).one::<i64>();
/// let prepared = batch.prepare(pool).await?;
/// if prepared.get(&attached)? <= 12 {
///     prepared.commit().await?;
/// } else {
///     prepared.rollback().await?;
/// }
/// # Ok(()) }
/// ```
pub struct Prepared<L, E>
where
    L: DerefMut<Target = Connection>,
{
    lease: L,
    /// Taken by a successful commit.
    results: Option<Results>,
    /// Whether the transaction may still be open on the connection.
    open: bool,
    ending: EndVerdict,
    /// The connection's observer and the statements' labels, told of the decision.
    watched: Option<Watched>,
    /// When the first round trip began: the events' time covers both.
    started: Instant,
    domain: PhantomData<fn() -> E>,
}

impl<L, E> Prepared<L, E>
where
    L: DerefMut<Target = Connection>,
{
    /// Reads a statement's result, before the transaction is decided.
    ///
    /// # Errors
    ///
    /// As for [`Results::get`].
    pub fn get<H: Handle>(&self, handle: &H) -> Result<H::Output, ResultError> {
        self.results().get(handle)
    }

    /// The statements' results, not committed yet.
    pub fn results(&self) -> &Results {
        self.results.as_ref().expect("results stay until commit takes them")
    }

    /// Commits: the second round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Commit`] when `COMMIT` fails (a deferred constraint, a serialization
    /// failure), [`Error::OutcomeUnknown`] when the connection is lost while `COMMIT` may
    /// have reached the server, [`Error::ConnectionClosed`] or [`Error::Connection`] when
    /// it failed before.
    pub async fn commit(mut self) -> Result<Committed, Error<E>> {
        self.end(End::Commit).await?;
        let unconfirmed = self.lease.replication_unconfirmed();
        let results = self.results.take().expect("results of the first round trip");
        Ok(Committed::new(results, 1).with_replication_unconfirmed(unconfirmed))
    }

    /// Rolls back: the second round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] or [`Error::ConnectionClosed`] when the connection fails; the
    /// server then rolls back by itself, so nothing is committed either way.
    pub async fn rollback(mut self) -> Result<(), Error<E>> {
        self.end(End::Rollback).await
    }

    async fn end(&mut self, end: End) -> Result<(), Error<E>> {
        let (decision, decided) = match end {
            End::Commit => ("commit", Outcome::Committed),
            _ => ("rollback", Outcome::RolledBack),
        };
        let operation = if end == End::Commit { "COMMIT" } else { "ROLLBACK" };
        let span = client_span!(
            "pgbatch.decide",
            operation,
            Empty,
            decision,
            round_trip_ms = Empty,
            outcome = Empty,
            error = Empty,
        );
        record_peer(&span, self.lease.peer().map(Arc::as_ref));
        let started = Instant::now();
        let exchange = Exchange::new(None, &[], end);
        // Sent or refused: either way there is nothing left to roll back from Drop.
        self.open = false;
        let ended = match self.lease.exchange(&exchange).instrument(span.clone()).await {
            Ok(answers) => self.ending.judge(end, answers.ending),
            Err(reason) => Err(crate::outcome::not_sent(reason, |_| None, 1)),
        };
        span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
        record(&span, &ended, decided, Report { operation: Some(operation), transport: Some(TWO_PHASE), started });
        // The statements ran in the first round trip: they are committed, rolled back, or
        // unknown with the decision.
        let outcome = match (&ended, end) {
            (Ok(()), End::Commit) => Observed::Committed,
            (Err(Error::OutcomeUnknown(_)), _) => Observed::Unknown,
            _ => Observed::RolledBack,
        };
        self.tell(outcome);
        ended
    }

    /// Tells the connection's observer, once, what became of every statement.
    fn tell(&mut self, outcome: Observed) {
        if let Some(Watched { observer, labels }) = self.watched.take() {
            observe(&*observer, labels.iter().map(Option::as_deref), |_| outcome, self.started.elapsed(), 1);
        }
    }
}

impl<L, E> Drop for Prepared<L, E>
where
    L: DerefMut<Target = Connection>,
{
    fn drop(&mut self) {
        if self.open {
            tracing::debug!("two-phase batch dropped undecided: rolling back");
            self.lease.queue_rollback();
            self.tell(Observed::RolledBack);
        }
    }
}

impl<L, E> std::fmt::Debug for Prepared<L, E>
where
    L: DerefMut<Target = Connection>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("open", &self.open).finish_non_exhaustive()
    }
}

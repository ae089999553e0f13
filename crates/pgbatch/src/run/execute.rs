//! Running a batch: one exchange per attempt, replayed on serialization failures and
//! deadlocks as its retry policy allows, inside a tracing span.

use std::ops::DerefMut;
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing::field::Empty;

use super::batch::Batch;
use super::settle::{Settled, not_committed, read_marker, settle};
use crate::codec::Statement;
use crate::error::{AlreadyCommitted, Error, UnknownReason};
use crate::outcome::Committed;
use crate::plan::{Observed, Observer, StatementEvent};
use crate::wire::{Acquire, Connection, End, Exchange, Restart, TxStatus};

impl<E> Batch<E> {
    /// Runs the batch: `BEGIN`, every statement and `COMMIT`, in one round trip.
    ///
    /// Nothing is sent until the returned future is first polled. The whole transaction
    /// travels as one unit, so a failure at any step (a cancel request or a timeout
    /// landing on `BEGIN` included) leaves nothing committed. Dropping the future after it
    /// started sending still lets what was sent run on the server, all of it or none; the
    /// connection is then read clean by its next batch, or discarded by its pool. The one
    /// extra round trip is the first use of a custom type on a connection, which is looked
    /// up before anything is sent.
    ///
    /// A serialization failure or deadlock replays the batch on the same connection as
    /// its [`RetryPolicy`](crate::RetryPolicy) allows; [`Committed::attempts`] and
    /// [`Error::attempts`] tell how many runs it took.
    ///
    /// # Errors
    ///
    /// Every [`Error`] variant says whether anything was committed; only
    /// [`Error::OutcomeUnknown`] leaves it open. Invalid statements fail with
    /// [`Error::Invalid`] before anything is sent; a statement or guard that fails on the
    /// server fails the whole batch with [`Error::Statement`] (or [`Error::Domain`] when a
    /// fragment maps it), naming the statement.
    pub async fn run<A: Acquire>(&self, target: A) -> Result<Committed, Error<E>> {
        let statements = self.wire_statements()?;
        let touches_session = statements.iter().any(|s| s.sql.touches_session);
        let span = tracing::debug_span!(
            "pgbatch.run",
            statements = self.len(),
            labels = %self.label_summary(),
            attempt = Empty,
            round_trip_ms = Empty,
            outcome = Empty,
            settled = Empty,
            error = Empty,
        );
        async move {
            // A pool can lend another connection: the one to settle an unknown outcome on.
            let spare = target.another();
            let mut lease = Some(target.acquire().await.map_err(Error::Pool)?);
            let policy = self.retry_policy().unwrap_or_else(|| lease_of(&mut lease).retry_policy());
            let (mut attempt, mut settled) = (1, false);
            loop {
                let started = Instant::now();
                let connection = lease_of(&mut lease);
                let restart = match (policy.keeps_transaction(), connection.status()) {
                    (false, _) => Restart::No,
                    (true, TxStatus::Idle) => Restart::First,
                    (true, _) => Restart::Again,
                };
                let result = self.run_once(connection, &statements, touches_session, attempt, restart).await;
                let span = tracing::Span::current();
                span.record("attempt", attempt);
                span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
                if restart != Restart::No {
                    // The transaction is kept open for a retry: end it unless one follows.
                    let retries = matches!(&result, Err(e) if e.is_transient() && attempt < policy.attempts());
                    let connection = lease_of(&mut lease);
                    if !retries {
                        connection.end_transaction().await;
                        if touches_session {
                            connection.reset().await;
                        }
                    }
                }
                let error = match result {
                    Ok(committed) => {
                        span.record("outcome", "committed");
                        span.record("settled", settled);
                        return Ok(if settled { committed.settled() } else { committed });
                    }
                    Err(error) => error,
                };
                let error = match (&error, self.idempotency(), spare.as_ref().and_then(A::another)) {
                    (Error::OutcomeUnknown(unknown), Some(key), Some(fresh)) => {
                        // A lost connection's backend may still run the batch: cancel it.
                        // An ambiguous answer came over a working connection whose backend
                        // is done; the pool may lend that very connection for the read,
                        // which a cancel would then hit.
                        let lost = matches!(unknown.reason(), UnknownReason::ConnectionLost(_));
                        let cancel = lost.then(|| lease_of(&mut lease).cancel_token());
                        // The lost connection goes back to its pool, which discards it.
                        lease = None;
                        let mut connection = fresh.acquire().await.map_err(Error::Pool)?;
                        match settle::<E>(cancel.as_ref(), &mut connection, key).await {
                            Settled::Committed(already) => {
                                let error = Error::AlreadyCommitted(already);
                                error.record_on(&span);
                                span.record("settled", true);
                                return Err(error);
                            }
                            Settled::NotCommitted if attempt < policy.attempts() => {
                                tracing::info!(attempt, "outcome settled as not committed: replaying batch");
                                (lease, settled, attempt) = (Some(connection), true, attempt + 1);
                                continue;
                            }
                            Settled::NotCommitted => not_committed(error, self.len()),
                            Settled::Unknown => error,
                        }
                    }
                    _ => error,
                };
                if !(error.is_transient() && attempt < policy.attempts()) {
                    error.record_on(&span);
                    return Err(error);
                }
                let delay = policy.delay(attempt);
                tracing::info!(attempt, delay_ms = delay.as_secs_f64() * 1e3, cause = %error.log_summary(), "retrying batch");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt: one exchange, judged.
    async fn run_once(
        &self,
        connection: &mut Connection,
        statements: &[&Statement],
        touches_session: bool,
        attempt: u32,
        restart: Restart,
    ) -> Result<Committed, Error<E>> {
        let started = Instant::now();
        let verdict = self.verdict(End::Commit, attempt);
        let begin = self.begin_sql();
        let begin = (restart != Restart::Again).then_some(&*begin);
        let exchange = Exchange::new(begin, statements, End::Commit).reset_session(touches_session).restart(restart);
        let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
        let result = verdict.judge(answers).map(|results| Committed::new(results, attempt));
        if let Some(observer) = &connection.session().observer {
            self.observe(&**observer, &result, started.elapsed(), attempt);
        }
        match result {
            Ok(committed) => Ok(committed),
            Err(Error::AlreadyCommitted(already)) => {
                // The key's marker is there: read when it was written, on this connection.
                let committed_at = match self.idempotency() {
                    Some(key) => read_marker::<E>(connection, key).await.unwrap_or_else(|error| {
                        tracing::warn!(error = %error.log_summary(), "could not read when the idempotency key committed");
                        None
                    }),
                    None => None,
                };
                Err(Error::AlreadyCommitted(AlreadyCommitted::new(already.key().to_owned(), committed_at)))
            }
            Err(error) => Err(error),
        }
    }
}

impl<E> Batch<E> {
    /// Tells `observer` what became of every statement of a run.
    fn observe(&self, observer: &dyn Observer, result: &Result<Committed, Error<E>>, elapsed: Duration, attempt: u32) {
        use std::cmp::Ordering::*;
        let outcome = |index: usize| match result {
            Ok(_) => Observed::Committed,
            Err(Error::Statement(failure) | Error::Domain { failure, .. }) => match index.cmp(&failure.index()) {
                Less => Observed::RolledBack,
                Equal => Observed::Failed,
                Greater => Observed::Skipped,
            },
            Err(Error::Commit(_) | Error::Connection(_)) => Observed::RolledBack,
            Err(Error::OutcomeUnknown(_)) => Observed::Unknown,
            Err(_) => Observed::Skipped,
        };
        for (index, label) in self.labels().enumerate() {
            observer.statement(&StatementEvent { index, label, outcome: outcome(index), elapsed, attempt });
        }
    }
}

/// The connection of a run; it is only ever missing between a lost connection and its
/// replacement.
fn lease_of<L: DerefMut<Target = Connection>>(lease: &mut Option<L>) -> &mut Connection {
    lease.as_mut().expect("a run always holds a connection")
}

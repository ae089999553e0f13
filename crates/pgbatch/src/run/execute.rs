//! Running a batch: one exchange per attempt, replayed on serialization failures and
//! deadlocks as its retry policy allows, inside a tracing span.

use std::ops::DerefMut;
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;

use super::batch::Batch;
use super::record::{Outcome, observe, record, statement_outcome};
use super::settle::{Orphan, Resolved, read_marker, settle_unknown};
use crate::codec::Statement;
use crate::error::{Error, UnknownReason};
use crate::outcome::{Committed, key_taken};
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
        let span = self.run_span();
        let result = async {
            // A pool can lend another connection: the one to settle an unknown outcome on.
            let spare = target.another();
            let mut lease = Some(target.acquire().await.map_err(Error::Pool)?);
            let policy = self.retry_policy().unwrap_or_else(|| lease_of(&mut lease).retry_policy());
            if lease_of(&mut lease).in_caller_transaction() {
                // Never end the caller's transaction: join it.
                let connection = lease_of(&mut lease);
                let result = self.run_nested(connection, &statements, policy).await;
                tracing::Span::current().record("attempt", 1);
                return result;
            }
            let (mut attempt, mut settled) = (1, false);
            // After a settlement fenced the key: the marker that turns that fence into a commit.
            let mut replay_marker: Option<Statement> = None;
            loop {
                let started = Instant::now();
                let connection = lease_of(&mut lease);
                let restart = match (policy.keeps_transaction(), connection.status()) {
                    (false, _) => Restart::No,
                    (true, TxStatus::Idle) => Restart::First,
                    (true, _) => Restart::Again,
                };
                let mut sent = statements.clone();
                if let Some(marker) = &replay_marker {
                    sent[0] = marker;
                }
                let result = self.run_once(connection, &sent, attempt, restart).await;
                let span = tracing::Span::current();
                span.record("attempt", attempt);
                span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
                if restart != Restart::No {
                    // The transaction is kept open for a retry: end it unless one follows.
                    let retries = matches!(&result, Err(e) if e.is_transient() && attempt < policy.attempts());
                    let connection = lease_of(&mut lease);
                    if !retries {
                        // Ends it, and resets the session the failed unit could not.
                        connection.end_transaction().await;
                    }
                }
                let error = match result {
                    Ok(committed) => {
                        span.record("settled", settled);
                        return Ok(if settled { committed.after_unknown() } else { committed });
                    }
                    Err(error) => error,
                };
                let error = match (&error, self.idempotency(), spare.as_ref().and_then(A::another)) {
                    (Error::OutcomeUnknown(unknown), Some(key), Some(fresh)) => {
                        // A lost connection's backend may still run the batch, or wait for
                        // the rest of it inside its transaction: end it (or, where its
                        // process id is not the server's, cancel it). An ambiguous answer
                        // came over a working connection whose backend is done; the pool
                        // may lend that very connection for the read, which a cancel would
                        // then hit.
                        let lost = matches!(unknown.reason(), UnknownReason::ConnectionLost(_));
                        let connection = lease_of(&mut lease);
                        let orphan = lost.then(|| Orphan {
                            cancel: connection.cancel_token(),
                            end_backend: connection.end_backend(),
                        });
                        // The lost connection goes back to its pool, which discards it.
                        lease = None;
                        match settle_unknown(
                            error,
                            fresh,
                            orphan.as_ref(),
                            key,
                            attempt < policy.attempts(),
                            self.len(),
                        )
                        .await
                        {
                            Resolved::Replay { marker, connection } => {
                                replay_marker = Some(marker);
                                (lease, settled, attempt) = (Some(connection), true, attempt + 1);
                                continue;
                            }
                            Resolved::Verdict(error) => error,
                        }
                    }
                    _ => error,
                };
                let fresh = spare.as_ref().and_then(A::another);
                if let (Replay::OnAnotherConnection, Some(fresh)) =
                    (back_off(error, attempt, policy, fresh.is_some()).await?, fresh)
                {
                    // This connection will not run the batch (see `back_off`): back to its
                    // pool, which discards it, before a fresh one is taken.
                    lease_of(&mut lease).abandon();
                    drop(lease.take());
                    lease = Some(fresh.acquire().await.map_err(Error::Pool)?);
                }
                attempt += 1;
            }
        }
        .instrument(span.clone())
        .await;
        let success = match &result {
            Ok(committed) if committed.in_enclosing_transaction() => Outcome::Released,
            _ => Outcome::Committed,
        };
        record(&span, &result, success);
        result
    }

    /// The span of a run: its statements and labels, then what the run records (see
    /// [`record`](super::record)).
    pub(super) fn run_span(&self) -> tracing::Span {
        tracing::debug_span!(
            "pgbatch.run",
            statements = self.len(),
            labels = %self.label_summary(),
            multiplexed = Empty,
            attempt = Empty,
            round_trip_ms = Empty,
            outcome = Empty,
            settled = Empty,
            error = Empty,
        )
    }

    /// Runs the batch inside the transaction the caller has open on `connection`: under a
    /// savepoint of its own, released into that transaction (see
    /// [`End::Release`](crate::wire::End::Release)). Once, without retries: a serialization
    /// failure or deadlock dooms the enclosing transaction, which only its owner can retry.
    async fn run_nested(
        &self,
        connection: &mut Connection,
        statements: &[&Statement],
        policy: crate::plan::RetryPolicy,
    ) -> Result<Committed, Error<E>> {
        let refusal = if self.idempotency().is_some() {
            Some("the batch has an idempotency key, whose marker would commit or roll back with that transaction")
        } else if self.begin_sql() != "BEGIN" {
            Some("its transaction options (isolation, read-only, deferrable) can only be set by a BEGIN of its own")
        } else if policy.keeps_transaction() {
            Some("its retry policy keeps a transaction of its own (CockroachDB's restart savepoint)")
        } else if connection.status() == TxStatus::Failed {
            Some("that transaction is aborted: roll it back first")
        } else {
            None
        };
        if let Some(reason) = refusal {
            return Err(Error::InEnclosingTransaction { reason });
        }
        let started = Instant::now();
        let verdict = self.verdict(End::Release, 1);
        let exchange = Exchange::new(None, statements, End::Release);
        let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
        let result =
            verdict.judge(answers).map(|results| Committed::new(results, 1).released_into_enclosing_transaction());
        if let Some(observer) = &connection.session().observer {
            let outcome = |index| statement_outcome(result.as_ref().map(drop), index);
            observe(&**observer, self.labels(), outcome, started.elapsed(), 1);
        }
        result
    }

    /// One attempt: one exchange, judged.
    async fn run_once(
        &self,
        connection: &mut Connection,
        statements: &[&Statement],
        attempt: u32,
        restart: Restart,
    ) -> Result<Committed, Error<E>> {
        let started = Instant::now();
        let verdict = self.verdict(End::Commit, attempt);
        let begin = self.begin_sql();
        let begin = (restart != Restart::Again).then_some(&*begin);
        let exchange = Exchange::new(begin, statements, End::Commit).restart(restart);
        let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
        let unconfirmed = connection.replication_unconfirmed();
        let result = verdict
            .judge(answers)
            .map(|results| Committed::new(results, attempt).with_replication_unconfirmed(unconfirmed));

        if let Some(observer) = &connection.session().observer {
            let outcome = |index| statement_outcome(result.as_ref().map(drop), index);
            observe(&**observer, self.labels(), outcome, started.elapsed(), attempt);
        }
        match result {
            Ok(committed) => Ok(committed),
            Err(Error::AlreadyCommitted(already)) => {
                // The key is taken: read on this connection whether by a commit (and when)
                // or by a fence.
                let marker = match self.idempotency() {
                    Some(key) => read_marker::<E>(connection, key).await.unwrap_or_else(|error| {
                        tracing::warn!(error = %error.log_summary(), "could not read the idempotency key's marker");
                        None
                    }),
                    None => None,
                };
                Err(key_taken(already.key(), marker.as_ref(), attempt))
            }
            Err(error) => Err(error),
        }
    }
}

/// Where a failed attempt is replayed.
pub(super) enum Replay {
    /// A serialization failure or deadlock, or a session reset that cleared the session
    /// but drew a cancel: on the same connection.
    OnSameConnection,
    /// The batch wrote nothing because of its connection: the server does not accept
    /// writes on it (a standby, or a primary not yet writable in a failover) and will not
    /// start to, it had ended the session before the batch began, or the session reset
    /// before the batch could not clear it (the connection was closed).
    OnAnotherConnection,
}

/// Waits as `policy` says before attempt `attempt + 1` when the policy allows another
/// attempt and `error` is transient, or (when the run can get one, `another_connection`)
/// wants another connection; says where to replay. Otherwise gives the error back, the
/// run's verdict.
pub(super) async fn back_off<E>(
    error: Error<E>,
    attempt: u32,
    policy: crate::plan::RetryPolicy,
    another_connection: bool,
) -> Result<Replay, Error<E>> {
    let replay = if another_connection && error.wants_another_connection() {
        Replay::OnAnotherConnection
    } else if error.is_transient() || error.wants_replay_on_same_connection() {
        Replay::OnSameConnection
    } else {
        return Err(error);
    };
    if attempt >= policy.attempts() {
        return Err(error);
    }
    let delay = policy.delay(attempt);
    tracing::info!(attempt, delay_ms = delay.as_secs_f64() * 1e3, cause = %error.log_summary(), "retrying batch");
    tokio::time::sleep(delay).await;
    Ok(replay)
}

/// The connection of a run; it is only ever missing between a lost connection and its
/// replacement.
fn lease_of<L: DerefMut<Target = Connection>>(lease: &mut Option<L>) -> &mut Connection {
    lease.as_mut().expect("a run always holds a connection")
}

//! Running a batch on a [`Multiplexed`] client: the same verdicts, retries and settlement
//! as on a pooled connection, with the exchange given to a shared connection's driver.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::batch::Batch;
use super::execute::back_off;
use super::record::{Outcome, record};
use super::settle::{Orphan, Resolved, read_marker, settle_unknown};
use crate::codec::Statement;
use crate::error::Error;
use crate::outcome::{Committed, key_taken};
use crate::wire::{Acquire, End, Multiplexed};

impl<E> Batch<E> {
    /// Runs the batch on a connection it shares with other callers' batches, written
    /// behind theirs without waiting for their answers (see [`Multiplexed`]).
    ///
    /// What [`run`](Self::run) guarantees holds here too: all or nothing, the failing
    /// statement named, only [`Error::OutcomeUnknown`] leaving the outcome open (settled
    /// through the idempotency key when there is one, on a connection of the client's
    /// [`pool`](Multiplexed::pool)), serialization failures and deadlocks replayed as the
    /// retry policy allows. Dropping the future before the batch was written sends nothing;
    /// after, the batch runs whole on the server (all or nothing) and its answer is dropped.
    /// A cancel request would reach whatever the shared backend runs, so none is sent: to
    /// bound a batch's time on the server, set `statement_timeout` in the session setup.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run); and [`Error::NotMultiplexable`] for a batch whose retry
    /// policy keeps a transaction open between attempts (CockroachDB's restart savepoint),
    /// which needs a connection of its own: run it on [`Multiplexed::pool`].
    /// [`Error::Pool`] when no connection could be opened, or the client's
    /// `max_waiting` batches were already given for longer than its `admission_timeout`;
    /// nothing was sent then.
    pub async fn run_multiplexed(&self, client: &Multiplexed) -> Result<Committed, Error<E>> {
        let statements = self.shared_statements()?;
        let policy = self.retry_policy().unwrap_or_else(|| client.retry_policy());
        if policy.keeps_transaction() {
            return Err(Error::NotMultiplexable {
                reason: "its retry policy keeps a transaction open between attempts (CockroachDB's restart savepoint)",
            });
        }
        let span = self.run_span();
        span.record("multiplexed", true);
        let result = async {
            let (mut attempt, mut settled) = (1, false);
            // After a settlement fenced the key: the marker that turns that fence into a commit.
            let mut replay_marker: Option<Arc<Statement>> = None;
            loop {
                let started = Instant::now();
                let mut sent = statements.clone();
                if let Some(marker) = &replay_marker {
                    sent[0] = Arc::clone(marker);
                }
                let verdict = self.verdict(End::Commit, attempt);
                let delivered = client.send(sent, self.begin_sql()).await;
                let span = tracing::Span::current();
                span.record("attempt", attempt);
                span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
                let (result, orphan) = match delivered {
                    Err(not_sent) => (Err(verdict.not_sent(not_sent)), None),
                    Ok(delivery) => {
                        let unconfirmed = delivery.replication_unconfirmed;
                        let result = verdict
                            .judge(delivery.answers)
                            .map(|results| Committed::new(results, attempt).with_replication_unconfirmed(unconfirmed));
                        let orphan = delivery.orphan.map(|(cancel, end_backend)| Orphan { cancel, end_backend });
                        (result, orphan)
                    }
                };
                let error = match result {
                    Ok(committed) => {
                        span.record("settled", settled);
                        return Ok(if settled { committed.after_unknown() } else { committed });
                    }
                    Err(error) => error,
                };
                let error = match (&error, self.idempotency()) {
                    (Error::AlreadyCommitted(already), Some(key)) => {
                        // Taken by a commit (and when) or by a fence: the marker says which.
                        let mut connection = client.pool().acquire().await.map_err(Error::Pool)?;
                        let marker = read_marker::<E>(&mut connection, key).await.unwrap_or_else(|error| {
                            tracing::warn!(error = %error.log_summary(), "could not read the idempotency key's marker");
                            None
                        });
                        return Err(key_taken(already.key(), marker.as_ref(), attempt));
                    }
                    (Error::OutcomeUnknown(_), Some(key)) => {
                        let may_replay = attempt < policy.attempts();
                        match settle_unknown(error, client.pool(), orphan.as_ref(), key, may_replay, self.len()).await {
                            Resolved::Replay { marker, connection: _ } => {
                                replay_marker = Some(Arc::new(marker));
                                (settled, attempt) = (true, attempt + 1);
                                continue;
                            }
                            Resolved::Verdict(error) => error,
                        }
                    }
                    _ => error,
                };
                // A shared connection that will not run the batch (read-only, its session
                // ended) is retired by its driver before it takes another batch.
                back_off(error, attempt, policy, true).await?;
                attempt += 1;
            }
        }
        .instrument(span.clone())
        .await;
        record(&span, &result, Outcome::Committed);
        result
    }
}

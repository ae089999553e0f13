//! Running a batch on a [`Multiplexed`] client: the same verdicts, retries and settlement
//! as on a pooled connection, with the exchange given to a shared connection's driver.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::attempts::{Settlement, Transport, run_attempts};
use super::batch::Batch;
use super::record::{Outcome, Report, record, record_peer};
use super::settle::{Orphan, Resolved, read_marker, settle_unknown};
use crate::codec::Statement;
use crate::connection::End;
use crate::error::Error;
use crate::outcome::Committed;
use crate::plan::{IdempotencyKey, MarkerRow};
use crate::pool::{Acquire, Multiplexed};
use crate::telemetry::BATCH_OPERATION;

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
        let (span, started) = (self.run_span(), Instant::now());
        span.record("multiplexed", true);
        record_peer(&span, client.peer());
        let mut lane = Lane { client, statements, orphan: None };
        let result = run_attempts(self, &mut lane, policy).instrument(span.clone()).await;
        let report = Report { operation: Some(BATCH_OPERATION), transport: Some("multiplexed"), started };
        record(&span, &result, Outcome::Committed, report);
        result
    }
}

/// A run's place on a [`Multiplexed`] client: each attempt is written to one of its shared
/// connections; settlements and marker reads take a connection of the client's pool.
struct Lane<'c> {
    client: &'c Multiplexed,
    statements: Vec<Arc<Statement>>,
    /// The backend the last attempt was sent to, when its connection was lost.
    orphan: Option<Orphan>,
}

impl<E> Transport<E> for Lane<'_> {
    async fn send(
        &mut self,
        batch: &Batch<E>,
        marker: Option<&Arc<Statement>>,
        attempt: u32,
    ) -> Result<Committed, Error<E>> {
        let mut sent = self.statements.clone();
        if let Some(marker) = marker {
            sent[0] = Arc::clone(marker);
        }
        let verdict = batch.verdict(End::Commit, attempt);
        self.orphan = None;
        let delivery =
            self.client.send(sent, batch.begin_sql()).await.map_err(|not_sent| verdict.not_sent(not_sent))?;
        let unconfirmed = delivery.replication_unconfirmed;
        self.orphan = delivery.orphan.map(|(cancel, end_backend)| Orphan { cancel, end_backend });
        verdict
            .judge(delivery.answers)
            .map(|results| Committed::new(results, attempt).with_replication_unconfirmed(unconfirmed))
    }

    async fn read_marker(&mut self, key: &IdempotencyKey) -> Result<Option<MarkerRow>, Error<E>> {
        let mut connection = self.client.pool().acquire().await.map_err(Error::Pool)?;
        read_marker(&mut connection, key).await
    }

    async fn settle(
        &mut self,
        error: Error<E>,
        key: &IdempotencyKey,
        may_replay: bool,
        statements: usize,
    ) -> Settlement<E> {
        match settle_unknown(error, self.client.pool(), self.orphan.as_ref(), key, may_replay, statements).await {
            Resolved::Replay { marker, connection: _ } => Settlement::Replay(marker),
            Resolved::Verdict(error) => Settlement::Verdict(error),
        }
    }

    fn can_replace(&self) -> bool {
        true
    }

    /// A shared connection that will not run the batch (read-only, its session ended) is
    /// retired by its driver before it takes another batch: nothing to do here.
    async fn replace(&mut self) -> Result<(), Error<E>> {
        Ok(())
    }
}

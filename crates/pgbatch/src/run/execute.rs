//! Running a batch on a connection of its own (leased from a pool, or a bare one): the
//! [`Transport`] of the run loop (see [`attempts`](super::attempts)), the nested run inside
//! a caller's transaction, and the span of a run.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;

use super::attempts::{Settlement, Transport, run_attempts};
use super::batch::Batch;
use super::record::{Outcome, Report, client_span, observe, record, record_peer, statement_outcome};
use super::settle::{Orphan, Resolved, read_marker, settle_unknown};
use crate::codec::Statement;
use crate::connection::{Connection, End, Exchange, Restart, TxStatus};
use crate::error::{Error, UnknownReason};
use crate::outcome::Committed;
use crate::plan::{IdempotencyKey, MarkerRow, RetryPolicy};
use crate::pool::Acquire;
use crate::telemetry::BATCH_OPERATION;

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
        let (span, started) = (self.run_span(), Instant::now());
        let result = async {
            // A pool can lend another connection: the one to settle an unknown outcome on.
            let spare = target.another();
            let mut lease = target.acquire().await.map_err(Error::Pool)?;
            record_peer(&span, lease.peer().map(Arc::as_ref));
            let policy = self.retry_policy().unwrap_or_else(|| lease.retry_policy());
            if lease.in_caller_transaction() {
                // Never end the caller's transaction: join it.
                let result = self.run_nested(&mut lease, &statements, policy).await;
                tracing::Span::current().record("attempt", 1);
                return result;
            }
            let mut leased = Leased { spare, lease: Some(lease), statements, policy, restart: Restart::No };
            run_attempts(self, &mut leased, policy).await
        }
        .instrument(span.clone())
        .await;
        let success = match &result {
            Ok(committed) if committed.in_enclosing_transaction() => Outcome::Released,
            _ => Outcome::Committed,
        };
        record(
            &span,
            &result,
            success,
            Report { operation: Some(BATCH_OPERATION), transport: Some("pooled"), started },
        );
        result
    }

    /// The span of a run: its statements and labels, then what the run records (see
    /// [`record`](super::record)).
    pub(super) fn run_span(&self) -> tracing::Span {
        client_span!(
            "pgbatch.run",
            BATCH_OPERATION,
            self.len(),
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
    /// [`End::Release`](crate::connection::End::Release)). Once, without retries: a serialization
    /// failure or deadlock dooms the enclosing transaction, which only its owner can retry.
    async fn run_nested(
        &self,
        connection: &mut Connection,
        statements: &[&Statement],
        policy: RetryPolicy,
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
        result
    }
}

/// A run's connection, leased from where the batch was given (a pool, or a bare
/// connection), and the pool's way to another one.
struct Leased<'s, A: Acquire> {
    spare: Option<A>,
    /// Missing only between a lost connection and its replacement.
    lease: Option<A::Lease>,
    statements: Vec<&'s Statement>,
    policy: RetryPolicy,
    /// How the last attempt treated its transaction.
    restart: Restart,
}

impl<A: Acquire> Leased<'_, A> {
    fn connection(&mut self) -> &mut Connection {
        self.lease.as_mut().expect("a run always holds a connection")
    }
}

impl<E, A: Acquire> Transport<E> for Leased<'_, A> {
    async fn send(
        &mut self,
        batch: &Batch<E>,
        marker: Option<&Arc<Statement>>,
        attempt: u32,
    ) -> Result<Committed, Error<E>> {
        let keeps_transaction = self.policy.keeps_transaction();
        let mut sent = self.statements.clone();
        if let Some(marker) = marker {
            sent[0] = marker;
        }
        let connection = self.lease.as_mut().expect("a run always holds a connection");
        self.restart = match (keeps_transaction, connection.status()) {
            (false, _) => Restart::No,
            (true, TxStatus::Idle) => Restart::First,
            (true, _) => Restart::Again,
        };
        batch.run_once(connection, &sent, attempt, self.restart).await
    }

    async fn after_attempt(&mut self, retries: bool) {
        // A transaction kept open for a retry is ended unless one follows; ending it also
        // resets the session the failed unit could not.
        if self.restart != Restart::No && !retries {
            self.connection().end_transaction().await;
        }
    }

    async fn read_marker(&mut self, key: &IdempotencyKey) -> Result<Option<MarkerRow>, Error<E>> {
        read_marker(self.connection(), key).await
    }

    async fn settle(
        &mut self,
        error: Error<E>,
        key: &IdempotencyKey,
        may_replay: bool,
        statements: usize,
    ) -> Settlement<E> {
        let Some(fresh) = self.spare.as_ref().and_then(A::another) else {
            return Settlement::Verdict(error);
        };
        // A lost connection's backend may still run the batch, or wait for the rest of it
        // inside its transaction: end it (or, where its process id is not the server's,
        // cancel it). An ambiguous answer came over a working connection whose backend is
        // done; the pool may lend that very connection for the read, which a cancel would
        // then hit.
        let lost = matches!(&error, Error::OutcomeUnknown(unknown) if matches!(unknown.reason(), UnknownReason::ConnectionLost(_)));
        let connection = self.connection();
        let orphan = lost.then(|| Orphan { cancel: connection.cancel_token(), end_backend: connection.end_backend() });
        // The lost connection goes back to its pool, which discards it.
        self.lease = None;
        match settle_unknown(error, fresh, orphan.as_ref(), key, may_replay, statements).await {
            Resolved::Replay { marker, connection } => {
                self.lease = Some(connection);
                Settlement::Replay(marker)
            }
            Resolved::Verdict(error) => Settlement::Verdict(error),
        }
    }

    fn can_replace(&self) -> bool {
        self.spare.as_ref().and_then(A::another).is_some()
    }

    async fn replace(&mut self) -> Result<(), Error<E>> {
        let Some(fresh) = self.spare.as_ref().and_then(A::another) else { return Ok(()) };
        // This connection will not run the batch (see `back_off`): back to its pool, which
        // discards it, before a fresh one is taken.
        self.connection().abandon();
        drop(self.lease.take());
        self.lease = Some(fresh.acquire().await.map_err(Error::Pool)?);
        Ok(())
    }
}

//! The one run loop every batch takes, pooled or multiplexed: attempts, settlement of an
//! unknown outcome, the marker of a taken key, back-off and where a replay runs, and the
//! span's record of each attempt. What differs between a pooled connection and a
//! multiplexed lane is behind [`Transport`].

use std::sync::Arc;
use std::time::Instant;

use super::batch::Batch;
use crate::codec::Statement;
use crate::error::Error;
use crate::outcome::{Committed, key_taken};
use crate::plan::{IdempotencyKey, MarkerRow, RetryPolicy};
use crate::telemetry;

/// Where a batch's attempts are sent: a connection leased from a pool (or a bare one), or a
/// lane of a [`Multiplexed`](crate::Multiplexed) client.
pub(super) trait Transport<E> {
    /// Sends one attempt of `batch` and judges its answers. `marker`, after a settlement
    /// fenced the key, takes the place of the batch's first statement (its marker): it
    /// turns the fence into the commit.
    async fn send(
        &mut self,
        batch: &Batch<E>,
        marker: Option<&Arc<Statement>>,
        attempt: u32,
    ) -> Result<Committed, Error<E>>;

    /// After the attempt was recorded; `retries` says whether another attempt follows.
    async fn after_attempt(&mut self, _retries: bool) {}

    /// Reads the marker of `key`, which an attempt found taken: by a commit (and when) or
    /// by a fence.
    async fn read_marker(&mut self, key: &IdempotencyKey) -> Result<Option<MarkerRow>, Error<E>>;

    /// Settles `error`, an unknown outcome of a keyed batch, on another connection: ends
    /// (or cancels) the lost attempt's backend first, then fences or reads the key. A
    /// replay runs where [`send`](Self::send) sends next. Gives `error` back, the verdict,
    /// when there is nowhere to settle it (a bare connection). After a verdict the run
    /// sends nothing more.
    async fn settle(
        &mut self,
        error: Error<E>,
        key: &IdempotencyKey,
        may_replay: bool,
        statements: usize,
    ) -> Settlement<E>;

    /// Whether [`replace`](Self::replace) can give the next attempt another connection.
    fn can_replace(&self) -> bool;

    /// Gives up the connection the last attempt ran on, for one that will run the next.
    async fn replace(&mut self) -> Result<(), Error<E>>;
}

/// What settling an unknown outcome decided.
pub(super) enum Settlement<E> {
    /// Not committed, and another attempt is allowed: replay with this marker.
    Replay(Statement),
    /// The verdict: already committed, not committed, or still unknown.
    Verdict(Error<E>),
}

/// Runs `batch` on `transport` until it commits or its verdict is final; records each
/// attempt on the current span.
pub(super) async fn run_attempts<E, T: Transport<E>>(
    batch: &Batch<E>,
    transport: &mut T,
    policy: RetryPolicy,
) -> Result<Committed, Error<E>> {
    let (mut attempt, mut settled) = (1, false);
    // After a settlement fenced the key: the marker that turns that fence into a commit.
    let mut replay_marker: Option<Arc<Statement>> = None;
    loop {
        let started = Instant::now();
        let result = transport.send(batch, replay_marker.as_ref(), attempt).await;
        let span = tracing::Span::current();
        span.record("attempt", attempt);
        span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
        let retries = matches!(&result, Err(e) if e.is_transient() && attempt < policy.attempts());
        transport.after_attempt(retries).await;
        let error = match result {
            Ok(committed) => {
                span.record("settled", settled);
                return Ok(if settled { committed.after_unknown() } else { committed });
            }
            Err(error) => error,
        };
        let error = match (&error, batch.idempotency()) {
            (Error::AlreadyCommitted(already), Some(key)) => {
                let marker = transport.read_marker(key).await.unwrap_or_else(|error| {
                    tracing::warn!(error = %error.log_summary(), "could not read the idempotency key's marker");
                    None
                });
                return Err(key_taken(already.key(), marker.as_ref(), attempt));
            }
            (Error::OutcomeUnknown(_), Some(key)) => {
                match transport.settle(error, key, attempt < policy.attempts(), batch.len()).await {
                    Settlement::Replay(marker) => {
                        telemetry::replayed("after_settlement");
                        replay_marker = Some(Arc::new(marker));
                        (settled, attempt) = (true, attempt + 1);
                        continue;
                    }
                    // Final: committed, not committed (and no attempt left), or unknown.
                    Settlement::Verdict(error) => return Err(error),
                }
            }
            _ => error,
        };
        match back_off(error, attempt, policy, transport.can_replace()).await? {
            Replay::OnAnotherConnection => {
                telemetry::replayed("another_connection");
                transport.replace().await?;
            }
            Replay::OnSameConnection => telemetry::replayed("same_connection"),
        }
        attempt += 1;
    }
}

/// Where a failed attempt is replayed.
enum Replay {
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
async fn back_off<E>(
    error: Error<E>,
    attempt: u32,
    policy: RetryPolicy,
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

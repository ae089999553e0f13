//! Settling what a lost connection left unknown, through the batch's idempotency key.
//!
//! The key's marker is the batch's first statement, written inside its transaction: it
//! exists exactly when the batch committed. Reading it is only final if no run of that
//! batch can still commit afterwards, and a run can still be on its way: its bytes held by
//! a proxy, PgBouncer or a stalled network path after the client gave up on the
//! connection. So a settlement does not just read the marker, it *fences* the key: when
//! the key has not committed, it commits a fence row in the marker's place, which a late
//! run's marker insert collides with (see [`marker`](crate::plan)). The fence's insert also
//! waits for any transaction still writing the key (a run whose answers were lost, its
//! backend still running) and tells, once that one has ended, whether the key committed.

use std::time::Duration;

use diesel::sql_types::Text;

use super::batch::Batch;
use crate::codec::Statement;
use crate::connect::CancelToken;
use crate::connection::{Connection, End, EndBackend, Exchange, Terminate};
use crate::error::{AlreadyCommitted, Error};
use crate::outcome::{not_committed, settled_as_committed};
use crate::plan::{IdempotencyKey, Marker, MarkerRow, fence_sql, lookup_sql};
use crate::pool::Acquire;
use crate::telemetry;

/// How long a settlement waits for the lost batch's backend to take a cancel request.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a fence waits for a transaction still writing the key (an orphan that could
/// not be ended, behind PgBouncer) before the outcome is left unknown.
const FENCE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s'";

/// The backend of a lost connection, which may still run its batch.
pub(crate) struct Orphan {
    /// Cancels what it runs.
    pub(crate) cancel: CancelToken,
    /// Ends it, where its process id is the server's.
    pub(crate) end_backend: Option<EndBackend>,
}

/// How often a fence is tried again when the marker it collided with vanished before it
/// could be read (a purge in between).
const FENCE_TRIES: usize = 3;

/// Settles `key` on `connection`: fences it unless it committed, in one round trip that
/// commits, once no transaction still writing the key is running.
pub(crate) async fn fence_or_read<E>(connection: &mut Connection, key: &IdempotencyKey) -> Result<Marker, Error<E>> {
    let invalid = |error| Error::invalid(None, error);
    let fence = fence_sql(key.table_name()).map_err(invalid)?;
    let lookup = lookup_sql(key.table_name()).map_err(invalid)?;
    for _ in 0..FENCE_TRIES {
        let mut batch = Batch::<E>::default();
        batch.push(diesel::sql_query(FENCE_LOCK_TIMEOUT)).label("bound the wait for a run still writing the key");
        let fenced = batch.push(diesel::sql_query(&fence).bind::<Text, _>(key.key())).all::<FenceToken>();
        let found = batch.push(diesel::sql_query(&lookup).bind::<Text, _>(key.key())).all::<MarkerRow>();
        let statements = batch.wire_statements()?;
        let exchange = Exchange::new(Some("BEGIN"), &statements, End::Commit);
        let verdict = batch.verdict(End::Commit, 1);
        let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
        let results = verdict.judge(answers)?;
        // The fence's row means the key had not committed; no row means it had. The key is
        // the table's primary key: at most one row each, always decodable.
        if let Some(token) = results.get(&fenced).ok().and_then(|rows| rows.into_iter().next()) {
            return Ok(Marker::Fenced(token.fence));
        }
        // A commit, unless a purge and another fence came in between: then fence again.
        if let Some(row) = results.get(&found).ok().and_then(|rows| rows.into_iter().next())
            && !row.is_fence()
        {
            return Ok(Marker::Committed(row.committed_at()));
        }
    }
    Err(Error::KeyFenced { key: key.key().to_owned(), attempts: 1 })
}

/// The key's marker as it stands, without fencing: one read-only round trip. `None` when
/// there is none.
pub(crate) async fn read_marker<E>(
    connection: &mut Connection,
    key: &IdempotencyKey,
) -> Result<Option<MarkerRow>, Error<E>> {
    let lookup = lookup_sql(key.table_name()).map_err(|error| Error::invalid(None, error))?;
    let mut batch = Batch::<E>::default();
    let found = batch.push(diesel::sql_query(lookup).bind::<Text, _>(key.key())).all::<MarkerRow>();
    let statements = batch.wire_statements()?;
    let exchange = Exchange::new(Some("BEGIN"), &statements, End::Rollback);
    let verdict = batch.verdict(End::Rollback, 1);
    let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
    Ok(verdict.judge(answers)?.get(&found).ok().and_then(|rows| rows.into_iter().next()))
}

/// What settling an unknown outcome found.
pub(crate) enum Settled {
    /// The lost run committed.
    Committed(AlreadyCommitted),
    /// It did not, and now never will: the key is fenced with this token.
    NotCommitted(String),
    /// The key could not be settled: the outcome stays unknown.
    Unknown,
}

/// What a run does once its unknown outcome was settled.
pub(crate) enum Resolved<L, E> {
    /// Not committed, and the retry policy allows another attempt: replay the batch with
    /// this marker (which turns the settlement's fence into the commit), on `connection`.
    Replay { marker: Statement, connection: L },
    /// The verdict: already committed, not committed, or still unknown.
    Verdict(Error<E>),
}

/// Settles `error`, the unknown outcome of a keyed batch, on a connection `pool` lends
/// (see [`settle`]); the outcome stays unknown when no connection can be had (a failover
/// in progress, say), never "not sent", and the key settles it later.
pub(crate) async fn settle_unknown<A: Acquire, E>(
    error: Error<E>,
    pool: A,
    orphan: Option<&Orphan>,
    key: &IdempotencyKey,
    may_replay: bool,
    statement_count: usize,
) -> Resolved<A::Lease, E> {
    let mut connection = match pool.acquire().await {
        Ok(connection) => connection,
        Err(pool_error) => {
            tracing::warn!(error = %pool_error, "no connection to settle an unknown outcome on: it stays unknown");
            telemetry::settled("unknown");
            return Resolved::Verdict(error);
        }
    };
    match settle::<E>(orphan, &mut connection, key).await {
        Settled::Committed(already) => {
            tracing::Span::current().record("settled", true);
            Resolved::Verdict(Error::AlreadyCommitted(already))
        }
        Settled::NotCommitted(token) if may_replay => {
            tracing::info!("outcome settled as not committed: replaying batch");
            match key.replaying(token).marker() {
                Ok(marker) => Resolved::Replay { marker, connection },
                Err(error) => Resolved::Verdict(Error::invalid(None, error)),
            }
        }
        Settled::NotCommitted(_) => Resolved::Verdict(not_committed(error, statement_count)),
        Settled::Unknown => Resolved::Verdict(error),
    }
}

/// Settles the unknown outcome of a run: ends the lost run's backend, or cancels what it
/// runs (so a batch stuck on a lock or waiting for the rest of its pipeline ends now,
/// rolled back), then fences or reads the key on `connection`.
pub(crate) async fn settle<E>(orphan: Option<&Orphan>, connection: &mut Connection, key: &IdempotencyKey) -> Settled {
    // Best effort: a backend already gone is not found, a cancel that finds it idle does
    // nothing, and the fence waits (a bounded time) for a writer either way.
    match orphan {
        Some(Orphan { end_backend: Some(end_backend), .. }) => {
            end_backend(Terminate::Always).await;
        }
        Some(Orphan { cancel, end_backend: None }) => {
            let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query()).await;
        }
        None => {}
    }
    match fence_or_read::<E>(connection, key).await {
        Ok(Marker::Committed(at)) => {
            telemetry::settled("committed");
            Settled::Committed(settled_as_committed(key, at))
        }
        Ok(Marker::Fenced(token)) => {
            telemetry::settled("not_committed");
            telemetry::key_fenced();
            Settled::NotCommitted(token)
        }
        Err(error) => {
            tracing::warn!(error = %error.log_summary(), "could not settle an unknown outcome");
            telemetry::settled("unknown");
            Settled::Unknown
        }
    }
}

/// The fence's one column.
#[derive(diesel::QueryableByName)]
struct FenceToken {
    #[diesel(sql_type = Text)]
    fence: String,
}

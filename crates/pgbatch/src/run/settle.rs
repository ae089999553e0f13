//! Settling what a lost connection left unknown, through the batch's idempotency key.
//!
//! The key's marker is the batch's first statement, written inside its transaction: it
//! exists exactly when the batch committed. Reading it is final once no transaction of
//! that batch can still be running, so the read first inserts the marker itself, inside a
//! transaction that rolls back: that insert waits for any transaction still writing the
//! key (a batch whose answers were lost, its backend still waiting on a lock) and tells,
//! once that one has ended, whether the key had committed.

use std::time::{Duration, SystemTime};

use diesel::sql_types::{Double, Text};

use super::batch::Batch;
use crate::error::{AlreadyCommitted, CommitFailure, Error, OutcomeUnknown, UnknownReason};
use crate::plan::{IdempotencyKey, lookup_sql, probe_sql};
use crate::wire::{CancelToken, Connection, End, Exchange};

/// How long a settlement waits for the lost batch's backend to take a cancel request.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// When the batch with `key` committed, or `None` when it has not, once no transaction
/// still writing the key is running: one round trip on `connection`, rolled back.
pub(crate) async fn read_marker<E>(
    connection: &mut Connection,
    key: &IdempotencyKey,
) -> Result<Option<SystemTime>, Error<E>> {
    let invalid = |error| Error::invalid(None, error);
    let mut batch = Batch::<E>::default();
    let probe = probe_sql(key.table_name()).map_err(invalid)?;
    let inserted = batch.push(diesel::sql_query(probe).bind::<Text, _>(key.key())).affected();
    let lookup = lookup_sql(key.table_name()).map_err(invalid)?;
    let found = batch.push(diesel::sql_query(lookup).bind::<Text, _>(key.key())).all::<CommittedAt>();
    let statements = batch.wire_statements()?;
    let exchange = Exchange::new(Some("BEGIN"), &statements, End::Rollback);
    let verdict = batch.verdict(End::Rollback, 1);
    let answers = connection.exchange(&exchange).await.map_err(|reason| verdict.not_sent(reason))?;
    let results = verdict.judge(answers)?;
    // The probe's row means the key was free: not committed (the lookup then sees the
    // probe's own row). The key is the table's primary key and the lookup's column a
    // float8 by its own cast: at most one row, always decodable.
    if results.get(&inserted).is_ok_and(|rows| rows > 0) {
        return Ok(None);
    }
    let found = results.get(&found).ok().and_then(|rows| rows.into_iter().next());
    Ok(found.map(|row| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(row.committed_at)))
}

/// What settling an unknown outcome found.
pub(crate) enum Settled {
    /// The lost run committed.
    Committed(AlreadyCommitted),
    /// It did not, and now never will.
    NotCommitted,
    /// The key could not be read: the outcome stays unknown.
    Unknown,
}

/// Settles the unknown outcome of a run: cancels whatever the backend `cancel` names still
/// runs (so a batch stuck on a lock ends now, rolled back), then reads the key on
/// `connection`.
pub(crate) async fn settle<E>(
    cancel: Option<&CancelToken>,
    connection: &mut Connection,
    key: &IdempotencyKey,
) -> Settled {
    // Best effort: a cancel that finds the backend gone or idle does nothing, and the
    // marker read waits for a writer either way.
    if let Some(cancel) = cancel {
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query()).await;
    }
    match read_marker::<E>(connection, key).await {
        Ok(Some(at)) => Settled::Committed(AlreadyCommitted::new(key.key().to_owned(), Some(at)).settled()),
        Ok(None) => Settled::NotCommitted,
        Err(error) => {
            tracing::warn!(error = %error.log_summary(), "could not settle an unknown outcome");
            Settled::Unknown
        }
    }
}

/// The error of a run whose unknown outcome settled as "not committed" and that may not be
/// replayed: what it means once the outcome is known.
pub(crate) fn not_committed<E>(error: Error<E>, statement_count: usize) -> Error<E> {
    match error {
        Error::OutcomeUnknown(unknown) => {
            let attempts = unknown.attempts();
            match OutcomeUnknown::into_reason(*unknown) {
                UnknownReason::ConnectionLost(error) => Error::Connection(error),
                UnknownReason::Ambiguous(error) => {
                    let cause = crate::error::Cause::from_server(*error);
                    Error::Commit(Box::new(CommitFailure::new(statement_count, cause, attempts)))
                }
            }
        }
        other => other,
    }
}

/// The marker lookup's one column.
#[derive(diesel::QueryableByName)]
struct CommittedAt {
    #[diesel(sql_type = Double)]
    committed_at: f64,
}

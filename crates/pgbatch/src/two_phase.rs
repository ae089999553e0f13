//! Two-phase batches: run the statements, decide in Rust, then commit or roll back.

use std::ops::DerefMut;

use crate::Cause;
use crate::Connection;
use crate::batch::Batch;
use crate::error::{CommitFailure, Error, OutcomeUnknown, ResultError};
use crate::handle::Handle;
use crate::pipeline::{self, PipelineError};
use crate::results::Committed;

/// A batch whose statements ran in an open transaction, waiting for the caller's decision.
///
/// Made by [`Batch::prepare`]. Read the statements' results with [`get`](Self::get), then
/// [`commit`](Self::commit) or [`rollback`](Self::rollback): one round trip each. Dropping
/// it undecided queues `ROLLBACK` on its connection immediately, so the connection never
/// goes back to a pool inside the transaction. While it lives it holds the connection and
/// the transaction's locks: decide quickly.
///
/// ```no_run
/// # use diesel::prelude::*;
/// # diesel::table! { disk (id) { id -> Int8, instance_id -> Nullable<Int8> } }
/// # async fn example(pool: &bb8::Pool<pgbatch::ConnectionManager>) -> Result<(), Box<dyn std::error::Error>> {
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
pub struct Prepared<'b, L, E>
where
    L: DerefMut<Target = Connection>,
{
    batch: &'b Batch<E>,
    lease: L,
    results: Option<Committed>,
    /// Whether the transaction may still be open on the connection.
    open: bool,
}

impl<'b, L, E> Prepared<'b, L, E>
where
    L: DerefMut<Target = Connection>,
{
    pub(crate) fn new(batch: &'b Batch<E>, lease: L) -> Self {
        Prepared { batch, lease, results: None, open: true }
    }

    pub(crate) fn connection(&mut self) -> &mut Connection {
        &mut self.lease
    }

    pub(crate) fn opened(&mut self, results: Committed) {
        self.results = Some(results);
    }

    /// Queues `ROLLBACK` now; a connection that refuses it is closed, so the server rolls
    /// back by itself, and it is marked unusable in any case.
    pub(crate) fn abandon(&mut self) {
        if self.open && !pipeline::queue_rollback(&self.lease) {
            self.lease.poison();
        }
        self.open = false;
    }

    /// Reads a statement's result, before the transaction is decided.
    ///
    /// # Errors
    ///
    /// As for [`Committed::get`].
    pub fn get<H: Handle>(&self, handle: &H) -> Result<H::Output, ResultError> {
        self.results.as_ref().expect("a Prepared exists only after its first round trip").get(handle)
    }

    /// Commits: the second round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Commit`] when `COMMIT` fails (a deferred constraint, a serialization
    /// failure), [`Error::OutcomeUnknown`] when the connection is lost while `COMMIT` may
    /// have reached the server, [`Error::ConnectionClosed`] when it was closed before.
    pub async fn commit(mut self) -> Result<Committed, Error<E>> {
        let statement_count = self.batch.len();
        let result = pipeline::commit(&self.lease).await;
        // COMMIT was sent or refused: either way there is nothing left to roll back.
        self.open = false;
        match result {
            Ok(()) => Ok(self.results.take().expect("results of the first round trip")),
            Err(PipelineError::Commit(error)) => Err(Error::Commit(Box::new(CommitFailure {
                statement_count,
                cause: Cause::from_db_error(&error),
                attempts: 1,
            }))),
            Err(PipelineError::Unknown(source)) => Err(Error::OutcomeUnknown(Box::new(OutcomeUnknown {
                source,
                idempotency_key: self.batch.idempotency().map(|k| k.key().to_owned()),
                attempts: 1,
            }))),
            Err(_) => Err(Error::ConnectionClosed),
        }
    }

    /// Rolls back: the second round trip.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] when the connection fails; the server then rolls back by
    /// itself, so nothing is committed either way.
    pub async fn rollback(mut self) -> Result<(), Error<E>> {
        self.open = false;
        pipeline::rollback(&self.lease).await.map_err(Error::Connection)
    }
}

impl<L, E> Drop for Prepared<'_, L, E>
where
    L: DerefMut<Target = Connection>,
{
    fn drop(&mut self) {
        if self.open {
            tracing::debug!("two-phase batch dropped undecided: rolling back");
            self.abandon();
        }
    }
}

impl<L, E> std::fmt::Debug for Prepared<'_, L, E>
where
    L: DerefMut<Target = Connection>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("open", &self.open).finish_non_exhaustive()
    }
}

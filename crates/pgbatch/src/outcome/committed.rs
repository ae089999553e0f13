//! What a committed batch returns.

use crate::error::ResultError;
use crate::plan::{Handle, Results};

/// A batch that committed: every statement's results, and how it got there.
#[derive(Debug)]
pub struct Committed {
    results: Results,
    attempts: u32,
    replayed_after_unknown: bool,
    replication_unconfirmed: bool,
    in_enclosing_transaction: bool,
}

impl Committed {
    pub(crate) fn new(results: Results, attempts: u32) -> Self {
        Committed {
            results,
            attempts,
            replayed_after_unknown: false,
            replication_unconfirmed: false,
            in_enclosing_transaction: false,
        }
    }

    /// Marks (and reports, as a `warn` event) a commit whose wait for synchronous
    /// replication the server cancelled.
    pub(crate) fn with_replication_unconfirmed(mut self, unconfirmed: bool) -> Self {
        if unconfirmed {
            tracing::warn!(
                "committed locally, but the wait for synchronous replication was cancelled: a failover may lose it"
            );
        }
        self.replication_unconfirmed = unconfirmed;
        self
    }

    /// Whether the server committed the batch locally but stopped waiting for its
    /// synchronous standbys to confirm it (a cancel request or a timeout landed while
    /// `COMMIT` waited; PostgreSQL then answers with a WARNING and commits anyway). The
    /// batch is committed on this server, but a failover before the standbys catch up can
    /// lose it: after a failover, resolve the batch's idempotency key on the new primary
    /// (see `docs/failure-model.md`). A `warn` event is logged too. Always false without
    /// synchronous replication. The warning is recognised by the server's message, which is
    /// English unless the server's `lc_messages` translates it.
    pub fn replication_unconfirmed(&self) -> bool {
        self.replication_unconfirmed
    }

    /// Marks a batch run inside a transaction the caller opened.
    pub(crate) fn released_into_enclosing_transaction(mut self) -> Self {
        self.in_enclosing_transaction = true;
        self
    }

    /// Whether the batch ran inside a transaction the caller had open on the connection (a
    /// diesel-async `transaction`, or `begin_test_transaction`): its statements all
    /// succeeded and were *released into that transaction*, not committed. They commit or
    /// roll back with it; until the caller commits, no other session sees them.
    pub fn in_enclosing_transaction(&self) -> bool {
        self.in_enclosing_transaction
    }

    /// Marks a batch that committed on a replay after an earlier run's outcome was
    /// unknown and settling its key showed (and made sure) it had not committed.
    pub(crate) fn after_unknown(mut self) -> Self {
        self.replayed_after_unknown = true;
        self
    }

    /// Whether an earlier run of this call lost its connection with its outcome unknown,
    /// pgbatch settled the batch's idempotency key as "not committed" (fencing it), and
    /// this is the replay that committed.
    pub fn replayed_after_unknown(&self) -> bool {
        self.replayed_after_unknown
    }

    /// Reads a statement's result through its handle: decoded rows for
    /// [`One`](crate::One), [`Optional`](crate::Optional) and [`All`](crate::All), a row
    /// count for [`Affected`](crate::Affected).
    ///
    /// # Errors
    ///
    /// The batch has committed whatever this returns. It fails when the handle belongs to
    /// another batch, the row count does not fit the handle (`One` on zero rows), or a row
    /// does not decode into the requested type; see [`ResultError`].
    pub fn get<H: Handle>(&self, handle: &H) -> Result<H::Output, ResultError> {
        self.results.get(handle)
    }

    /// Every statement's results.
    pub fn results(&self) -> &Results {
        &self.results
    }

    /// How many statements the batch ran.
    pub fn statement_count(&self) -> usize {
        self.results.statement_count()
    }

    /// How many times the batch was run before it committed: 1 unless it was retried.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

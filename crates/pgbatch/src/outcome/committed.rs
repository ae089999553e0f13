//! What a committed batch returns.

use crate::error::ResultError;
use crate::plan::{Handle, Results};

/// A batch that committed: every statement's results, and how it got there.
#[derive(Debug)]
pub struct Committed {
    results: Results,
    attempts: u32,
    settled: bool,
}

impl Committed {
    pub(crate) fn new(results: Results, attempts: u32) -> Self {
        Committed { results, attempts, settled: false }
    }

    /// Marks a batch that committed on a replay after an earlier run's outcome was
    /// unknown and resolving its key showed it had not committed.
    pub(crate) fn settled(mut self) -> Self {
        self.settled = true;
        self
    }

    /// Whether an earlier run of this call lost its connection with its outcome unknown,
    /// pgbatch resolved the batch's idempotency key to "not committed", and this is the
    /// replay that committed.
    pub fn was_settled(&self) -> bool {
        self.settled
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

//! What a connection keeps for the batches run on it: the defaults a pool gives its
//! connections.

use std::fmt;
use std::sync::Arc;

use crate::plan::{Observer, RetryPolicy};

/// Settings shared by the connections of one pool (or owned by one bare connection).
#[derive(Clone, Default)]
pub(crate) struct Session {
    /// The retry policy of batches that set none.
    pub(crate) retry: RetryPolicy,
    /// Statements run once when a connection is made, and again after its session is
    /// reset.
    pub(crate) setup: Vec<String>,
    /// Hears of every statement of every run.
    pub(crate) observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("retry", &self.retry)
            .field("setup", &self.setup)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

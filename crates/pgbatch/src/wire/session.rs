//! What a connection keeps for the batches run on it: the defaults a pool gives its
//! connections, and when their sessions are reset.

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
    /// When the session is reset.
    pub(crate) reset: SessionReset,
}

/// When pgbatch resets a connection's session (`DISCARD ALL`, then the session setup
/// again), so that nothing a batch did to the session reaches the next batch.
///
/// The default, [`AfterEveryBatch`](Self::AfterEveryBatch), is the guarantee: no session
/// state outlives a batch, whatever route its statements took to change it (a `DO` block,
/// a function, a trigger or a view that calls `set_config`, `SELECT ... INTO TEMP`, a
/// session advisory lock taken inside a function, ...). The reset travels in the same
/// write as the batch, so it costs no round trip; it costs the server the work of
/// `DISCARD ALL` (see `docs/benchmarks.md`) and drops plans cached by PL/pgSQL functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionReset {
    /// Reset after every batch that ran statements (the default).
    #[default]
    AfterEveryBatch,
    /// Reset only after a batch with a statement pgbatch *recognises* as changing the
    /// session (a call of `set_config`, a session advisory lock, `dblink_connect` written
    /// in the statement itself); plain `SET`, `LISTEN`, `PREPARE` and temporary tables
    /// without `ON COMMIT DROP` are refused either way.
    ///
    /// For trusted SQL only. It gives up the guarantee for every route the recognition
    /// does not see: session state set inside a `DO` block, a function, a procedure, a
    /// trigger or a view; `UPDATE pg_settings`; quoted or escaped function names;
    /// `SELECT ... INTO TEMP` and temporary objects created through `pg_temp.`; role
    /// changes made inside functions. Such state stays on the connection for the next
    /// batch, and through PgBouncer for another client.
    WhenRecognised,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("retry", &self.retry)
            .field("setup", &self.setup)
            .field("observer", &self.observer.is_some())
            .field("reset", &self.reset)
            .finish()
    }
}

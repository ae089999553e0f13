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
    /// Statements run once when a connection is made, and again after each reset of its
    /// session.
    pub(crate) setup: Vec<String>,
    /// Hears of every statement of every run.
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// When the session is reset.
    pub(crate) reset: SessionReset,
    /// Whether statements are kept prepared on the server, and how many.
    pub(crate) statements: StatementCache,
}

/// Whether a connection keeps its statements prepared on the server: a batch's statements
/// and diesel-async queries are then parsed and planned once per connection, and a
/// statement seen before is sent as `Bind`/`Execute` only, in the same single round trip.
///
/// Each connection keeps up to `capacity` statements (least recently used first out), under
/// names of the form `pgbatch:<n>`. The session reset keeps them: it runs what `DISCARD
/// ALL` stands for minus `DEALLOCATE ALL` (and `DISCARD PLANS`), and deallocates every
/// statement prepared with SQL `PREPARE`, so a holder still finds no statement of an
/// earlier holder's. A cached statement the server can no longer run as it was prepared (a
/// table altered so that its result type changed: `0A000`, or deallocated by the caller:
/// `26000`) makes pgbatch forget its cache and run the batch again at once, its statements
/// unnamed (so that it cannot miss again); nothing of the failed attempt committed.
///
/// See the crate docs' Statement cache section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementCache {
    /// On where the connection has a server session of its own (directly connected, or
    /// CockroachDB), off behind a pooler, whose server sessions do not keep a client's
    /// statements between transactions (the default, with 256 statements).
    Auto {
        /// How many statements each connection keeps.
        capacity: usize,
    },
    /// On wherever the connection is: for PgBouncer 1.21 and later with
    /// `max_prepared_statements` set, which keeps protocol-level prepared statements
    /// across its server connections. Behind an older PgBouncer, or one without that
    /// setting, batches fail with `26000` (prepared statement does not exist).
    Always {
        /// How many statements each connection keeps.
        capacity: usize,
    },
    /// Off: every statement is parsed and planned each time, as the unnamed statement.
    Off,
}

impl StatementCache {
    /// The default size of a connection's cache.
    pub const DEFAULT_CAPACITY: usize = 256;

    /// How many statements a connection keeps, given whether it shares its server session
    /// with other clients (a pooler in between).
    pub(crate) fn capacity(self, behind_pooler: bool) -> usize {
        match self {
            StatementCache::Auto { capacity } if !behind_pooler => capacity,
            StatementCache::Always { capacity } => capacity,
            StatementCache::Auto { .. } | StatementCache::Off => 0,
        }
    }
}

impl Default for StatementCache {
    fn default() -> Self {
        StatementCache::Auto { capacity: StatementCache::DEFAULT_CAPACITY }
    }
}

/// When pgbatch resets a connection's session (`DISCARD ALL`, or where the connection keeps
/// a [`StatementCache`] what `DISCARD ALL` stands for minus `DEALLOCATE ALL`; then the
/// session setup again), so that nothing one holder of the connection left in it reaches
/// the next.
///
/// A session is its holder's: a pool checkout, a bare connection, one batch on a
/// [`Multiplexed`](crate::Multiplexed) client. What the holder's statements change (a `SET`,
/// a temporary table, `LISTEN`, a session advisory lock) stays for its next request, as on
/// `AsyncPgConnection`. When the connection changes hands after being used, the next
/// holder's first unit resets it, in the same write and the same `Sync` segment as the unit
/// itself, so that a reset that fails (a `statement_timeout`, a cancel request, a lock)
/// makes the server skip the unit: nothing ever runs on a session the reset did not clear
/// (see [`Error::SessionReset`](crate::Error::SessionReset)). Behind a pooler (a connection
/// without a [backend of its own](crate::Connection::has_own_backend)) every unit that
/// starts outside a transaction may land on a server session another client just left, so
/// every such unit is reset: a holder keeps only what lives inside one transaction.
///
/// The default, [`BetweenHolders`](Self::BetweenHolders), is the guarantee, whatever route
/// a statement took to change the session (a `DO` block, a function, a trigger or a view
/// that calls `set_config`, `SELECT ... INTO TEMP`, a session advisory lock taken inside a
/// function, ...). The reset costs no round trip; it costs the server the work of the
/// reset (see `docs/benchmarks.md`); `DISCARD ALL` also drops plans cached by PL/pgSQL
/// functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionReset {
    /// Reset when the connection changes hands after its holder ran anything on it (the
    /// default).
    #[default]
    BetweenHolders,
    /// Reset when the connection changes hands only after a statement pgbatch
    /// *recognises* as changing the session (a call of `set_config`, a session advisory
    /// lock, `dblink_connect` written in the statement itself); in batches, plain `SET`,
    /// `LISTEN`, `PREPARE` and temporary tables without `ON COMMIT DROP` are refused either
    /// way. Behind a pooler, the same test decides for each unit.
    ///
    /// For trusted SQL only. It gives up the guarantee for every route the recognition
    /// does not see: session state set inside a `DO` block, a function, a procedure, a
    /// trigger or a view; `UPDATE pg_settings`; quoted or escaped function names;
    /// `SELECT ... INTO TEMP` and temporary objects created through `pg_temp.`; role
    /// changes made inside functions; and whatever a diesel-async query does. Such state
    /// stays on the connection for the next holder, and through PgBouncer for another
    /// client.
    WhenRecognised,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("retry", &self.retry)
            .field("setup", &self.setup)
            .field("observer", &self.observer.is_some())
            .field("reset", &self.reset)
            .field("statements", &self.statements)
            .finish()
    }
}

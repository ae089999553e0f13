//! Faults a service's own tests can put under their batches: the cuts and drops pgbatch's
//! own suite checks itself under, for the service's code as it calls pgbatch.
//!
//! ```no_run
//! # async fn example(db: pgbatch_testing::TestDatabase) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use pgbatch_testing::Cut;
//! // The connection is cut just before COMMIT reaches the server: nothing may be written.
//! let faulty = db.pool_with_cut(Cut::BeforeCommit).await?;
//! // ... run the service's operation on `faulty.pool()`, expect an error that does not
//! // claim success, then check that none of the rows are there ...
//! assert_eq!(db.transactions_left(std::time::Duration::from_secs(5)).await, 0);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::{Fault, Proxy, TestDatabase};

/// Where the connection of a [`FaultyPool`] is cut, once: at the first write that holds a
/// `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cut {
    /// Everything before `COMMIT` reaches the server, `COMMIT` does not: the server rolls the
    /// transaction back, and nothing may be written. The client had written `COMMIT` into
    /// its socket, so it cannot know: the honest answer is an unknown outcome (a keyed batch
    /// on a pool settles it as not committed, and replays it).
    BeforeCommit,
    /// The whole write reaches the server, which commits; no answer comes back. The caller
    /// must be told the outcome is unknown (or, for a keyed batch on a pool, the settled
    /// outcome: committed), and the rows must be all there.
    AfterCommit,
}

/// A pool of one pgbatch connection through a proxy armed to cut it (see [`Cut`]); the
/// proxy lives as long as this value.
pub struct FaultyPool {
    pool: pgbatch::Pool,
    _proxy: Proxy,
}

impl FaultyPool {
    /// The pool to run the code under test on.
    pub fn pool(&self) -> &pgbatch::Pool {
        &self.pool
    }
}

impl std::fmt::Debug for FaultyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyPool").finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// A pool of one connection, opened already, whose connection is cut where `cut` says
    /// the first time the client sends a `COMMIT`. After the cut, the pool opens new
    /// connections through the same proxy, which then passes everything.
    ///
    /// # Errors
    ///
    /// When the proxy cannot listen or the connection cannot be opened.
    pub async fn pool_with_cut(&self, cut: Cut) -> Result<FaultyPool, Box<dyn std::error::Error + Send + Sync>> {
        let proxy = self.proxy().await?.start().await?;
        let pool = bb8::Pool::builder()
            .max_size(1)
            .min_idle(Some(1))
            .build(pgbatch::ConnectionManager::new(self.config_via(&proxy)))
            .await?;
        drop(pool.get().await?);
        let pattern = b"COMMIT".to_vec();
        proxy.arm(match cut {
            Cut::BeforeCommit => Fault::CutBeforeClientSends { pattern },
            Cut::AfterCommit => Fault::CutAfterClientSends { pattern },
        });
        Ok(FaultyPool { pool, _proxy: proxy })
    }

    /// Waits, at most `timeout`, until no session of this database is inside a transaction
    /// (what a cut or a dropped future could leave: an orphan holding locks); returns how
    /// many still are. `0` is the answer pgbatch guarantees.
    pub async fn transactions_left(&self, timeout: Duration) -> i64 {
        let Ok(client) = self.connect().await else { return -1 };
        let deadline = Instant::now() + timeout;
        loop {
            let left = crate::count(
                &client,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
            )
            .await;
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `future` `polls` times, pausing a millisecond between polls so that the server
/// can answer, then drops it; returns its output if it finished first. Run the code under
/// test with every number of polls, then check that the rows are all there or not at all
/// and that [`TestDatabase::transactions_left`] is `0`.
pub async fn drop_after_polls<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    for _ in 0..polls {
        if let Poll::Ready(output) = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
            return Some(output);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

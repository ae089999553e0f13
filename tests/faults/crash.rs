//! Server crashes: a private cluster (its own data directory and port, never the shared
//! server) killed with SIGKILL while batches run, then restarted. Every verdict must be
//! honest (an unknown one settles by its key), and the pool must serve batches again after
//! the restart without anyone touching it.

use std::time::Duration;

use pgbatch_testing::LocalCluster;

use crate::support::*;

/// Crashes the server at a range of delays into a batch that sleeps in its middle, every
/// `step_ms` from 0 to 90 ms.
pub async fn crashes(step_ms: usize) -> Sweep {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(&[])).await.unwrap().expect("a private cluster");
    let mut faults = Faults::on(&cluster.config()).await;
    let name = "sweep-crash";
    let pool = faults.pool(name, None, 2).await;
    let mut sweep = Sweep::default();
    for (case, delay_ms) in (0..=90u64).step_by(step_ms).enumerate() {
        let tag = format!("{name}-{case:02}");
        let (batch, _) = keyed(&tag, Some(0.05));
        // The batch starts on a connection that is already open.
        drop(pool.get().await.expect("a connection"));
        let crash = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let cluster = &cluster;
            tokio::task::block_in_place(|| cluster.crash()).expect("the crash");
            tokio::task::block_in_place(|| cluster.restart()).expect("the restart");
        };
        let (result, ()) = tokio::join!(batch.run(&pool), crash);
        faults.reconnect().await;
        sweep.judge(&faults, name, &tag, &Verdict::of(&result)).await;
        // The pool notices its dead connections by itself and opens new ones.
        let after = format!("{tag}-after");
        create_project(&after, 2).run(&pool).await.expect("the pool serves batches after the restart");
    }
    sweep
}

//! An orphan cannot hold locks for long. The network stalls in the middle of a batch's
//! pipeline: the server has run the statements before the stall (holding their row locks)
//! and waits for the rest, which never comes; the caller's timeout drops the batch. pgbatch
//! reads the answers still due while they keep arriving; once none has come for
//! `QUIET_ON_DROP` (250 ms) it closes the connection and ends the backend by its process id
//! from a new connection. The next batch on the same rows, waiting behind the orphan's
//! lock, commits within a second of the caller giving up.

use std::time::{Duration, Instant};

use pgbatch_testing::Fault;

use crate::support::*;

/// What `docs/failure-model.md` states: 250 ms without an answer, plus the time to open a
/// connection and end the backend.
const BOUND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_of_a_stalled_pipeline_releases_its_locks_within_the_bound() {
    let faults = Faults::new().await;
    let proxy = faults.db.proxy().await.expect("a TCP server").start().await.expect("a proxy");
    let stalled = bb8::Pool::builder()
        .max_size(1)
        .build(pgbatch::ConnectionManager::new(faults.db.config_via(&proxy)))
        .await
        .expect("a pool through the proxy");
    drop(stalled.get().await.expect("a connection through the proxy"));
    // The stall comes after the counter update (which locks silo 1's row), before the log.
    proxy.arm(Fault::StallBeforeClientSends { pattern: b"INSERT INTO \"ledger\"".to_vec() });
    let timed_out = tokio::time::timeout(Duration::from_millis(500), create_project("orphan", 1).run(&stalled)).await;
    assert!(timed_out.is_err(), "the stalled batch never answers: {timed_out:?}");
    let dropped = Instant::now();
    assert_eq!(faults.leaked_transactions_in_database().await, 1, "the orphan holds its transaction");

    let next = tokio::time::timeout(BOUND * 2, create_project("next", 1).run(&faults.inspect)).await;
    let waited = dropped.elapsed();
    println!("orphan: released_after_ms={} bound_ms={}", waited.as_millis(), BOUND.as_millis());
    next.expect("the next batch on the same row commits before twice the bound").expect("it commits");
    assert!(waited < BOUND, "the orphan's locks were released after {waited:?}");
    assert_eq!(faults.count("SELECT count(*) FROM project WHERE tag = 'orphan'").await, 0, "all or nothing");
    // The connection that ended the orphan finishes its own query a moment later; whatever
    // is still inside a transaction after 5 s was left there.
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = loop {
        let left = pgbatch_testing::query_rows(
            &faults.client,
            "SELECT pid::text, state, query FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .await
        .unwrap();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(left.is_empty(), "no backend is left inside a transaction: {left:?}");
}

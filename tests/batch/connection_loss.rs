//! Connections lost in the middle of a batch: never a false success, always all or nothing,
//! and `OutcomeUnknown` when the commit's fate cannot be known.

use std::time::Duration;

use diesel::sql_types::Double;
use pgbatch::{Batch, Cause, Error};
use pgbatch_testing::Fault;

use crate::common::*;

#[tokio::test]
async fn a_backend_terminated_mid_batch_is_all_or_nothing() {
    let h = Harness::new().await;
    let pool = h.pool_named("pgbatch-victim", 1).await;

    let mut batch = Batch::new();
    batch.push(insert_note(1, "victim 1"));
    batch.push(diesel::sql_query("SELECT pg_sleep($1)").bind::<Double, _>(2.0)).label("sleep");
    batch.push(insert_note(1, "victim 2"));

    let killer = async {
        loop {
            let killed = h
                .count(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'pgbatch-victim' AND query LIKE '%pg_sleep%' AND state = 'active' \
                     AND pid <> pg_backend_pid()",
                )
                .await;
            if killed > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // Bounded, so that a batch the killer cannot see fails the test instead of hanging it.
    let killer = async {
        tokio::time::timeout(Duration::from_secs(20), killer)
            .await
            .expect("the batch's pg_sleep never showed in pg_stat_activity under its application_name");
    };
    let (result, ()) = tokio::join!(batch.run(&pool), killer);
    let rows = h.count("SELECT count(*) FROM note WHERE body LIKE 'victim %'").await;
    match &result {
        Ok(_) => panic!("the batch cannot have succeeded: its backend was terminated"),
        Err(Error::Statement(failure)) => {
            assert_eq!(failure.label(), Some("sleep"));
            assert!(failure.cause().ended_connection(), "{}", failure.cause());
            assert!(matches!(failure.cause(), Cause::Server(e) if e.code().code() == "57P01"));
            assert_eq!(rows, 0, "a failed batch leaves nothing");
        }
        Err(other) => panic!("expected the terminated statement to be named, got {other}"),
    }
    // The pool replaces the dead connection.
    let mut next = Batch::new();
    next.push(insert_note(1, "after"));
    next.run(&pool).await.expect("a fresh connection replaces the terminated one");
}

/// A pool through a proxy armed to cut the connection around the batch's `COMMIT`.
async fn run_with_cut(h: &Harness, fault: Fault) -> (Result<pgbatch::Committed, Error>, i64) {
    let (proxy, pool) = h.behind_proxy().await;
    proxy.arm(fault);
    let mut batch = Batch::new();
    batch.push(insert_note(1, "cut 1"));
    batch.push(insert_note(1, "cut 2"));
    let result = batch.run(&pool).await;
    assert_eq!(proxy.cuts(), 1, "the proxy cut the connection");
    tokio::time::sleep(Duration::from_millis(300)).await; // let the server finish what it got
    let rows = h.count("SELECT count(*) FROM note WHERE body LIKE 'cut %'").await;
    (result, rows)
}

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_commit_was_sent_is_an_unknown_outcome() {
    let h = Harness::new().await;
    let (result, rows) = run_with_cut(&h, Fault::CutAfterClientSends { pattern: b"COMMIT\0".to_vec() }).await;
    let err = result.expect_err("no answer came back, so this cannot be a success");
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");
    assert!(err.may_have_committed());
    assert_eq!(rows, 2, "the server received COMMIT and committed");
}

#[tokio::test]
async fn a_connection_lost_before_commit_arrived_is_unknown_to_the_client_and_rolled_back() {
    let h = Harness::new().await;
    let (result, rows) = run_with_cut(&h, Fault::CutBeforeClientSends { pattern: b"COMMIT\0".to_vec() }).await;
    // The client wrote COMMIT to its socket; it cannot know the proxy dropped it.
    let err = result.expect_err("not a success");
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err}");
    assert_eq!(rows, 0, "the server never got COMMIT and rolled back");
}

#[tokio::test]
async fn a_closed_connection_sends_nothing_and_the_pool_replaces_it() {
    let h = Harness::new().await;
    let pool = h.pool_named("pgbatch-closed", 1).await;
    drop(pool.get().await.unwrap());
    // Not this query's own backend: behind PgBouncer it may carry the pool's name.
    h.count(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'pgbatch-closed' AND pid <> pg_backend_pid()",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the client notices the close
    let mut batch = Batch::new();
    batch.push(insert_note(1, "after close"));
    batch.run(&pool).await.expect("bb8 discards the closed connection and opens a new one");
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'after close'").await, 1);
}

//! Serialization failures and deadlocks are replayed; the attempts are reported.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::Double;
use pgbatch::{Batch, Cause, Error, IsolationLevel, RetryPolicy};

use crate::common::*;

/// Reads account 1's balance and writes it back plus one, serializably: concurrent runs
/// conflict, and only replays make every increment count.
fn increment() -> Batch {
    let mut batch = Batch::new();
    batch.isolation(IsolationLevel::Serializable);
    batch.push(diesel::sql_query(
        "UPDATE account SET balance = (SELECT balance FROM account WHERE id = 1) + 1 WHERE id = 1",
    ));
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_serializable_increments_all_land_through_retries() {
    const TASKS: usize = 16;
    const EACH: usize = 50;
    let h = Harness::new().await;
    h.client.batch_execute("UPDATE account SET balance = 0").await.unwrap();
    let policy = RetryPolicy::default()
        .max_attempts(100)
        .base_delay(Duration::from_millis(2))
        .max_delay(Duration::from_millis(50));
    let pool = bb8::Pool::builder()
        .max_size(TASKS as u32)
        .build(pgbatch::ConnectionManager::new(h.db.config().clone()).retry(policy))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let batch = increment();
            let mut attempts = 0;
            for _ in 0..EACH {
                attempts += batch.run(&pool).await.expect("every increment lands eventually").attempts();
            }
            attempts
        }));
    }
    let mut attempts = 0;
    for task in tasks {
        attempts += task.await.unwrap();
    }
    assert_eq!(h.count("SELECT balance FROM account WHERE id = 1").await, (TASKS * EACH) as i64);
    assert!(
        attempts > (TASKS * EACH) as u32,
        "{attempts} attempts for {} batches: conflicts were retried",
        TASKS * EACH
    );
}

/// Locks account `first`, waits, then locks account `second`.
fn lock_in_order(first: i64, second: i64) -> Batch {
    let mut batch = Batch::new();
    batch.push(diesel::update(account::table.find(first)).set(account::balance.eq(account::balance + 1)));
    batch.push(diesel::sql_query("SELECT pg_sleep($1)").bind::<Double, _>(0.2));
    batch.push(diesel::update(account::table.find(second)).set(account::balance.eq(account::balance + 1)));
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocked_batches_both_commit_through_retry() {
    let h = Harness::new().await;
    h.client
        .batch_execute("INSERT INTO account (id, email, balance) VALUES (2, 'two', 0); UPDATE account SET balance = 0")
        .await
        .unwrap();
    let (a, b) = (lock_in_order(1, 2), lock_in_order(2, 1));
    let (a, b) = tokio::join!(a.run(&h.pool), b.run(&h.pool));
    let (a, b) = (a.expect("a commits"), b.expect("b commits"));
    assert!(a.attempts() + b.attempts() >= 3, "one of them was the deadlock victim and ran again");
    assert_eq!(h.count("SELECT sum(balance)::bigint FROM account").await, 4, "each batch applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_a_deadlock_surfaces_on_the_first_attempt() {
    let h = Harness::new().await;
    h.client.batch_execute("INSERT INTO account (id, email, balance) VALUES (2, 'two', 0)").await.unwrap();
    let (mut a, mut b) = (lock_in_order(1, 2), lock_in_order(2, 1));
    a.retry(RetryPolicy::never());
    b.retry(RetryPolicy::never());
    let (a, b) = tokio::join!(a.run(&h.pool), b.run(&h.pool));
    let err = a.err().or(b.err()).expect("one of them is the deadlock victim");
    assert!(matches!(err.cause(), Some(Cause::Deadlock(_))), "{err}");
    assert_eq!(err.attempts(), 1);
    assert!(err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_a_serialization_failure_surfaces_typed() {
    let h = Harness::new().await;
    // Retries off for the whole pool this time (the deadlock test turns them off per batch).
    let pool = bb8::Pool::builder()
        .max_size(2)
        .build(pgbatch::ConnectionManager::new(h.db.config().clone()).retry(RetryPolicy::never()))
        .await
        .unwrap();
    // Both read the balance, wait, then write: the second to commit cannot be serialized.
    let racing = || {
        let mut batch = Batch::new();
        batch.isolation(IsolationLevel::Serializable);
        batch.push(diesel::sql_query("SELECT balance FROM account WHERE id = 1"));
        batch.push(diesel::sql_query("SELECT pg_sleep($1)").bind::<Double, _>(0.2));
        batch.push(diesel::sql_query("UPDATE account SET balance = balance + 1 WHERE id = 1"));
        batch
    };
    let (a, b) = (racing(), racing());
    let (a, b) = tokio::join!(a.run(&pool), b.run(&pool));
    let err = a.err().or(b.err()).expect("one of the two cannot be serialized");
    assert!(matches!(err.cause(), Some(Cause::SerializationFailure(_))), "{err}");
    assert_eq!(err.attempts(), 1, "no retry");
    assert!(matches!(err, Error::Statement(_) | Error::Commit(_)));
}

//! Two-phase batches: inspect the results in Rust, then commit or roll back.

use diesel::prelude::*;
use pgbatch::Batch;

use crate::common::*;

fn withdraw(amount: i64) -> (Batch, pgbatch::One<i64>) {
    let mut batch = Batch::new();
    let balance = batch
        .push(
            diesel::update(account::table.find(1))
                .set(account::balance.eq(account::balance - amount))
                .returning(account::balance),
        )
        .one::<i64>();
    batch.push(insert_note(1, &format!("withdrew {amount}")));
    (batch, balance)
}

#[tokio::test]
async fn commit_after_inspecting_the_results() {
    let h = Harness::new().await;
    let (batch, balance) = withdraw(30);
    let prepared = batch.prepare(&h.pool).await.unwrap();
    assert_eq!(prepared.get(&balance).unwrap(), 70);
    assert_eq!(h.count("SELECT balance FROM account WHERE id = 1").await, 100, "nothing is visible before commit");
    let committed = prepared.commit().await.unwrap();
    assert_eq!(committed.get(&balance).unwrap(), 70);
    assert_eq!(h.count("SELECT balance FROM account WHERE id = 1").await, 70);
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test]
async fn rollback_after_inspecting_the_results() {
    let h = Harness::new().await;
    let before = h.snapshot().await;
    let (batch, balance) = withdraw(60);
    let prepared = batch.prepare(&h.pool).await.unwrap();
    assert_eq!(prepared.get(&balance).unwrap(), 40);
    prepared.rollback().await.unwrap();
    assert_eq!(h.snapshot().await, before);
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test]
async fn dropping_between_the_phases_rolls_back_and_frees_the_connection() {
    let h = Harness::new().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let (batch, _) = withdraw(10);
    let prepared = batch.prepare(&pool).await.unwrap();
    assert_eq!(
        h.count("SELECT count(*) FROM pg_locks WHERE relation = 'account'::regclass AND mode = 'RowExclusiveLock'")
            .await,
        1
    );
    drop(prepared);
    // The pool's only connection runs the next batch after the queued ROLLBACK.
    pool_still_works(&h, &pool).await;
    assert_eq!(h.count("SELECT balance FROM account WHERE id = 1").await, 100);
    assert_eq!(h.count("SELECT count(*) FROM note").await, 1, "only the note of the batch after it");
}

#[tokio::test]
async fn a_failure_in_the_first_round_trip_rolls_back() {
    let h = Harness::new().await;
    let before = h.snapshot().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let (batch, _) = withdraw(1_000);
    let err = batch.prepare(&pool).await.unwrap_err();
    assert_eq!(err.cause().and_then(|c| c.constraint()), Some("balance_nonnegative"));
    assert_eq!(h.snapshot().await, before);
    // The connection is usable: the failed transaction was rolled back.
    pool_still_works(&h, &pool).await;
}

#[tokio::test]
async fn a_prepare_future_dropped_mid_flight_leaves_no_transaction() {
    let h = Harness::new().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "dropped"));
    batch.push(diesel::sql_query("SELECT pg_sleep(0.2)"));
    let mut future = Box::pin(batch.prepare(&pool));
    let _ = futures_util::poll!(&mut future);
    drop(future);
    pool_still_works(&h, &pool).await;
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'dropped'").await, 0);
}

#[tokio::test]
async fn serializable_isolation_is_what_the_statements_run_under() {
    let h = Harness::new().await;
    for (level, expected) in [
        (None, "read committed"),
        (Some(pgbatch::IsolationLevel::RepeatableRead), "repeatable read"),
        (Some(pgbatch::IsolationLevel::Serializable), "serializable"),
    ] {
        let mut batch = Batch::new();
        if let Some(level) = level {
            batch.isolation(level);
        }
        let isolation = batch
            .push(diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('transaction_isolation')",
            )))
            .one::<String>();
        let committed = batch.run(&h.pool).await.unwrap();
        assert_eq!(committed.get(&isolation).unwrap(), expected);
    }
    let mut batch = Batch::new();
    batch.read_only();
    batch.push(insert_note(1, "refused"));
    let err = batch.run(&h.pool).await.unwrap_err();
    assert_eq!(err.cause().and_then(|c| c.code()).map(|c| c.code()), Some("25006"), "{err}");
}

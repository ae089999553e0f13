//! Dropped batch futures and panicking tasks: all or nothing, and no connection goes back
//! to the pool inside a transaction.

use std::task::Poll;

use diesel::sql_types::Double;
use pgbatch::Batch;

use crate::common::*;

/// Three inserts around a sleep, so the batch is still running when its future goes.
fn slow_batch(tag: &str) -> Batch {
    let mut batch = Batch::new();
    batch.push(insert_note(1, &format!("{tag} 1")));
    batch.push(diesel::sql_query("SELECT pg_sleep($1)").bind::<Double, _>(0.3));
    batch.push(insert_note(1, &format!("{tag} 2")));
    batch.push(insert_note(1, &format!("{tag} 3")));
    batch
}

async fn notes_tagged(h: &Harness, tag: &str) -> i64 {
    h.count(&format!("SELECT count(*) FROM note WHERE body LIKE '{tag} %'")).await
}

#[tokio::test]
async fn a_batch_dropped_before_its_first_poll_sends_nothing() {
    let h = Harness::new().await;
    let (proxy, pool) = h.behind_proxy().await;
    let (before, bytes) = (h.snapshot().await, proxy.client_bytes());
    let batch = slow_batch("unpolled");
    let future = batch.run(&pool);
    drop(future);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(proxy.client_bytes(), bytes);
    assert_eq!(h.snapshot().await, before);
    pool_still_works(&h, &pool).await;
}

#[tokio::test]
async fn a_batch_dropped_after_its_first_poll_runs_whole_on_the_server() {
    let h = Harness::new().await;
    let mut connection = h.pool.get().await.unwrap();
    let batch = slow_batch("polled");
    let mut future = Box::pin(batch.run(&mut connection));
    assert!(matches!(futures_util::poll!(&mut future), Poll::Pending));
    drop(future);
    // Its answers are still due: the pool does not lend the connection out again.
    drop(connection);
    pool_still_works(&h, &h.pool).await;
    // The pipeline was sent whole on the first poll, so it runs whole on the server: watch
    // it land, and never half of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = notes_tagged(&h, "polled").await;
        assert!(n == 0 || n == 3, "{n} of 3 rows: a dropped batch must be all or nothing");
        if n == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "once sent, the whole pipeline runs");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.idle_in_transaction().await, 0);
}

#[tokio::test]
async fn a_batch_dropped_while_waiting_on_the_pool_is_all_or_nothing() {
    let h = Harness::new().await;
    for attempt in 0..5 {
        let tag = format!("timeout{attempt}");
        let batch = slow_batch(&tag);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50 * attempt), batch.run(&h.pool)).await;
        pool_still_works(&h, &h.pool).await;
        let n = notes_tagged(&h, &tag).await;
        assert!(n == 0 || n == 3, "{n} of 3 rows: a dropped batch must be all or nothing");
    }
}

#[tokio::test]
async fn a_task_that_panics_mid_batch_leaves_no_open_transaction() {
    let h = Harness::new().await;
    let pool = h.pool.clone();
    let task = tokio::spawn(async move {
        let mut connection = pool.get().await.unwrap();
        let batch = slow_batch("panicked");
        let mut future = Box::pin(batch.run(&mut connection));
        let _ = futures_util::poll!(&mut future);
        panic!("the request handler fails while its batch is in flight");
    });
    assert!(task.await.unwrap_err().is_panic());
    pool_still_works(&h, &h.pool).await;
    let n = notes_tagged(&h, "panicked").await;
    assert!(n == 0 || n == 3, "{n} of 3 rows");
}

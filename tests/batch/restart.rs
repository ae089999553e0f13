//! CockroachDB's retry protocol, opted into with `RetryPolicy::cockroach_restart`, shown on
//! PostgreSQL (where `cockroach_restart` is an ordinary savepoint) with serialization
//! failures injected by a statement that fails its first runs.

use std::time::Duration;

use pgbatch::{Batch, Cause, Error, RetryPolicy};

use crate::common::*;

/// Fails with `40001` on its first `failures` runs (a sequence counts them: sequences are
/// not rolled back), and checks that every run happens in the same transaction as the
/// first.
fn conflicting(failures: i64) -> String {
    format!(
        "DO $$ BEGIN \
           IF nextval('tries') = 1 THEN PERFORM setval('first_xid', txid_current()); END IF; \
           IF txid_current() <> currval('first_xid') THEN RAISE EXCEPTION 'a retry left its transaction'; END IF; \
           IF currval('tries') <= {failures} THEN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END IF; \
         END $$"
    )
}

async fn harness() -> Harness {
    let h = Harness::new().await;
    h.client.batch_execute("CREATE SEQUENCE tries; CREATE SEQUENCE first_xid").await.unwrap();
    h
}

fn policy() -> RetryPolicy {
    RetryPolicy::default().cockroach_restart().max_attempts(4).base_delay(Duration::from_millis(1))
}

fn batch(failures: i64) -> Batch {
    let mut batch = Batch::new();
    batch.retry(policy());
    batch.push(insert_note(1, "before the conflict"));
    batch.push(diesel::sql_query(conflicting(failures))).label("conflicts");
    batch.push(insert_note(1, "after the conflict"));
    batch
}

#[tokio::test]
async fn retries_keep_the_transaction_and_commit_once() {
    let h = harness().await;
    let committed = batch(2).run(&h.pool).await.expect("the third attempt commits");
    assert_eq!(committed.attempts(), 3);
    assert_eq!(h.count("SELECT count(*) FROM note").await, 2, "each statement's effect once");
    assert_eq!(h.idle_in_transaction().await, 0);
    pool_still_works(&h, &h.pool).await;
}

#[tokio::test]
async fn a_batch_out_of_attempts_is_rolled_back_and_its_connection_idle() {
    let h = harness().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let err = batch(100).run(&pool).await.unwrap_err();
    assert!(matches!(err.cause(), Some(Cause::SerializationFailure(_))), "{err}");
    assert_eq!(err.attempts(), 4);
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0);
    assert_eq!(h.idle_in_transaction().await, 0, "the kept transaction was ended");
    pool_still_works(&h, &pool).await;
}

#[tokio::test]
async fn a_failure_that_is_not_transient_is_not_retried() {
    let h = harness().await;
    let pool = pool(h.db.config().clone(), 1).await;
    let mut batch = Batch::new();
    batch.retry(policy());
    batch.push(insert_note(1, "ran"));
    batch.push(insert_account(2, "first@example.com")).label("duplicate");
    let err = batch.run(&pool).await.unwrap_err();
    let Error::Statement(failure) = &err else { panic!("{err}") };
    assert_eq!((failure.label(), failure.attempts()), (Some("duplicate"), 1));
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0);
    pool_still_works(&h, &pool).await;
}

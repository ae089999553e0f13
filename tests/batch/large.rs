//! Ten thousand statements in one pipeline.

use pgbatch::{Batch, Error};

use crate::common::*;

const STATEMENTS: usize = 10_000;

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_statements_commit_in_one_run() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    for i in 0..STATEMENTS {
        batch.push(insert_note(1, &format!("bulk {i}")));
    }
    let committed = batch.run(&h.pool).await.unwrap();
    assert_eq!(committed.statement_count(), STATEMENTS);
    assert_eq!(h.count("SELECT count(*) FROM note").await, STATEMENTS as i64);
}

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_9999th_of_ten_thousand_fails_and_is_named() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    for i in 0..STATEMENTS {
        let account = if i == 9_998 { 404 } else { 1 };
        batch.push(insert_note(account, &format!("bulk {i}"))).label(format!("note {i}"));
    }
    let err = batch.run(&h.pool).await.unwrap_err();
    let Error::Statement(failure) = &err else { panic!("{err}") };
    assert_eq!((failure.index(), failure.label()), (9_998, Some("note 9998")));
    assert_eq!(failure.cause().constraint(), Some("note_account_fk"));
    assert!(err.to_string().contains("9998 earlier rolled back, 1 later skipped"), "{err}");
    assert_eq!(h.count("SELECT count(*) FROM note").await, 0);
}

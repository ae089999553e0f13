//! Batches that commit, and reading their results through handles.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use pgbatch::Batch;
use pgbatch::error::ResultError;

use crate::common::*;

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_statements_commit_and_every_handle_reads_its_result() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    let created = batch
        .push(
            diesel::insert_into(account::table)
                .values((account::id.eq(2), account::email.eq("second@example.com"), account::balance.eq(5)))
                .returning(Account::as_returning()),
        )
        .label("insert account")
        .one();
    let notes = batch
        .push(
            diesel::insert_into(note::table)
                .values(vec![
                    (note::account_id.eq(2), note::body.eq("a")),
                    (note::account_id.eq(2), note::body.eq("b")),
                    (note::account_id.eq(1), note::body.eq("c")),
                ])
                .returning(note::body),
        )
        .label("insert notes")
        .all::<String>();
    let debited = batch
        .push(
            diesel::update(account::table)
                .filter(account::balance.gt(0))
                .set(account::balance.eq(account::balance - 1)),
        )
        .label("debit all")
        .affected();
    let missing = batch.push(account::table.find(99).select(Account::as_select())).label("find 99").optional();
    let counted = batch
        .push(diesel::sql_query("SELECT count(*) AS n FROM note WHERE account_id = $1").bind::<BigInt, _>(2))
        .label("count notes")
        .one::<Counted>();

    let committed = batch.run(&h.pool).await.expect("the batch commits");

    assert_eq!(committed.get(&created).unwrap(), Account { id: 2, email: "second@example.com".into(), balance: 5 });
    assert_eq!(committed.get(&notes).unwrap(), vec!["a", "b", "c"]);
    assert_eq!(committed.get(&debited).unwrap(), 2, "both accounts had a positive balance");
    assert_eq!(committed.get(&missing).unwrap(), None);
    assert_eq!(committed.get(&counted).unwrap().n, 2, "the count sees the notes inserted earlier in the batch");
    assert_eq!(committed.statement_count(), 5);
    assert_eq!(committed.attempts(), 1);
    assert_eq!(h.count("SELECT sum(balance)::bigint FROM account").await, 99 + 4);
    assert_eq!(h.count("SELECT count(*) FROM note").await, 3);
}

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

// On several threads: an answer can arrive within the poll that sends the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_a_value_that_runs_again() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "again"));
    batch.run(&h.pool).await.unwrap();
    batch.run(&h.pool).await.unwrap();
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'again'").await, 2);
}

#[tokio::test]
async fn a_handle_refuses_a_row_count_that_does_not_fit_it() {
    let h = Harness::new().await;
    let mut batch = Batch::new();
    let none = batch.push(account::table.filter(account::id.eq(42)).select(account::id)).label("find 42").one::<i64>();
    let many = batch
        .push(
            diesel::insert_into(note::table)
                .values(vec![(note::account_id.eq(1), note::body.eq("x")); 2])
                .returning(note::id),
        )
        .optional::<i64>();
    let committed = batch.run(&h.pool).await.unwrap();

    match committed.get(&none) {
        Err(ResultError::UnexpectedRowCount { statement, expected, actual }) => {
            assert_eq!(
                (statement.index(), statement.label(), expected, actual),
                (0, Some("find 42"), "exactly one", 0)
            );
        }
        other => panic!("expected UnexpectedRowCount, got {other:?}"),
    }
    assert!(matches!(committed.get(&many), Err(ResultError::UnexpectedRowCount { actual: 2, .. })));
    assert_eq!(h.count("SELECT count(*) FROM note").await, 2, "a result error does not undo the commit");
}

#[tokio::test]
async fn a_handle_from_another_batch_and_a_wrong_type_are_typed_errors() {
    let h = Harness::new().await;
    let mut first = Batch::new();
    let email = first.push(account::table.find(1).select(account::email)).one::<String>();
    let mut second = Batch::new();
    second.push(insert_note(1, "other"));
    let committed = second.run(&h.pool).await.unwrap();
    assert!(matches!(committed.get(&email), Err(ResultError::ForeignHandle)));

    // A query whose declared SQL type does not match what the server returns.
    let mut batch = Batch::new();
    let wrong = batch.push(diesel::sql_query("SELECT 'not a number'::text AS n")).one::<Counted>();
    let committed = batch.run(&h.pool).await.unwrap();
    let err = committed.get(&wrong).err().expect("text does not decode as bigint");
    assert!(matches!(err, ResultError::Decode { row: 0, .. }), "{err:?}");
}

#[tokio::test]
async fn an_empty_batch_commits_nothing() {
    let h = Harness::new().await;
    let before = h.snapshot().await;
    let committed = Batch::new().run(&h.pool).await.unwrap();
    assert_eq!(committed.statement_count(), 0);
    assert_eq!(h.snapshot().await, before);
}

#[tokio::test]
async fn a_batch_runs_on_a_plain_connection_and_a_checked_out_one() {
    let h = Harness::new().await;
    let mut connection = pgbatch::Connection::connect(&h.db.url()).await.unwrap();
    let mut batch = Batch::new();
    batch.push(insert_note(1, "plain"));
    batch.run(&mut connection).await.unwrap();
    let mut pooled = h.pool.get().await.unwrap();
    batch.run(&mut pooled).await.unwrap();
    assert_eq!(h.count("SELECT count(*) FROM note WHERE body = 'plain'").await, 2);
}

#[tokio::test]
async fn checking_a_connection_out_of_the_pool_sends_nothing() {
    let h = Harness::new().await;
    let (proxy, pool) = h.behind_proxy().await;
    let mut batch = Batch::new();
    batch.push(insert_note(1, "warm"));
    batch.run(&pool).await.unwrap();
    let before = proxy.client_bytes();
    for _ in 0..5 {
        drop(pool.get().await.unwrap());
    }
    assert_eq!(proxy.client_bytes(), before, "test-on-checkout must not cost a query");
}

#[tokio::test]
async fn upserts_with_on_conflict_return_their_rows() {
    let h = Harness::new().await;
    let upsert = |balance: i64| {
        diesel::insert_into(account::table)
            .values((account::id.eq(1), account::email.eq("first@example.com"), account::balance.eq(balance)))
            .on_conflict(account::id)
            .do_update()
            .set(account::balance.eq(account::balance + diesel::upsert::excluded(account::balance)))
            .returning(account::balance)
    };
    let mut batch = Batch::new();
    let first = batch.push(upsert(5)).one::<i64>();
    let second = batch.push(upsert(7)).one::<i64>();
    let skipped = batch
        .push(
            diesel::insert_into(account::table)
                .values((account::id.eq(1), account::email.eq("first@example.com")))
                .on_conflict_do_nothing(),
        )
        .affected();
    let committed = batch.run(&h.pool).await.unwrap();
    assert_eq!((committed.get(&first).unwrap(), committed.get(&second).unwrap()), (105, 112));
    assert_eq!(committed.get(&skipped).unwrap(), 0, "DO NOTHING inserted nothing");
}

//! A batch inside a transaction the caller opened joins it and never ends it; the
//! transaction manager and the server never disagree.

use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use pgbatch::{Error, IdempotencyKey};

use crate::support::*;

/// The hazard this connection must never have: a batch started while the caller's
/// transaction is open rolled that transaction back first (assuming a leftover of its own),
/// committed on its own, and the caller's `COMMIT` then merely drew a warning: the caller's
/// writes were lost and reported as committed.
#[tokio::test]
async fn a_batch_inside_a_diesel_async_transaction_keeps_the_callers_earlier_writes() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let outcome = conn
        .transaction::<_, DieselError, _>(async |conn| {
            insert(conn, "before").await?;
            let joined = notes(&["batch-1", "batch-2"]).run(&mut *conn).await.expect("the batch joins");
            assert!(joined.in_enclosing_transaction(), "released into the transaction, not committed");
            assert_eq!(s.seen("batch-1").await, 0, "nobody else sees it before the caller commits");
            insert(conn, "after").await?;
            Ok(())
        })
        .await;
    outcome.expect("the caller's transaction commits");
    for body in ["before", "batch-1", "batch-2", "after"] {
        assert_eq!(s.seen(body).await, 1, "{body} committed with the caller's transaction");
    }
    assert_eq!(s.open_transactions().await, 0);
}

/// The same hazard with the transaction opened by hand (`BEGIN` as a query), which no
/// transaction manager knows about: the server's word decides.
#[tokio::test]
async fn a_batch_never_rolls_back_a_transaction_opened_by_hand() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    conn.batch_execute("BEGIN").await.unwrap();
    insert(&mut conn, "by hand").await.unwrap();
    let joined = notes(&["batch"]).run(&mut conn).await.expect("the batch joins");
    assert!(joined.in_enclosing_transaction());
    conn.batch_execute("COMMIT").await.expect("the caller's commit");
    assert_eq!((s.seen("by hand").await, s.seen("batch").await), (1, 1));
}

#[tokio::test]
async fn a_failed_batch_inside_a_transaction_is_undone_alone_and_the_transaction_stays_usable() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    conn.transaction::<_, DieselError, _>(async |conn| {
        insert(conn, "kept").await?;
        let error = notes(&["undone", "kept"]).run(&mut *conn).await.expect_err("a duplicate body");
        let failure = error.statement_failure().expect("a statement failed");
        assert_eq!(failure.index(), 1, "the second statement, named: {error}");
        assert!(!error.may_have_committed());
        insert(conn, "after the failure").await?;
        Ok(())
    })
    .await
    .expect("the transaction is usable and commits");
    assert_eq!((s.seen("kept").await, s.seen("undone").await, s.seen("after the failure").await), (1, 0, 1));
}

#[tokio::test]
async fn a_batch_inside_a_transaction_that_rolls_back_rolls_back_with_it() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let outcome = conn
        .transaction::<(), DieselError, _>(async |conn| {
            notes(&["joined"]).run(&mut *conn).await.expect("the batch joins");
            Err(DieselError::RollbackTransaction)
        })
        .await;
    assert_eq!(outcome, Err(DieselError::RollbackTransaction));
    assert_eq!(s.seen("joined").await, 0);
    // Outside a transaction again, a batch commits on its own.
    let own = notes(&["own"]).run(&mut conn).await.unwrap();
    assert!(!own.in_enclosing_transaction());
    assert_eq!(s.seen("own").await, 1);
}

#[tokio::test]
async fn batches_inside_nested_transactions_join_the_innermost() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    conn.transaction::<_, DieselError, _>(async |conn| {
        let inner = conn
            .transaction::<(), DieselError, _>(async |conn| {
                notes(&["inner"]).run(&mut *conn).await.expect("joins the savepoint");
                Err(DieselError::RollbackTransaction)
            })
            .await;
        assert_eq!(inner, Err(DieselError::RollbackTransaction));
        notes(&["outer"]).run(&mut *conn).await.expect("joins the outer transaction");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((s.seen("inner").await, s.seen("outer").await), (0, 1));
}

/// Batches that cannot join a transaction are refused before anything is sent, and the
/// caller's transaction goes on untouched.
#[tokio::test]
async fn batches_that_cannot_join_a_transaction_are_refused_and_it_is_untouched() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    conn.transaction::<_, DieselError, _>(async |conn| {
        insert(conn, "caller").await?;
        let mut keyed = notes(&["keyed"]);
        keyed.idempotency_key(IdempotencyKey::new("k"));
        let mut read_only = notes(&["read only"]);
        read_only.read_only();
        let mut restart = notes(&["restart"]);
        restart.retry(pgbatch::RetryPolicy::default().cockroach_restart());
        for (name, batch) in [("a key", keyed), ("options", read_only), ("a restart policy", restart)] {
            let error = batch.run(&mut *conn).await.expect_err(name);
            assert!(matches!(error, Error::InEnclosingTransaction { .. }), "{name}: {error}");
            assert!(!error.may_have_committed());
        }
        let two_phase = notes(&["two phase"]).prepare(&mut *conn).await.map(drop).expect_err("two-phase");
        assert!(matches!(two_phase, Error::InEnclosingTransaction { .. }), "{two_phase}");
        Ok(())
    })
    .await
    .expect("the caller's transaction commits");
    assert_eq!(s.seen("caller").await, 1);
    for body in ["keyed", "read only", "restart", "two phase"] {
        assert_eq!(s.seen(body).await, 0, "{body}");
    }
}

/// PostgreSQL answers `COMMIT` of an aborted transaction by rolling back, without an
/// error. A caller that swallowed a failed statement must not be told it committed.
#[tokio::test]
async fn commit_of_a_transaction_a_statement_aborted_is_an_error() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    insert(&mut conn, "taken").await.unwrap();
    let outcome = conn
        .transaction::<_, DieselError, _>(async |conn| {
            insert(conn, "lost").await?;
            let duplicate = insert(conn, "taken").await;
            assert!(duplicate.is_err(), "a unique violation, swallowed below");
            Ok(())
        })
        .await;
    let error = outcome.expect_err("the commit rolled back");
    assert!(error.to_string().contains("rolled the transaction back"), "{error}");
    assert_eq!(s.seen("lost").await, 0);
    // The transaction manager and the server agree: the connection goes on.
    insert(&mut conn, "next").await.expect("usable");
    assert_eq!(s.seen("next").await, 1);
}

/// A batch in an aborted transaction is refused: the caller has to roll back first.
#[tokio::test]
async fn a_batch_in_an_aborted_transaction_is_refused() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    conn.batch_execute("BEGIN").await.unwrap();
    assert!(conn.batch_execute("SELECT 1 / 0").await.is_err());
    let error = notes(&["refused"]).run(&mut conn).await.expect_err("aborted");
    assert!(matches!(error, Error::InEnclosingTransaction { .. }), "{error}");
    assert!(error.to_string().contains("roll it back first"), "{error}");
    conn.batch_execute("ROLLBACK").await.unwrap();
    notes(&["after rollback"]).run(&mut conn).await.expect("commits");
    assert_eq!(s.seen("after rollback").await, 1);
}

/// A query that ends the transaction behind the transaction manager's back leaves the
/// manager broken, not disagreeing: its commit fails, and a pool would not lend the
/// connection out again.
#[tokio::test]
async fn a_transaction_ended_behind_the_managers_back_breaks_the_manager() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let outcome = conn
        .transaction::<_, DieselError, _>(async |conn| {
            insert(conn, "ended early").await?;
            diesel::sql_query("COMMIT").execute(conn).await?;
            Ok(())
        })
        .await;
    assert!(outcome.is_err(), "the manager knows its transaction is gone: {outcome:?}");
    use diesel_async::pooled_connection::PoolableConnection;
    assert!(conn.is_broken(), "a pool discards it");
}

/// `begin_test_transaction` on a pool of one, as service tests do: the connection keeps its
/// test transaction between checkouts, batches join it, nothing is ever committed.
#[tokio::test]
async fn a_test_transaction_on_a_pool_of_one_is_kept_and_batches_join_it() {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    {
        let mut conn = pool.get().await.unwrap();
        conn.begin_test_transaction().await.unwrap();
        insert(&mut conn, "test 1").await.unwrap();
    }
    {
        let mut conn = pool.get().await.expect("the same connection, lent out again");
        let joined = notes(&["test batch"]).run(&mut conn).await.unwrap();
        assert!(joined.in_enclosing_transaction());
    }
    let joined = notes(&["through the pool"]).run(&pool).await.unwrap();
    assert!(joined.in_enclosing_transaction());
    let mut conn = pool.get().await.unwrap();
    use diesel::QueryDsl;
    let seen: i64 = note::table.count().get_result(&mut *conn).await.unwrap();
    assert_eq!(seen, 3, "the test transaction sees its own writes");
    assert_eq!(s.seen("test 1").await + s.seen("test batch").await + s.seen("through the pool").await, 0);
}

/// Without a test transaction, a connection returned inside a transaction (its future
/// dropped) is never lent out again: the next checkout gets a fresh connection.
#[tokio::test]
async fn a_connection_returned_inside_a_transaction_is_not_lent_out() {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    {
        let mut conn = pool.get().await.unwrap();
        let transaction = conn.transaction::<(), DieselError, _>(async |conn| {
            insert(conn, "dropped").await?;
            diesel::sql_query("SELECT pg_sleep(10)").execute(conn).await?;
            Ok(())
        });
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), transaction).await;
        assert!(timed_out.is_err());
    }
    let mut conn = pool.get().await.unwrap();
    insert(&mut conn, "next").await.expect("a clean connection");
    assert_eq!((s.seen("dropped").await, s.seen("next").await), (0, 1));
}

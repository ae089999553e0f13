//! Dropped futures, bad input and lost sessions: a diesel-async query on pgbatch's
//! connection keeps the guarantees a batch has.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{ExpressionMethods, QueryDsl};
use diesel_async::RunQueryDsl;

use crate::support::*;

/// Polls `future` `polls` times (fewer if it finishes), then drops it.
async fn poll_then_drop<F: Future>(future: F, polls: usize) -> bool {
    let mut future = pin!(future);
    for _ in 0..polls {
        let done = std::future::poll_fn(|cx: &mut Context<'_>| Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        if done {
            return true;
        }
        // Let the server answer a little.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    false
}

/// A query future dropped after every number of polls leaves no answer unread and no
/// transaction open: the next query on the same connection gets its own answer.
#[tokio::test]
async fn a_query_dropped_after_any_poll_leaves_the_connection_clean() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let mut finished = false;
    for polls in 0..40 {
        let body = format!("dropped-{polls}");
        let insert = diesel::insert_into(note::table).values(note::body.eq(body.clone()));
        finished = poll_then_drop(insert.execute(&mut conn), polls).await;
        let count: i64 = note::table.filter(note::body.eq(&body)).count().get_result(&mut conn).await.unwrap();
        assert!(count <= 1, "after {polls} polls");
        let echoed: String =
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("'mine'")).get_result(&mut conn).await.unwrap();
        assert_eq!(echoed, "mine", "after {polls} polls the next query reads its own answer");
        assert_eq!(s.open_transactions().await, 0, "after {polls} polls");
        if finished {
            break;
        }
    }
    assert!(finished, "some number of polls lets the query finish");
}

/// The same inside a transaction on a pool: a dropped query inside `transaction` leaves the
/// connection out of the pool, and the transaction rolled back.
#[tokio::test]
async fn a_transaction_dropped_after_any_poll_leaves_nothing_in_the_pool() {
    use diesel_async::AsyncConnection;
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    for polls in 0..30 {
        let body = format!("in-transaction-{polls}");
        {
            let mut conn = pool.get().await.unwrap();
            let body = body.clone();
            let transaction = conn.transaction::<(), DieselError, _>(async move |conn| {
                insert(conn, &body).await?;
                notes(&[&format!("{body}-batch")]).run(&mut *conn).await.expect("joins");
                Ok(())
            });
            poll_then_drop(transaction, polls).await;
        }
        let mut conn = pool.get().await.unwrap();
        let echoed: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("7"))
            .get_result(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("after {polls} polls: {e}"));
        assert_eq!(echoed, 7);
        // All of the transaction or none of it.
        assert_eq!(s.seen(&body).await, s.seen(&format!("{body}-batch")).await, "after {polls} polls");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(s.open_transactions().await, 0);
}

/// A query that cannot be encoded (more binds than the protocol carries) sends nothing and
/// leaves the connection usable.
#[tokio::test]
async fn a_query_that_cannot_be_encoded_sends_nothing_and_the_connection_goes_on() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let rows: Vec<_> = (0..70_000).map(|i| note::body.eq(format!("n{i}"))).collect();
    let error = diesel::insert_into(note::table).values(&rows).execute(&mut conn).await.expect_err("too many binds");
    assert!(matches!(error, DieselError::SerializationError(_)), "{error:?}");
    assert!(error.to_string().contains("binds"), "{error}");
    let count: i64 = note::table.count().get_result(&mut conn).await.expect("the connection goes on");
    assert_eq!(count, 0);
}

/// A server that ends the session: the next query fails with a clear error, and a pool
/// replaces the connection by itself.
#[tokio::test]
async fn a_query_after_the_server_ended_the_session_fails_clearly_and_the_pool_replaces_it() {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    let pid: i32 = {
        let mut conn = pool.get().await.unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"))
            .get_result(&mut *conn)
            .await
            .unwrap()
    };
    s.outside.batch_execute(&format!("SELECT pg_terminate_backend({pid}, 5000)")).await.unwrap();
    {
        let mut conn = pool.get().await.unwrap();
        // The pool's check may already have noticed; either way no query succeeds on it.
        if let Err(error) = insert(&mut conn, "on a dead session").await {
            assert!(matches!(error, DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)), "{error:?}");
        }
    }
    let mut conn = pool.get().await.unwrap();
    insert(&mut conn, "on a fresh session").await.expect("the pool replaced the connection");
    let pid_now: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"))
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_ne!(pid_now, pid);
}

/// Session state a query leaves (a `SET`, a temporary table) is gone for the next user of
/// the pooled connection.
#[tokio::test]
async fn session_state_a_query_leaves_does_not_reach_the_next_user() {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SET search_path = pg_catalog").execute(&mut *conn).await.unwrap();
        diesel::sql_query("SELECT set_config('app.tenant', 'a', false)").execute(&mut *conn).await.unwrap();
        diesel::sql_query("CREATE TEMPORARY TABLE note (id int8, body text)").execute(&mut *conn).await.unwrap();
    }
    let mut conn = pool.get().await.unwrap();
    let (search_path, tenant): (String, String) = diesel::select((
        diesel::dsl::sql::<diesel::sql_types::Text>("current_setting('search_path')"),
        diesel::dsl::sql::<diesel::sql_types::Text>("coalesce(current_setting('app.tenant', true), '')"),
    ))
    .get_result(&mut *conn)
    .await
    .unwrap();
    assert_eq!((search_path.as_str(), tenant.as_str()), ("\"$user\", public", ""));
    insert(&mut conn, "into the real table").await.unwrap();
    assert_eq!(s.seen("into the real table").await, 1, "no temporary table shadows it");
}

//! The session between holders, through diesel-async: a checked-out connection keeps what
//! its queries left (a temporary table, a `SET`), as `AsyncPgConnection` does; the next
//! holder's first query resets it in its own segment, and a reset stopped by a
//! `statement_timeout` or a cancel request makes the server skip the query, which fails
//! saying it did not run. Directly connected only for the holder's own state: behind a
//! pooler each request is reset.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool as DieselPool;
use pgbatch::Connection;

use crate::support::{Setup, insert};

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct Session {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = BigInt)]
    temp_relations: i64,
}

const SESSION: &str = "SELECT coalesce(current_setting('app.tenant', true), '') AS tenant, \
    (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_relations";

async fn session(conn: &mut Connection) -> diesel::QueryResult<Session> {
    diesel::sql_query(SESSION).get_result(conn).await
}

/// Leaves a tenant and a temporary table (which shadows `note`) on the connection.
async fn leave_state(conn: &mut Connection) {
    diesel::sql_query("SELECT set_config('app.tenant', 'holder', false)").execute(conn).await.unwrap();
    diesel::sql_query("CREATE TEMPORARY TABLE note (id int8, body text)").execute(conn).await.unwrap();
}

/// What a holder sees on its next query and batch, and what the next holder sees.
async fn holder_then_next(first: &mut Connection) {
    leave_state(first).await;
    let own = session(first).await.unwrap();
    let mut batch = pgbatch::Batch::new();
    let seen = batch
        .push(diesel::select(diesel::dsl::sql::<BigInt>(
            "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())",
        )))
        .one::<i64>();
    let in_batch = batch.run(&mut *first).await.unwrap().get(&seen).unwrap();
    if first.has_own_backend() {
        assert_eq!(own, Session { tenant: "holder".into(), temp_relations: 1 }, "the holder's next query");
        assert_eq!(in_batch, 1, "the holder's next batch sees its temporary table");
    } else {
        assert_eq!(own, Session { tenant: String::new(), temp_relations: 0 }, "behind a pooler each request is reset");
    }
}

#[tokio::test]
async fn a_held_connection_keeps_its_session_and_the_next_holder_of_the_pool_starts_clean() {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    holder_then_next(&mut pool.get().await.unwrap()).await;
    let mut next = pool.get().await.unwrap();
    assert_eq!(session(&mut next).await.unwrap(), Session { tenant: String::new(), temp_relations: 0 });
    insert(&mut next, "into the real table").await.unwrap();
    assert_eq!(s.seen("into the real table").await, 1);
}

#[tokio::test]
async fn through_diesel_asyncs_bb8_manager_a_holder_keeps_its_session_and_the_next_starts_clean() {
    let s = Setup::new().await;
    let pool: DieselPool<Connection> = DieselPool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::<Connection>::new(s.db.url()))
        .await
        .unwrap();
    holder_then_next(&mut pool.get().await.unwrap()).await;
    let mut next = pool.get().await.unwrap();
    assert_eq!(session(&mut next).await.unwrap(), Session { tenant: String::new(), temp_relations: 0 });
    insert(&mut next, "into the real table").await.unwrap();
    assert_eq!(s.seen("into the real table").await, 1);
}

/// Leaves 800 temporary tables, one shadowing `note`, a tenant, and the session
/// `statement_timeout` given (when one is), under which the next reset is stopped; in one
/// query, since behind a pooler each query is reset.
async fn leave_a_slow_reset(conn: &mut Connection, timeout: Option<&str>) {
    diesel::sql_query(format!(
        "DO $$ BEGIN
            PERFORM set_config('app.tenant', 'A', false);
            FOR i IN 1..800 LOOP
                EXECUTE format('CREATE TEMP TABLE IF NOT EXISTS pgbatch_scratch_%s (a int)', i);
            END LOOP;
            CREATE TEMP TABLE IF NOT EXISTS note (id int8, body text);
            PERFORM set_config('statement_timeout', '{}', false);
        END $$",
        timeout.unwrap_or("0")
    ))
    .execute(conn)
    .await
    .unwrap();
}

/// Three rounds: a holder leaves a session whose reset is stopped; the next holder's query
/// either fails saying it did not run (and did not), or runs on a clean session; the holder
/// after it always runs clean.
async fn a_stopped_reset(timeout: Option<&'static str>) {
    let s = Setup::new().await;
    let pool = s.pool(1).await;
    let (mut leaks, mut skipped) = (Vec::new(), 0);
    for round in 0..3 {
        leave_a_slow_reset(&mut pool.get().await.unwrap(), timeout).await;
        let body = format!("round {round}");
        let next = async {
            let mut conn = pool.get().await.unwrap();
            let inserted = insert(&mut conn, &body).await;
            (inserted, session(&mut conn).await)
        };
        let (inserted, seen) = match timeout {
            Some(_) => next.await,
            None => {
                let mut next = std::pin::pin!(next);
                tokio::select! {
                    biased;
                    done = &mut next => done,
                    _ = pgbatch_testing::cancel_session_reset(&s.outside, Duration::from_secs(10)) => next.await,
                }
            }
        };
        match inserted {
            Ok(_) => {
                let seen = seen.unwrap();
                if seen != (Session { tenant: String::new(), temp_relations: 0 }) {
                    leaks.push(format!("{body}: {seen:?}"));
                }
                assert_eq!(s.seen(&body).await, 1, "{body}: into the real table");
            }
            Err(DieselError::DatabaseError(kind, info)) => {
                skipped += 1;
                assert!(info.message().contains("did not run"), "{body}: {}", info.message());
                assert!(
                    matches!(kind, DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::Unknown),
                    "{body}: {kind:?}"
                );
                assert_eq!(s.seen(&body).await, 0, "{body}: nothing ran");
            }
            Err(other) => panic!("{body}: {other}"),
        }
        let mut after = pool.get().await.unwrap();
        let seen = session(&mut after).await.unwrap();
        if seen != (Session { tenant: String::new(), temp_relations: 0 }) {
            leaks.push(format!("after {body}: {seen:?}"));
        }
    }
    println!("diesel-async, reset stopped ({timeout:?}): units=6 skipped={skipped} session_leaks={}", leaks.len());
    assert!(leaks.is_empty(), "queries ran on a session the reset had not cleared:\n{}", leaks.join("\n"));
    assert!(skipped > 0 || !pool.get().await.unwrap().has_own_backend(), "no reset was stopped");
}

#[tokio::test]
async fn a_query_never_runs_on_a_session_whose_reset_its_statement_timeout_stopped() {
    a_stopped_reset(Some("5ms")).await;
}

#[tokio::test]
async fn a_query_never_runs_on_a_session_whose_reset_a_cancel_request_stopped() {
    a_stopped_reset(None).await;
}

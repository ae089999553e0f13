//! Scenarios of diesel-async's own integration tests (basic queries and nested
//! transactions, cancellation, custom types, instrumentation, serialization failures,
//! pooling), run against pgbatch's connection. Written anew for this connection; where it
//! differs from `AsyncPgConnection` by design, the test says so.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::InstrumentationEvent;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::{ExpressionMethods, IntoSql, OptionalExtension, QueryDsl};
use diesel_async::{AsyncConnection, AsyncConnectionCore, RunQueryDsl, SimpleAsyncConnection};
use pgbatch::Connection;

use crate::support::*;

diesel::table! {
    users (id) {
        id -> Int4,
        name -> Text,
    }
}

#[derive(diesel::Queryable, diesel::Selectable, Debug, PartialEq)]
#[diesel(table_name = users)]
struct User {
    id: i32,
    name: String,
}

/// A connection inside a test transaction with a temporary `users` table, as diesel-async's
/// suite sets one up.
async fn test_connection(s: &Setup) -> Connection {
    let mut conn = s.connection().await;
    conn.begin_test_transaction().await.unwrap();
    diesel::sql_query("CREATE TEMPORARY TABLE users (id serial PRIMARY KEY, name varchar NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn insert_load_and_nested_transactions() {
    let s = Setup::new().await;
    let conn = &mut test_connection(&s).await;
    for name in ["John Doe", "Jane Doe"] {
        assert_eq!(diesel::insert_into(users::table).values(users::name.eq(name)).execute(conn).await, Ok(1));
    }
    let loaded = users::table.order(users::id).load::<User>(conn).await.unwrap();
    assert_eq!(loaded.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["John Doe", "Jane Doe"]);

    let outcome = conn
        .transaction::<(), DieselError, _>(async |conn| {
            let missing: Option<User> = users::table.find(42).first(conn).await.optional()?;
            assert_eq!(missing, None);
            conn.transaction::<_, DieselError, _>(async |conn| {
                diesel::insert_into(users::table).values(users::name.eq("Dave")).execute(conn).await?;
                assert_eq!(users::table.count().get_result::<i64>(conn).await?, 3);
                Ok(())
            })
            .await?;
            assert_eq!(users::table.count().get_result::<i64>(conn).await?, 3);
            let inserted = diesel::insert_into(users::table).values(users::name.eq("Eve")).execute(conn).await?;
            assert_eq!(inserted, 1);
            assert_eq!(users::table.count().get_result::<i64>(conn).await?, 4);
            Err(DieselError::RollbackTransaction)
        })
        .await;
    assert_eq!(outcome, Err(DieselError::RollbackTransaction));
    assert_eq!(users::table.count().get_result::<i64>(conn).await.unwrap(), 2, "rolled back");
}

#[tokio::test]
async fn a_long_query_is_cancelled_by_its_token() {
    let s = Setup::new().await;
    let mut conn = s.connection().await;
    let token = conn.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query().await
    });
    let error = diesel::sql_query("SELECT pg_sleep(5)").execute(&mut conn).await.expect_err("cancelled");
    cancel.await.unwrap().expect("the cancel request");
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            assert_eq!(info.message(), "canceling statement due to user request");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(diesel::select(1.into_sql::<diesel::sql_types::Int4>()).get_result::<i32>(&mut conn).await, Ok(1));
}

#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "mood"))]
pub struct Mood;

#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "mood", schema = "elsewhere"))]
pub struct MoodElsewhere;

#[derive(Clone, Copy, Debug, PartialEq, FromSqlRow, AsExpression)]
#[diesel(sql_type = Mood)]
#[diesel(sql_type = MoodElsewhere)]
pub enum Feeling {
    Happy,
    Sad,
}

impl Feeling {
    fn label(self) -> &'static [u8] {
        match self {
            Feeling::Happy => b"happy",
            Feeling::Sad => b"sad",
        }
    }

    fn parse(bytes: &[u8]) -> deserialize::Result<Self> {
        match bytes {
            b"happy" => Ok(Feeling::Happy),
            b"sad" => Ok(Feeling::Sad),
            other => Err(format!("unknown mood {other:?}").into()),
        }
    }
}

impl ToSql<Mood, Pg> for Feeling {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        std::io::Write::write_all(out, self.label())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Mood, Pg> for Feeling {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Feeling::parse(bytes.as_bytes())
    }
}

impl ToSql<MoodElsewhere, Pg> for Feeling {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        std::io::Write::write_all(out, self.label())?;
        Ok(IsNull::No)
    }
}

impl FromSql<MoodElsewhere, Pg> for Feeling {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Feeling::parse(bytes.as_bytes())
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Mood;
    feelings (id) {
        id -> Int4,
        mood -> Mood,
    }
}

mod elsewhere_schema {
    diesel::table! {
        use diesel::sql_types::*;
        use super::super::MoodElsewhere;
        elsewhere.feelings (id) {
            id -> Int4,
            mood -> MoodElsewhere,
        }
    }
}

/// A custom enum created inside the test transaction, in binds, results and arrays, and
/// one in another schema.
#[tokio::test]
async fn custom_types_round_trip_in_binds_results_and_arrays() {
    let s = Setup::new().await;
    let conn = &mut test_connection(&s).await;
    conn.batch_execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad'); CREATE TABLE feelings (id int PRIMARY KEY, mood mood NOT NULL);
         CREATE SCHEMA elsewhere; CREATE TYPE elsewhere.mood AS ENUM ('happy', 'sad');
         CREATE TABLE elsewhere.feelings (id int PRIMARY KEY, mood elsewhere.mood NOT NULL)",
    )
    .await
    .unwrap();
    let moods = vec![Feeling::Happy, Feeling::Sad];
    // Arrays of a custom type carry its element OID inside the value, looked up too.
    let (selected, numbers): (Vec<Feeling>, Vec<Option<i32>>) = diesel::select((
        moods.clone().into_sql::<diesel::sql_types::Array<Mood>>(),
        vec![Some(0), None]
            .into_sql::<diesel::sql_types::Array<diesel::sql_types::Nullable<diesel::sql_types::Int4>>>(),
    ))
    .get_result(conn)
    .await
    .unwrap();
    assert_eq!((selected, numbers), (moods, vec![Some(0), None]));
    let inserted: Vec<(i32, Feeling)> = diesel::insert_into(feelings::table)
        .values(&[
            (feelings::id.eq(1), feelings::mood.eq(Feeling::Happy)),
            (feelings::id.eq(2), feelings::mood.eq(Feeling::Sad)),
        ])
        .get_results(conn)
        .await
        .unwrap();
    assert_eq!(inserted, [(1, Feeling::Happy), (2, Feeling::Sad)]);
    use elsewhere_schema::feelings as other;
    let elsewhere: (i32, Feeling) = diesel::insert_into(other::table)
        .values((other::id.eq(1), other::mood.eq(Feeling::Sad)))
        .get_result(conn)
        .await
        .unwrap();
    assert_eq!(elsewhere, (1, Feeling::Sad));
    // The same types in a batch on the same connection.
    let mut batch = pgbatch::Batch::new();
    let sad = batch.push(feelings::table.filter(feelings::mood.eq(Feeling::Sad)).select(feelings::id)).one::<i32>();
    assert_eq!(batch.run(&mut *conn).await.unwrap().get(&sad).unwrap(), 2);
}

/// What an instrumentation hears.
#[derive(Debug, PartialEq)]
enum Heard {
    Start(String),
    Cache(String),
    Finish { query: String, failed: bool },
    Begin(NonZeroU32),
    Commit(NonZeroU32),
    Rollback(NonZeroU32),
}

fn listen(conn: &mut Connection) -> Arc<Mutex<Vec<Heard>>> {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&heard);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        let heard = match event {
            InstrumentationEvent::StartQuery { query, .. } => Heard::Start(query.to_string()),
            InstrumentationEvent::CacheQuery { sql, .. } => Heard::Cache(sql.to_owned()),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                Heard::Finish { query: query.to_string(), failed: error.is_some() }
            }
            InstrumentationEvent::BeginTransaction { depth, .. } => Heard::Begin(depth),
            InstrumentationEvent::CommitTransaction { depth, .. } => Heard::Commit(depth),
            InstrumentationEvent::RollbackTransaction { depth, .. } => Heard::Rollback(depth),
            other => panic!("unexpected event {other:?}"),
        };
        sink.lock().unwrap().push(heard);
    });
    heard
}

fn depth(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Every query is heard starting and finishing, failures as failures; a query Diesel says
/// is worth caching is heard being cached (`CacheQuery`) the first time it runs on the
/// connection, between its start and finish, as on `AsyncPgConnection`; a `sql_query` never.
/// Behind a transaction-mode pooler the statement cache is off: no `CacheQuery`.
#[tokio::test]
async fn instrumentation_hears_every_query_and_transaction() {
    let s = Setup::new().await;
    let mut conn = test_connection(&s).await;
    let caches = conn.has_own_backend();
    let heard = listen(&mut conn);
    conn.batch_execute("select 1").await.unwrap();
    conn.execute_returning_count(diesel::sql_query("select 2")).await.unwrap();
    let _ = AsyncConnectionCore::load(&mut conn, users::table.select(users::id)).await.unwrap();
    let _ = AsyncConnectionCore::load(&mut conn, users::table.select(users::id)).await.unwrap();
    let _ = conn.execute_returning_count(diesel::sql_query("invalid")).await;
    let mut events = std::mem::take(&mut *heard.lock().unwrap());
    if caches {
        assert!(matches!(&events[5], Heard::Cache(sql) if sql.contains("users")), "{events:?}");
        events.remove(5);
    }
    assert_eq!(events.len(), 10, "the repeated query is not cached again: {events:?}");
    assert!(!events.iter().any(|event| matches!(event, Heard::Cache(_))), "{events:?}");
    assert_eq!(events[0], Heard::Start("select 1".into()));
    assert_eq!(events[1], Heard::Finish { query: "select 1".into(), failed: false });
    assert_eq!(events[3], Heard::Finish { query: "select 2".into(), failed: false });
    assert!(matches!(&events[4], Heard::Start(sql) if sql.contains("users")), "{events:?}");
    assert!(matches!(&events[6], Heard::Start(sql) if sql.contains("users")), "{events:?}");
    assert_eq!(events[9], Heard::Finish { query: "invalid".into(), failed: true });

    // The test transaction is depth 1; `invalid` aborted it, so roll back to a clean one.
    let mut conn = test_connection(&s).await;
    let heard = listen(&mut conn);
    conn.transaction::<_, DieselError, _>(async |conn| {
        conn.transaction::<_, DieselError, _>(async |_| Ok(())).await?;
        Ok(())
    })
    .await
    .unwrap();
    let _ = conn.transaction::<(), _, _>(async |_| Err(DieselError::RollbackTransaction)).await;
    let events = std::mem::take(&mut *heard.lock().unwrap());
    let transactions: Vec<&Heard> =
        events.iter().filter(|e| matches!(e, Heard::Begin(_) | Heard::Commit(_) | Heard::Rollback(_))).collect();
    assert_eq!(
        transactions,
        [
            &Heard::Begin(depth(2)),
            &Heard::Begin(depth(3)),
            &Heard::Commit(depth(3)),
            &Heard::Commit(depth(2)),
            &Heard::Begin(depth(2)),
            &Heard::Rollback(depth(2)),
        ]
    );
    assert_eq!(events.len(), 6 * 3, "each transaction statement is a query heard twice: {events:?}");
}

/// Reads, waits for the other transaction to read too, then writes, serializably.
async fn read_then_write(conn: &mut Connection, barrier: Arc<tokio::sync::Barrier>) -> Result<(), DieselError> {
    conn.transaction::<_, DieselError, _>(async move |conn| {
        conn.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").await?;
        diesel::sql_query("SELECT * FROM ids").execute(conn).await?;
        barrier.wait().await;
        diesel::sql_query("INSERT INTO ids VALUES (1)").execute(conn).await?;
        Ok(())
    })
    .await
}

/// Two serializable transactions that read and then write the same rows: one fails with
/// diesel's `SerializationFailure`, the other commits.
#[tokio::test]
async fn concurrent_serializable_transactions_fail_with_serialization_failure() {
    let s = Setup::new().await;
    pgbatch_testing::TestDatabase::execute(&s.db, "CREATE TABLE ids (id int)").await.unwrap();
    let (mut first, mut second) = (s.connection().await, s.connection().await);
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (a, b) = tokio::join!(read_then_write(&mut first, Arc::clone(&barrier)), read_then_write(&mut second, barrier));
    let failures: Vec<DieselError> = [a, b].into_iter().filter_map(Result::err).collect();
    assert_eq!(failures.len(), 1, "one of them fails: {failures:?}");
    assert!(
        matches!(failures[0], DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)),
        "{:?}",
        failures[0]
    );
    // Both connections, the failed one's included, run a transaction again.
    for conn in [&mut first, &mut second] {
        conn.transaction::<_, DieselError, _>(async |_| Ok(())).await.expect("a transaction after the failure");
    }
}

/// diesel-async's own pool manager works with pgbatch's connection too, and so does
/// pgbatch's: both lend out connections that run queries and batches.
#[tokio::test]
async fn both_pool_managers_lend_working_connections() {
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    let s = Setup::new().await;
    let theirs = bb8::Pool::builder()
        .max_size(2)
        .build(AsyncDieselConnectionManager::<Connection>::new(s.db.url()))
        .await
        .unwrap();
    let ours = s.pool(2).await;
    {
        let mut conn = theirs.get().await.unwrap();
        insert(&mut conn, "theirs").await.unwrap();
        notes(&["theirs batch"]).run(&mut *conn).await.unwrap();
    }
    {
        let mut conn = ours.get().await.unwrap();
        insert(&mut conn, "ours").await.unwrap();
        notes(&["ours batch"]).run(&mut conn).await.unwrap();
    }
    for body in ["theirs", "theirs batch", "ours", "ours batch"] {
        assert_eq!(s.seen(body).await, 1, "{body}");
    }
}

//! Where code written for `AsyncPgConnection` must behave the same on pgbatch's connection:
//! `save_changes` (on the connection, a pool of it, and diesel-async's own pool managers)
//! and a serialization failure inside a transaction, side by side with `AsyncPgConnection`.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, RunQueryDsl, SaveChangesDsl, TransactionManager,
};
use pgbatch::Connection;

use crate::support::{Setup, note};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, AsChangeset)]
#[diesel(table_name = note, check_for_backend(diesel::pg::Pg))]
struct Note {
    id: i64,
    body: String,
}

async fn insert_note(conn: &mut Connection, body: &str) -> Note {
    diesel::insert_into(note::table)
        .values(note::body.eq(body))
        .returning(Note::as_returning())
        .get_result(conn)
        .await
        .expect("a note")
}

/// `save_changes` through `$conn` (any connection type that has it): the changed row comes
/// back as the server has it, and is committed.
macro_rules! save_changes_on {
    ($s:expr, $conn:expr, $body:expr) => {{
        let conn = $conn;
        let mut inserted = insert_note(&mut *conn, $body).await;
        inserted.body = format!("{} (changed)", $body);
        let saved: Note = (&inserted).save_changes(&mut *conn).await.expect("save_changes");
        assert_eq!(saved, inserted, "the row as the server has it after the update");
        assert_eq!($s.seen(&inserted.body).await, 1, "committed: another session sees it");
    }};
}

#[tokio::test]
async fn save_changes_works_on_the_connection_and_every_pool_of_it() {
    let s = Setup::new().await;
    let mut bare = s.connection().await;
    save_changes_on!(s, &mut bare, "bare");

    let pool = s.pool(1).await;
    save_changes_on!(s, &mut pool.get().await.unwrap(), "pgbatch pool");

    let bb8 = diesel_async::pooled_connection::bb8::Pool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::<Connection>::new(s.db.url()))
        .await
        .unwrap();
    save_changes_on!(s, &mut bb8.get().await.unwrap(), "diesel-async bb8");

    let deadpool = diesel_async::pooled_connection::deadpool::Pool::builder(
        AsyncDieselConnectionManager::<Connection>::new(s.db.url()),
    )
    .max_size(1)
    .build()
    .unwrap();
    save_changes_on!(s, &mut deadpool.get().await.unwrap(), "diesel-async deadpool");

    let mobc = diesel_async::pooled_connection::mobc::Pool::builder()
        .max_open(1)
        .build(AsyncDieselConnectionManager::<Connection>::new(s.db.url()));
    save_changes_on!(s, &mut mobc.get().await.unwrap(), "diesel-async mobc");
}

/// What a transaction whose inner (savepoint) transaction met a serialization failure left,
/// on either connection.
#[derive(Debug, PartialEq)]
struct AfterSerializationFailure {
    inner_error: Option<DatabaseErrorKind>,
    requires_rollback_to_top_level: bool,
    outer: Result<(), String>,
    committed_bodies: Vec<String>,
}

/// Outer transaction: a note; inner transaction: a note, then a statement that fails with
/// `40001`; then, back in the outer one, the transaction manager's state and one more note.
async fn serialization_failure_inside<C>(conn: &mut C, s: &Setup, tag: &str) -> AfterSerializationFailure
where
    C: AsyncConnection<Backend = diesel::pg::Pg, TransactionManager = AnsiTransactionManager> + Send,
{
    let mut inner_error = None;
    let mut requires_rollback_to_top_level = false;
    let outer = conn
        .transaction::<_, DieselError, _>(async |conn| {
            diesel::insert_into(note::table).values(note::body.eq(format!("{tag} outer 1"))).execute(conn).await?;
            let inner = conn
                .transaction::<(), DieselError, _>(async |conn| {
                    diesel::insert_into(note::table)
                        .values(note::body.eq(format!("{tag} inner")))
                        .execute(conn)
                        .await?;
                    diesel::sql_query("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
                .await;
            if let Err(DieselError::DatabaseError(kind, _)) = &inner {
                inner_error = Some(*kind);
            }
            requires_rollback_to_top_level = AnsiTransactionManager::transaction_manager_status_mut(conn)
                .transaction_state()
                .ok()
                .and_then(|state| state.in_transaction.as_ref())
                .is_some_and(|open| open.requires_rollback_maybe_up_to_top_level);
            diesel::insert_into(note::table).values(note::body.eq(format!("{tag} outer 2"))).execute(conn).await?;
            Ok(())
        })
        .await
        .map_err(|error| error.to_string());
    let committed_bodies = pgbatch_testing::query_rows(
        &s.outside,
        &format!("SELECT body FROM note WHERE body LIKE '{tag} %' ORDER BY body"),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.into_iter().next().flatten().unwrap_or_default())
    .collect();
    AfterSerializationFailure { inner_error, requires_rollback_to_top_level, outer, committed_bodies }
}

#[tokio::test]
async fn a_serialization_failure_inside_a_transaction_is_handled_as_on_async_pg_connection() {
    let s = Setup::new().await;
    let mut theirs = AsyncPgConnection::establish(&s.db.url()).await.expect("an AsyncPgConnection");
    let mut ours = s.connection().await;
    let on_theirs = serialization_failure_inside(&mut theirs, &s, "theirs").await;
    let on_ours = serialization_failure_inside(&mut ours, &s, "ours").await;
    assert_eq!(on_theirs.inner_error, Some(DatabaseErrorKind::SerializationFailure), "{on_theirs:?}");
    assert!(on_theirs.requires_rollback_to_top_level, "AsyncPgConnection marks it: {on_theirs:?}");
    let renamed: Vec<String> = on_theirs.committed_bodies.iter().map(|b| b.replacen("theirs", "ours", 1)).collect();
    assert_eq!(
        (on_ours.inner_error, on_ours.requires_rollback_to_top_level, &on_ours.outer, &on_ours.committed_bodies),
        (on_theirs.inner_error, on_theirs.requires_rollback_to_top_level, &on_theirs.outer, &renamed),
        "pgbatch {on_ours:?} against AsyncPgConnection {on_theirs:?}"
    );
}

/// diesel-async's pooling scenario, through each pool manager: the holder of a checkout
/// creates a temporary table, inserts into it and loads from it with its next queries, and
/// changes a row with `save_changes`; the next holder of the same connection finds no trace
/// of it (its `note` is the real table again).
macro_rules! pooling_scenario_on {
    ($pool:expr, $name:expr) => {{
        {
            let mut conn = $pool.get().await.unwrap();
            diesel::sql_query("CREATE TEMPORARY TABLE note (id bigserial PRIMARY KEY, body text NOT NULL)")
                .execute(&mut *conn)
                .await
                .expect("a temporary table on the checkout");
            diesel::insert_into(note::table).values(note::body.eq("John")).execute(&mut *conn).await.expect("insert");
            let mut first: Note = note::table.first(&mut *conn).await.expect("the holder's next query sees it");
            assert_eq!(first.body, "John", "{}", $name);
            first.body = "Jane".into();
            let saved: Note = (&first).save_changes(&mut *conn).await.expect("save_changes");
            assert_eq!(saved.body, "Jane", "{}", $name);
        }
        let mut next = $pool.get().await.unwrap();
        let temporary: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())",
        ))
        .get_result(&mut *next)
        .await
        .unwrap();
        assert_eq!(temporary, 0, "{}: the next holder sees no temporary table", $name);
    }};
}

#[tokio::test]
async fn the_pooling_scenario_keeps_a_temporary_table_for_its_holder_through_every_manager() {
    let s = Setup::new().await;
    let behind_pooler = !s.connection().await.has_own_backend();
    if behind_pooler {
        // Behind a transaction-mode pooler a holder keeps only what lives inside one
        // transaction: the temporary table is gone by the next query (documented).
        eprintln!("behind a pooler: the scenario needs a session of its own; not run");
        return;
    }
    let manager = || AsyncDieselConnectionManager::<Connection>::new(s.db.url());
    let pgbatch_pool = s.pool(1).await;
    pooling_scenario_on!(pgbatch_pool, "pgbatch's bb8 pool");
    let bb8 = diesel_async::pooled_connection::bb8::Pool::builder().max_size(1).build(manager()).await.unwrap();
    pooling_scenario_on!(bb8, "diesel-async bb8");
    let deadpool = diesel_async::pooled_connection::deadpool::Pool::builder(manager()).max_size(1).build().unwrap();
    pooling_scenario_on!(deadpool, "diesel-async deadpool");
    let mobc = diesel_async::pooled_connection::mobc::Pool::builder().max_open(1).build(manager());
    pooling_scenario_on!(mobc, "diesel-async mobc");
}

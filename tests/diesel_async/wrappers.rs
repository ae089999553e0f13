//! diesel-async's blocking wrapper and migration harness on pgbatch's connection: code that
//! uses Diesel's synchronous API (`diesel::RunQueryDsl`, `diesel::Connection::transaction`)
//! through `AsyncConnectionWrapper` on a blocking thread of a runtime (`spawn_blocking`), and
//! migrations run through `AsyncMigrationHarness` on a connection and on pooled ones.
//!
//! Outside any runtime the wrapper builds one with I/O only, and pgbatch's deadlines (the
//! connect timeout among them) need Tokio's timers: docs/diesel-async.md says to run it on a
//! runtime built with `enable_all`.

use diesel::migration::MigrationVersion;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncMigrationHarness};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use pgbatch::Connection;

use crate::support::{Setup, note};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/diesel_async/migrations");

/// Through Diesel's blocking API: a write, a read, and a transaction that rolls back.
fn blocking_work(url: &str, body: &str) {
    let mut conn =
        <AsyncConnectionWrapper<Connection> as diesel::Connection>::establish(url).expect("the wrapper connects");
    let inserted = diesel::insert_into(note::table).values(note::body.eq(body)).execute(&mut conn).unwrap();
    assert_eq!(inserted, 1);
    let bodies: Vec<String> = note::table.select(note::body).filter(note::body.eq(body)).load(&mut conn).unwrap();
    assert_eq!(bodies, [body]);
    let rolled_back = diesel::Connection::transaction::<(), DieselError, _>(&mut conn, |conn| {
        diesel::insert_into(note::table).values(note::body.eq(format!("{body} undone"))).execute(conn)?;
        Err(DieselError::RollbackTransaction)
    });
    assert_eq!(rolled_back, Err(DieselError::RollbackTransaction));
    let count: i64 = note::table.count().get_result(&mut conn).unwrap();
    assert_eq!(count, 1, "the rolled-back insert is gone");
}

/// Inside a runtime, on a blocking thread: the wrapper uses the runtime it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_wrapper_works_under_spawn_blocking() {
    let s = Setup::new().await;
    let url = s.db.url();
    tokio::task::spawn_blocking(move || blocking_work(&url, "blocking")).await.expect("the blocking caller");
    assert_eq!(s.seen("blocking").await, 1);
}

/// A connection made asynchronously and wrapped still answers diesel-async's queries.
#[tokio::test]
async fn a_wrapped_connection_still_answers_async_queries() {
    let s = Setup::new().await;
    let mut conn = AsyncConnectionWrapper::<Connection>::from(s.connection().await);
    let one = diesel::select(1.into_sql::<diesel::sql_types::Integer>());
    let answer: i32 = diesel_async::RunQueryDsl::get_result(one, &mut conn).await.unwrap();
    assert_eq!(answer, 1);
}

/// The migration in `tests/diesel_async/migrations`.
const VERSION: &str = "20260101000000";

fn versions(applied: &[MigrationVersion<'_>]) -> Vec<String> {
    applied.iter().map(ToString::to_string).collect()
}

async fn tag_table_exists(s: &Setup) -> bool {
    pgbatch_testing::count(&s.outside, "SELECT count(*) FROM pg_tables WHERE tablename = 'tag'").await == 1
}

/// Migrations run, are listed as applied, and revert, through `AsyncMigrationHarness` on a
/// bare connection, on a pooled connection of diesel-async's deadpool manager, and on one of
/// pgbatch's own pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_and_revert_through_the_async_migration_harness() {
    let s = Setup::new().await;
    let mut harness = AsyncMigrationHarness::from(s.connection().await);
    let applied = harness.run_pending_migrations(MIGRATIONS).expect("the migrations run");
    assert_eq!(versions(&applied), [VERSION]);
    assert!(tag_table_exists(&s).await, "committed: another session sees the table");
    assert_eq!(versions(&harness.applied_migrations().unwrap()), [VERSION]);
    assert!(!harness.has_pending_migration(MIGRATIONS).unwrap());
    // The connection comes back out, usable.
    let mut conn = harness.into_inner();
    let count = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM tag)"));
    let tags: i64 = diesel_async::RunQueryDsl::get_result(count, &mut conn).await.unwrap();
    assert_eq!(tags, 0);

    let manager = AsyncDieselConnectionManager::<Connection>::new(s.db.url());
    let deadpool = diesel_async::pooled_connection::deadpool::Pool::builder(manager).max_size(1).build().unwrap();
    let mut harness = AsyncMigrationHarness::from(deadpool.get().await.unwrap());
    assert_eq!(versions(&harness.applied_migrations().unwrap()), [VERSION]);
    assert_eq!(harness.revert_last_migration(MIGRATIONS).unwrap().to_string(), VERSION);
    assert!(!tag_table_exists(&s).await, "reverted: the table is gone");

    let pool = s.pool(1).await;
    let mut harness = AsyncMigrationHarness::from(pool.get_owned().await.unwrap());
    assert!(harness.has_pending_migration(MIGRATIONS).unwrap());
    harness.run_pending_migrations(MIGRATIONS).expect("the migrations run again");
    assert!(tag_table_exists(&s).await);
}

/// A migration that fails is rolled back whole and reported, the harness's connection
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_is_rolled_back_and_reported() {
    let s = Setup::new().await;
    // The table the migration creates exists already: its `CREATE TABLE` fails.
    s.db.execute("CREATE TABLE tag (id int)").await.unwrap();
    let mut harness = AsyncMigrationHarness::from(s.connection().await);
    let error = harness.run_pending_migrations(MIGRATIONS).expect_err("the migration fails");
    assert!(error.to_string().contains("already exists"), "the server's reason: {error}");
    assert!(harness.applied_migrations().unwrap().is_empty(), "not recorded as applied");
    let mut conn = harness.into_inner();
    assert!(conn.begin_test_transaction().await.is_ok(), "the connection goes on");
}

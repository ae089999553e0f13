//! The service's integration tests, as a service using pgbatch writes them: each test gets
//! a database of its own (dropped afterwards, also when the test fails), the service's
//! Diesel migrations applied, and a pool; no environment is needed where PostgreSQL is
//! installed (see `pgbatch_testing`'s docs for how it finds or starts a server).

use pgbatch_testing::{TestDatabase, query_value};
use quota_service::{CreateProjectError, create_project, list_projects, projects_left};

/// A database with the service's schema and one tenant allowed `max` projects.
async fn service_database(max: i64) -> (TestDatabase, pgbatch::Pool) {
    // The migrations run once per test process, into a template each test's database copies.
    let (db, applied) =
        TestDatabase::create_migrated(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).await.expect("migrations");
    assert_eq!(applied, ["20260101000000"]);
    db.execute(&format!("INSERT INTO quota (tenant, projects_max) VALUES ('acme', {max})")).await.unwrap();
    let pool = db.pool(4).await.expect("a pool");
    (db, pool)
}

async fn value(db: &TestDatabase, sql: &str) -> String {
    query_value(&db.connect().await.unwrap(), sql).await.unwrap().unwrap_or_default()
}

#[tokio::test]
async fn a_project_is_created_and_counted_together() {
    let (db, pool) = service_database(2).await;
    let id = create_project(&pool, "acme", "web").await.unwrap();
    assert_eq!(value(&db, &format!("SELECT name FROM project WHERE id = '{id}'")).await, "web");
    assert_eq!(value(&db, "SELECT projects_used FROM quota WHERE tenant = 'acme'").await, "1");
}

#[tokio::test]
async fn an_exhausted_quota_creates_nothing() {
    let (db, pool) = service_database(1).await;
    create_project(&pool, "acme", "web").await.unwrap();
    let error = create_project(&pool, "acme", "db").await.unwrap_err();
    assert!(matches!(error, CreateProjectError::QuotaExhausted(ref tenant) if tenant == "acme"), "{error}");
    assert_eq!(value(&db, "SELECT count(*) FROM project").await, "1");
    assert_eq!(value(&db, "SELECT projects_used FROM quota").await, "1");
}

#[tokio::test]
async fn a_taken_name_is_not_counted() {
    let (db, pool) = service_database(5).await;
    create_project(&pool, "acme", "web").await.unwrap();
    let error = create_project(&pool, "acme", "web").await.unwrap_err();
    assert!(matches!(error, CreateProjectError::NameTaken { .. }), "{error}");
    // The quota was counted by the batch's first statement, then rolled back with it.
    assert_eq!(value(&db, "SELECT projects_used FROM quota").await, "1");
}

#[tokio::test]
async fn the_migrations_are_recorded_for_the_diesel_cli() {
    let (db, _pool) = service_database(1).await;
    assert_eq!(value(&db, "SELECT string_agg(version, ',') FROM __diesel_schema_migrations").await, "20260101000000");
}

/// Reads (diesel-async queries) and writes (batches) share one pool: here one connection.
#[tokio::test]
async fn reads_and_writes_share_one_pool_of_one_connection() {
    let (db, _) =
        TestDatabase::create_migrated(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).await.expect("migrations");
    db.execute("INSERT INTO quota (tenant, projects_max) VALUES ('acme', 3)").await.unwrap();
    let pool = db.pool(1).await.expect("a pool of one");
    assert_eq!(projects_left(&pool, "acme").await.unwrap(), 3);
    let web = create_project(&pool, "acme", "web").await.unwrap();
    let api = create_project(&pool, "acme", "api").await.unwrap();
    assert_eq!(list_projects(&pool, "acme").await.unwrap(), [(api, "api".to_owned()), (web, "web".to_owned())]);
    assert_eq!(projects_left(&pool, "acme").await.unwrap(), 1);
    let unknown = projects_left(&pool, "nobody").await.unwrap_err();
    assert!(matches!(unknown, quota_service::ReadError::Query(diesel::result::Error::NotFound)), "{unknown}");
}

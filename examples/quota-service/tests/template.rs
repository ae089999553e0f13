//! The migrations template (`TestDatabase::create_migrated`), in a test process of its own
//! and one test, so that it can count every database the process made.

use pgbatch_testing::{MigratedError, SchemaError, TestDatabase, count};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

/// Quotas in `db`.
async fn seen(db: &TestDatabase) -> i64 {
    count(&db.connect().await.unwrap(), "SELECT count(*) FROM quota").await
}

/// This process's databases on the server, templates included.
async fn databases_of_this_process(db: &TestDatabase) -> i64 {
    let pattern = format!("pgbatch\\_test\\_{}\\_%", std::process::id());
    count(&db.connect().await.unwrap(), &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{pattern}'"))
        .await
}

#[tokio::test]
async fn clones_are_independent_the_template_goes_with_the_last_one_and_bad_input_is_named() {
    bad_input_names_the_path_and_the_cause().await;
    let (first, versions) = TestDatabase::create_migrated(MIGRATIONS).await.unwrap();
    let (second, again) = TestDatabase::create_migrated(MIGRATIONS).await.unwrap();
    assert_eq!(versions, ["20260101000000"]);
    assert_eq!(again, versions, "the template's versions, without running the migrations again");
    first.execute("INSERT INTO quota (tenant, projects_max) VALUES ('only-in-first', 1)").await.unwrap();
    assert_eq!((seen(&first).await, seen(&second).await), (1, 0), "each test has a database of its own");
    assert_eq!(
        count(&second.connect().await.unwrap(), "SELECT count(*) FROM __diesel_schema_migrations").await,
        1,
        "the migrations' record is copied too"
    );
    let witness = TestDatabase::create().await.unwrap();
    assert_eq!(databases_of_this_process(&witness).await, 4, "two clones, the template, the witness");
    drop(first);
    assert_eq!(databases_of_this_process(&witness).await, 3, "the template stays while a clone lives");
    drop(second);
    assert_eq!(databases_of_this_process(&witness).await, 1, "the template went with the last clone");
    let (third, _) = TestDatabase::create_migrated(MIGRATIONS).await.expect("a new template when needed");
    assert_eq!(seen(&third).await, 0);
}

/// A missing folder, and a migration that fails, each name the path and the cause; neither
/// leaves a database behind.
async fn bad_input_names_the_path_and_the_cause() {
    let missing = TestDatabase::create_migrated("no/such/migrations").await.unwrap_err();
    assert!(matches!(&missing, MigratedError::Schema(SchemaError::Read { .. })), "{missing}");
    assert!(missing.to_string().contains("no/such/migrations"), "{missing}");

    let dir = std::env::temp_dir().join(format!("quota-service-broken-{}", std::process::id()));
    let broken = dir.join("2026-02-02-000000_broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("up.sql"), "CREATE TABLE ok (id int);\nCREATE TABEL typo (id int);").unwrap();
    let failed = TestDatabase::create_migrated(&dir).await.unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let message = failed.to_string();
    assert!(matches!(&failed, MigratedError::Schema(SchemaError::Sql { .. })), "{message}");
    assert!(message.contains("2026-02-02-000000_broken/up.sql") && message.contains("TABEL"), "{message}");
}

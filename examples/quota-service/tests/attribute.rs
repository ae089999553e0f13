//! The service's tests written with `#[pgbatch_testing::test]`: a database per test with
//! the migrations and fixtures applied, and the argument the test asks for.

use pgbatch_testing::{TestDatabase, query_value};
use quota_service::{CreateProjectError, create_project, projects_left};

#[pgbatch_testing::test(migrations = "migrations", fixtures("tenants"))]
async fn the_fixtures_tenants_can_create_their_quota_of_projects(pool: pgbatch::Pool) {
    assert_eq!(projects_left(&pool, "acme").await.unwrap(), 2);
    create_project(&pool, "solo", "only").await.unwrap();
    let error = create_project(&pool, "solo", "second").await.unwrap_err();
    assert!(matches!(error, CreateProjectError::QuotaExhausted(_)), "{error}");
}

#[pgbatch_testing::test(migrations = "migrations")]
async fn each_test_has_a_database_of_its_own(db: &TestDatabase) {
    let client = db.connect().await.unwrap();
    assert_eq!(query_value(&client, "SELECT count(*) FROM quota").await.unwrap().as_deref(), Some("0"));
}

#[pgbatch_testing::test(migrations = "migrations", fixtures("tenants"))]
async fn a_connection_argument(mut connection: pgbatch::Connection) {
    let mut batch = pgbatch::Batch::new();
    let left = batch
        .push(diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM quota)")))
        .one::<i64>();
    assert_eq!(batch.run(&mut connection).await.unwrap().get(&left).unwrap(), 2);
}

#[pgbatch_testing::test(migrations = "no/such/migrations")]
#[should_panic(expected = "no/such/migrations")]
async fn a_missing_migrations_folder_fails_naming_it() {}

#[pgbatch_testing::test(migrations = "migrations", fixtures("broken"))]
#[should_panic(expected = "tests/fixtures/broken.sql")]
async fn a_fixture_with_an_sql_error_fails_naming_the_file() {}

/// Passes, unless the test below runs it with `QUOTA_FAIL_ON_PURPOSE` set: then it writes
/// a row and fails.
#[pgbatch_testing::test(migrations = "migrations")]
async fn fails_on_purpose_when_asked(db: &TestDatabase) {
    if std::env::var_os("QUOTA_FAIL_ON_PURPOSE").is_some() {
        db.execute("INSERT INTO quota (tenant, projects_max) VALUES ('kept', 1)").await.unwrap();
        panic!("failing on purpose");
    }
}

/// With `PGBATCH_KEEP_FAILED` set, a failed test's database stays (with the server it is
/// on, when the test process started that server), and the test says how to connect to it;
/// without it, it is dropped.
#[tokio::test]
async fn a_failed_tests_database_is_kept_when_asked_and_only_then() {
    let run = |keep: bool| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command.args(["--exact", "fails_on_purpose_when_asked", "--nocapture"]).env("QUOTA_FAIL_ON_PURPOSE", "1");
        if keep {
            command.env("PGBATCH_KEEP_FAILED", "1");
        }
        command.output().expect("the test binary runs")
    };
    let kept = tokio::task::spawn_blocking(move || run(true)).await.unwrap();
    assert!(!kept.status.success(), "the test failed on purpose");
    let stderr = String::from_utf8_lossy(&kept.stderr).into_owned();
    let url =
        stderr.split("psql '").nth(1).and_then(|rest| rest.split('\'').next()).unwrap_or_else(|| panic!("{stderr}"));
    let config: tokio_postgres::Config = url.parse().unwrap();
    let name = config.get_dbname().unwrap().to_owned();
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("the kept database");
    tokio::spawn(connection);
    assert_eq!(query_value(&client, "SELECT tenant FROM quota").await.unwrap().as_deref(), Some("kept"));
    drop(client);
    // Clean up what was kept on purpose, from another database.
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (admin, connection) = admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    admin.batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await.unwrap();
    // A server the failed test's process started (a container, a private cluster) was kept
    // with the database; the message says how to remove it.
    if let Some(removal) = stderr.split("remove it with: ").nth(1).and_then(|rest| rest.lines().next()) {
        let removed = std::process::Command::new("sh").args(["-c", removal]).status().expect("sh runs");
        assert!(removed.success(), "{removal}");
    }

    let dropped = tokio::task::spawn_blocking(move || run(false)).await.unwrap();
    assert!(!dropped.status.success());
    assert!(!String::from_utf8_lossy(&dropped.stderr).contains("is kept"), "not kept without the variable");
}

/// A forced server source that cannot be had fails the test with a message that names the
/// setting and the cause, never falls back to another server.
#[tokio::test]
async fn a_bad_server_setting_fails_naming_the_setting() {
    let run = |server: &'static str, image: &'static str| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "each_test_has_a_database_of_its_own", "--nocapture"])
            .env("PGBATCH_TEST_SERVER", server)
            .env("PGBATCH_TEST_IMAGE", image);
        let output = command.output().expect("the test binary runs");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (passed, stderr) = tokio::task::spawn_blocking(move || run("bogus", "")).await.unwrap();
    assert!(!passed && stderr.contains("PGBATCH_TEST_SERVER=\"bogus\" is not a server source"), "{stderr}");
    let missing = "pgbatch/no-such-image:0";
    let (passed, stderr) = tokio::task::spawn_blocking(move || run("container", missing)).await.unwrap();
    assert!(!passed && stderr.contains("could not start a container of the image pgbatch/no-such-image:0"), "{stderr}");
}

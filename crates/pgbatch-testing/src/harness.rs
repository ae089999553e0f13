//! What `#[pgbatch_testing::test]` runs around a test: a database of its own (migrations
//! from a per-process template, then fixture files), a pool or a connection, a share of the
//! process's connection budget, and the database kept for inspection when the test fails
//! and `PGBATCH_KEEP_FAILED` is set.

use std::sync::OnceLock;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::TestDatabase;

/// The connections a test holds at most: its pool and the harness's own.
const CONNECTIONS_PER_TEST: u32 = 4;

/// The connections the tests of one process may hold at once, unless
/// `PGBATCH_TEST_CONNECTIONS` says otherwise: well under PostgreSQL's default
/// `max_connections` (100), so that `cargo test`'s threads cannot exhaust it.
const DEFAULT_BUDGET: u32 = 40;

/// Set to keep a failed test's database (and print how to connect to it).
const KEEP_FAILED: &str = "PGBATCH_KEEP_FAILED";

fn budget() -> std::sync::Arc<Semaphore> {
    static BUDGET: OnceLock<std::sync::Arc<Semaphore>> = OnceLock::new();
    BUDGET
        .get_or_init(|| {
            let connections = std::env::var("PGBATCH_TEST_CONNECTIONS")
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(DEFAULT_BUDGET)
                .max(CONNECTIONS_PER_TEST);
            std::sync::Arc::new(Semaphore::new(connections as usize))
        })
        .clone()
}

/// What a test asks for: written by `#[pgbatch_testing::test]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct TestSetup {
    /// The test's path, for messages.
    pub test: &'static str,
    /// The migrations directory, if any.
    pub migrations: Option<&'static str>,
    /// Fixture files, run in order after the migrations.
    pub fixtures: &'static [&'static str],
}

/// A test's database and its share of the connection budget, for the length of the test.
#[doc(hidden)]
#[derive(Debug)]
pub struct TestHarness {
    db: Option<TestDatabase>,
    test: &'static str,
    _budget: OwnedSemaphorePermit,
}

impl TestHarness {
    /// Makes the test's database. Fails the test with a message that names the server, the
    /// folder or the file, and the cause, when it cannot.
    pub async fn start(setup: TestSetup) -> TestHarness {
        let permit = budget().acquire_many_owned(CONNECTIONS_PER_TEST).await.expect("the budget is never closed");
        let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
            panic!("{}: {what}: {error}", setup.test);
        };
        let db = match setup.migrations {
            Some(dir) => match TestDatabase::create_migrated(dir).await {
                Ok((db, _)) => db,
                Err(error) => fail("could not set up the test database", &error),
            },
            None => TestDatabase::create().await.unwrap_or_else(|error| fail("no test database", &error)),
        };
        if let Err(error) = db.run_sql_files(setup.fixtures.iter().copied()).await {
            fail("a fixture failed", &error);
        }
        TestHarness { db: Some(db), test: setup.test, _budget: permit }
    }

    /// The test's database.
    pub fn database(&self) -> &TestDatabase {
        self.db.as_ref().expect("present until drop")
    }

    /// A pool on the test's database, of the connections the test's budget allows.
    pub async fn pool(&self) -> pgbatch::Pool {
        let size = CONNECTIONS_PER_TEST - 1;
        self.database().pool(size).await.unwrap_or_else(|error| panic!("{}: no pool: {error}", self.test))
    }

    /// A connection to the test's database.
    pub async fn connection(&self) -> pgbatch::Connection {
        pgbatch::Connection::connect_with(&self.database().connection_config())
            .await
            .unwrap_or_else(|error| panic!("{}: no connection: {error}", self.test))
    }
}

impl Drop for TestHarness {
    fn drop(&mut self) {
        if std::thread::panicking()
            && std::env::var_os(KEEP_FAILED).is_some()
            && let Some(db) = self.db.take()
        {
            let url = db.url();
            let name = db.into_name();
            let server = crate::database::keep_server()
                .map(|removal| {
                    format!("\npgbatch-testing: the test server it is on keeps running too; remove it with: {removal}")
                })
                .unwrap_or_default();
            eprintln!(
                "pgbatch-testing: {} failed; its database {name} is kept ({KEEP_FAILED} is set): psql '{url}'{server}",
                self.test
            );
        }
    }
}

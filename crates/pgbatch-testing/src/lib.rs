//! Test support for code that uses pgbatch: a fresh PostgreSQL database per test, with a
//! schema and a pool ready, and a TCP proxy that delays traffic or cuts connections at
//! chosen moments.
//!
//! # A service's integration test
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use pgbatch_testing::{TestDatabase, query_value};
//!
//! // Dropped (with its data) after the test. The migrations run once per process, into a
//! // template database that each test's database copies; the template goes with the last
//! // copy. (`TestDatabase::create` and `run_migrations` / `run_sql_files` do it by hand.)
//! let (db, _versions) = TestDatabase::create_migrated(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).await?;
//! let pool = db.pool(4).await?; // pgbatch::Pool
//! // ... run the code under test with `pool`, then look at what it left:
//! let client = db.connect().await?;
//! let count = query_value(&client, "SELECT count(*) FROM project").await?;
//! # Ok(()) }
//! ```
//!
//! `query_value` and `query_rows` use simple queries, so the same checks also run through a
//! transaction-pooling PgBouncer (`DATABASE_URL` pointing at it); a plain tokio-postgres
//! `query` prepares a named statement, which PgBouncer 1.18 may route elsewhere.
//!
//! # Finding PostgreSQL
//!
//! [`TestDatabase::create`] looks for a server in this order:
//!
//! 1. `DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/postgres`), read as
//!    pgbatch reads a URL: `sslmode` up to `verify-full` and `sslrootcert` work for the
//!    harness's own connections (creating and dropping databases, migrations,
//!    [`TestDatabase::connect`]) as for the pool ([`TestDatabase::connection_config`]);
//! 2. the libpq variables `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, when
//!    `PGHOST` is set;
//! 3. a server on PostgreSQL's standard address, `127.0.0.1:5432`, that lets the user
//!    `postgres` in without a password (a local install with trust authentication);
//! 4. a private cluster ([`LocalCluster`]) started from the PostgreSQL server binaries
//!    installed on this machine, stopped and removed when the process exits;
//! 5. a throwaway container of [`DEFAULT_IMAGE`] (`postgres:18`) started through
//!    testcontainers, when a Docker daemon answers; `PGBATCH_TEST_IMAGE=name[:tag]` names
//!    another image that behaves like the official one (`POSTGRES_USER`,
//!    `POSTGRES_PASSWORD`, `POSTGRES_DB`, the ready message), such as a PostGIS one;
//! 6. otherwise it fails with an error that names every way to provide one.
//!
//! `PGBATCH_TEST_SERVER` forces one source whatever else is set: `container` starts a
//! container (one per test process, removed when the process exits), `cluster` a private
//! cluster; any other value is an error ([`SetupError::InvalidServerSetting`]). When the
//! forced source cannot be had, the error says why ([`SetupError::Container`],
//! [`SetupError::Cluster`]). A container's start prints one line on stderr, such as
//! `pgbatch-testing: container postgres:18 ready in 1197 ms at localhost:32769`.
//!
//! So `cargo test` needs no environment on a machine with PostgreSQL installed, running or
//! not.
//!
//! Each call creates a database of its own, named `pgbatch_test_<pid>_<n>`, and dropping
//! the [`TestDatabase`] drops it, also when the test panics. Databases left behind by a
//! killed test process are dropped the next time a test process starts.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = pgbatch_testing::TestDatabase::create().await?;
//! db.execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
//! let client = db.connect().await?;
//! assert_eq!(client.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0), 0);
//! # Ok(()) }
//! ```
//!
//! # Long tests
//!
//! Storms, fault sweeps and crash rounds read their size through [`TestSize`]: quick by
//! default, full with `PGBATCH_TEST_SIZE=full`, and each size variable of its own
//! (`PGBATCH_STORM_SECONDS`, ...) wins over both.

mod cluster;
mod container;
mod database;
mod faults;
mod formation;
mod harness;
mod inspect;
mod proxy;
mod schema;
mod size;
mod spans;
mod template;
mod tls;

pub use cluster::{ClusterError, LocalCluster};
pub use container::DEFAULT_IMAGE;
pub use database::{ServerSource, SetupError, TestDatabase};
pub use faults::{Cut, FaultyPool, drop_after_polls};
pub use formation::Formation;
#[doc(hidden)]
pub use harness::{TestHarness, TestSetup};
pub use inspect::{cancel_session_reset, count, query_rows, query_value};
pub use pgbatch_testing_macros::test;
pub use proxy::{Fault, Proxy, ProxyBuilder};
pub use schema::SchemaError;
pub use size::{SIZE_VARIABLE, TestSize};
pub use spans::{ClosedSpan, SpanCollector};
pub use template::MigratedError;

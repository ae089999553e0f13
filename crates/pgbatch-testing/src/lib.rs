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
//! let db = TestDatabase::create().await?; // dropped (with its data) after the test
//! db.run_migrations(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).await?; // or run_sql_files
//! let pool = db.pool(4).await?; // bb8::Pool<pgbatch::ConnectionManager>
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
//! 1. `DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/postgres`);
//! 2. the libpq variables `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, when
//!    `PGHOST` is set;
//! 3. a server on PostgreSQL's standard address, `127.0.0.1:5432`, that lets the user
//!    `postgres` in without a password (a local install with trust authentication);
//! 4. a private cluster ([`LocalCluster`]) started from the PostgreSQL server binaries
//!    installed on this machine, stopped and removed when the process exits;
//! 5. a throwaway `postgres` container started through testcontainers, when a Docker daemon
//!    answers;
//! 6. otherwise it fails with an error that names every way to provide one.
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

mod cluster;
mod database;
mod inspect;
mod proxy;
mod schema;

pub use cluster::{ClusterError, LocalCluster};
pub use database::{ServerSource, SetupError, TestDatabase};
pub use inspect::{query_rows, query_value};
pub use proxy::{Fault, Proxy, ProxyBuilder};
pub use schema::SchemaError;

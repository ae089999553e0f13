//! Test support for code that uses pgbatch: a fresh PostgreSQL database per test, and a
//! TCP proxy that delays traffic or cuts connections at chosen moments.
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
mod proxy;

pub use cluster::{ClusterError, LocalCluster};
pub use database::{ServerSource, SetupError, TestDatabase};
pub use proxy::{Fault, Proxy, ProxyBuilder};

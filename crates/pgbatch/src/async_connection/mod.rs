//! pgbatch's [`Connection`](crate::Connection) as a diesel-async connection (feature
//! `diesel-async`): a service's reads, ordinary queries, diesel-async transactions and
//! batches share one connection, and one pool.
//!
//! ```no_run
//! # #[cfg(feature = "diesel-async")]
//! # async fn example(pool: &pgbatch::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel_async::{AsyncConnection, RunQueryDsl};
//!
//! diesel::table! { project (id) { id -> Int8, name -> Text } }
//!
//! let mut conn = pool.get().await?;
//! // An ordinary diesel-async query: one round trip.
//! let names: Vec<String> = project::table.select(project::name).load(&mut *conn).await?;
//! // A batch on the same connection: BEGIN, its statements and COMMIT in one round trip.
//! let mut batch = pgbatch::Batch::new();
//! batch.push(diesel::insert_into(project::table).values(project::name.eq("a")));
//! batch.run(&mut conn).await?;
//! // A batch inside a diesel-async transaction joins it: it commits with the transaction.
//! conn.transaction::<_, diesel::result::Error, _>(async |conn| {
//!     diesel::insert_into(project::table).values(project::name.eq("b")).execute(conn).await?;
//!     let mut batch = pgbatch::Batch::new();
//!     batch.push(diesel::insert_into(project::table).values(project::name.eq("c")));
//!     let joined = batch.run(conn).await.expect("the batch");
//!     assert!(joined.in_enclosing_transaction());
//!     Ok(())
//! })
//! .await?;
//! # let _ = names; Ok(()) }
//! ```
//!
//! # How it differs from `AsyncPgConnection`
//!
//! - **One round trip per query.** Every query is an unnamed statement, parsed, bound and
//!   executed in one round trip: there is no server-side prepared-statement cache to warm
//!   (an unprepared query on `AsyncPgConnection` costs two round trips: prepare, then
//!   execute) and none to go stale behind PgBouncer. What it costs is the server parsing
//!   and planning each query anew (see `docs/diesel-async.md` for figures).
//!   `set_prepared_statement_cache_size` is accepted and does nothing.
//! - **No pipelining of concurrent queries** through `&Connection`: a query needs
//!   `&mut Connection`. Batches are the way to send many statements in one round trip.
//! - **The session is reset** (`DISCARD ALL`, then the pool's session setup) after each
//!   query that ends outside a transaction, in the same write, as after every batch (unless
//!   [`SessionReset::WhenRecognised`](crate::SessionReset) is set), so that no session state
//!   a query left (a `SET`, a temporary table) reaches the next user of the pooled
//!   connection.
//! - **A batch inside a transaction** the caller opened (`transaction`,
//!   `begin_test_transaction`) joins it, under a savepoint of its own, and says so
//!   ([`Committed::in_enclosing_transaction`](crate::Committed::in_enclosing_transaction));
//!   a failed batch is undone alone, leaving the transaction usable. A batch never ends or
//!   rolls back the caller's transaction. Batches that cannot join one (an idempotency key,
//!   transaction options, two-phase) fail with
//!   [`Error::InEnclosingTransaction`](crate::Error::InEnclosingTransaction), nothing sent.
//! - **`COMMIT` of a failed transaction is an error.** PostgreSQL answers `COMMIT` in an
//!   aborted transaction by rolling back, without an error; diesel-async on
//!   `AsyncPgConnection` then reports success. Here it fails with `25P02`
//!   (`in_failed_sql_transaction`).
//! - **Dropped futures** leave no request half-read: the next use of the connection reads
//!   what is still due first, and a pool does not lend out a connection with answers due or a
//!   transaction open (except a test transaction).
//!
//! # Errors
//!
//! Server errors are `diesel::result::Error::DatabaseError` with the kind diesel-async
//! gives the same SQLSTATE; a lost connection is `DatabaseErrorKind::ClosedConnection`,
//! whose message says whether the statement had been sent (and so may have run); a
//! statement that cannot be encoded is `SerializationError`, with nothing sent.

mod connection;
mod error;

/// One value of an [`AsyncRow`], as Diesel reads it.
pub use crate::codec::DieselField as AsyncField;
/// One row a diesel-async query returned: in binary, decoded by Diesel from the bytes
/// received, as a batch's rows are.
pub use crate::codec::Row as AsyncRow;

//! Atomic multi-statement PostgreSQL writes from Diesel statements, in one round trip.
//!
//! pgbatch renders statements built with Diesel's query builder to SQL and binary binds,
//! sends `BEGIN`, every statement and `COMMIT` to PostgreSQL as one pipeline over
//! tokio-postgres, and returns typed results or one typed error that says which statement
//! failed, why, and what became of the others.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use pgbatch::{Batch, Cause, Error};
//!
//! diesel::table! { project (id) { id -> Int8, silo_id -> Int8, name -> Text } }
//! diesel::table! { provisioning (project_id) { project_id -> Int8, cpus -> Int8 } }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = pgbatch::ConnectionManager::new("postgres://postgres@127.0.0.1/app".parse()?);
//! let pool = bb8::Pool::builder().max_size(8).build(manager).await?;
//!
//! let mut batch = Batch::new();
//! let project_id = batch
//!     .push(
//!         diesel::insert_into(project::table)
//!             .values((project::silo_id.eq(1), project::name.eq("apollo")))
//!             .returning(project::id),
//!     )
//!     .label("insert project")
//!     .one::<i64>();
//! batch
//!     .push(diesel::sql_query(
//!         "INSERT INTO provisioning (project_id, cpus) SELECT currval('project_id_seq'), 0",
//!     ))
//!     .label("insert provisioning");
//!
//! match batch.run(&pool).await {
//!     Ok(committed) => println!("created project {}", committed.get(&project_id)?),
//!     Err(Error::Statement(failure)) if matches!(failure.cause(), Cause::UniqueViolation(_)) => {
//!         println!("already exists: {failure}")
//!     }
//!     Err(other) => return Err(other.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! 1. **Atomic.** All statements of a batch commit together, or none does.
//! 2. **One round trip.** A batch of N statements costs one network round trip, on success
//!    and on failure. The only exception: the first time a connection meets a custom type
//!    used in a bind, its OID is looked up once, before anything of the batch is sent.
//! 3. **Nothing half-sent.** Every statement is rendered and every bind encoded when it is
//!    pushed. A bind that cannot be encoded, a statement with more than 65535 binds, or a
//!    statement not allowed in a transaction fails the batch before anything is sent.
//! 4. **Attribution.** A failed batch names the first failing statement (index and label),
//!    its cause as a typed [`Cause`], and the [`StatementOutcome`] of every other statement.
//! 5. **Commit errors are theirs.** An error raised at `COMMIT` (a deferred constraint) is
//!    [`Error::Commit`], not a statement's.
//! 6. **Unknown is unknown.** When the connection is lost after `COMMIT` may have reached
//!    the server, the result is [`Error::OutcomeUnknown`], never success or failure.
//! 7. **Cancellation and panics.** A batch future dropped before its first poll sends
//!    nothing. Once it sends, it sends the whole pipeline in one synchronous step, so the
//!    server runs all of it and ends the transaction; no connection goes back to a pool
//!    inside an open transaction.
//! 8. **Retry.** On a serialization failure or deadlock the batch is replayed as it was, a
//!    bounded number of times with jittered backoff, and reports how many attempts it made.
//! 9. **Guards.** Conditions such as "this UPDATE touched exactly one row" or "this row
//!    exists" are checked on the server in the same round trip (see [`guard`]).
//! 10. **Two-phase mode.** [`Batch::prepare`] runs the statements, hands their results to
//!     the caller, and commits or rolls back in a second round trip; dropping it in between
//!     rolls back.
//!
//! # Pipelining
//!
//! tokio-postgres queues a request when its future is first polled and sends queued
//! requests back to back. pgbatch creates one unnamed-statement request per step (Parse,
//! Bind, Describe, Execute, Sync, with the types Diesel encoded for) and polls them all
//! once, in order, within a single poll; the server answers them in order:
//!
//! ```text
//! client                                         server
//!   |-- BEGIN, s1, s2, ..., sN, COMMIT ------------>|   one write
//!   |                                               |   runs them in order
//!   |<-------- ok, rows1, rows2, ..., rowsN, ok ----|   one read
//! ```
//!
//! Every request ends with its own Sync. When statement k fails inside the transaction,
//! later ones fail with `25P02` and `COMMIT` is answered with `ROLLBACK`, which
//! tokio-postgres reports as success; pgbatch derives the outcome from every statement's
//! answer instead, reports statement k, and marks the later ones [skipped](StatementOutcome::Skipped).
//!
//! # Guards
//!
//! A guard is a condition the server checks inside the batch's own round trip; when it
//! does not hold, the transaction aborts and the batch fails with
//! [`Cause::GuardFailed`], carrying the guard's label and, for row counts, the count seen:
//!
//! - [`StatementBuilder::expect_rows`] / [`expect_rows_in`](StatementBuilder::expect_rows_in):
//!   "this UPDATE touched exactly one row";
//! - [`Batch::guard_exists`] / [`Batch::guard_not_exists`]: "this query returns a row";
//! - [`Batch::guard`]: a Diesel boolean expression, "fewer than 12 disks are attached".
//!
//! Guards are plain SQL (a cast that fails with a recognisable message); nothing is
//! installed in the database. See [`guard`] for the SQL they generate.
//!
//! # Fragments
//!
//! A [`Fragment`] is a group of statements returned by a domain module together with the
//! mapping of its failures to the module's own error type. A service appends fragments from
//! several modules to one batch; when one fails, the caller gets [`Error::Domain`] with that
//! module's error (converted with `Into`) and the statement-level detail.
//!
//! # Two-phase batches
//!
//! When a decision can only be made in Rust, [`Batch::prepare`] runs the statements in a
//! first round trip and returns a [`Prepared`] transaction whose results can be read; its
//! [`commit`](Prepared::commit) or [`rollback`](Prepared::rollback) is the second round
//! trip. Dropping it undecided queues `ROLLBACK` at once.
//!
//! ```text
//! client                                         server
//!   |-- BEGIN, s1, ..., sN ------------------------>|   round trip 1
//!   |<-------- ok, rows1, ..., rowsN ---------------|
//!   |   (inspect the rows in Rust)                  |   row locks held
//!   |-- COMMIT or ROLLBACK ------------------------>|   round trip 2
//!   |<-------- ok ----------------------------------|
//! ```
//!
//! # Retries and idempotency
//!
//! A batch is a value, so when PostgreSQL rolls it back for a serialization failure or a
//! deadlock it is replayed as it was, per its [`RetryPolicy`] (bounded attempts, jittered
//! exponential backoff); the result says how many attempts it took. Nothing that may have
//! committed is replayed. A batch with an [`IdempotencyKey`] writes a marker row in its own
//! transaction: it applies at most once, and after [`Error::OutcomeUnknown`]
//! [`idempotency::resolve`] tells whether it committed.
//!
//! # Observability
//!
//! Every run is a `tracing` span `pgbatch.run` at debug level, with the statement count,
//! the first labels, the attempt, the round-trip time and the outcome; each retry is an
//! info event. Bind values are never logged.
//!
//! # Limitations
//!
//! A pipeline is written before any answer is read, so no statement's SQL or binds can
//! depend on an earlier statement's result in Rust. Express the dependency in SQL instead:
//! a subquery (`INSERT ... SELECT id FROM project WHERE name = $1`), `currval()` of a
//! sequence, a data-modifying CTE, or a guard that aborts the batch.
//!
//! Custom types that appear only in result columns (never in a bind) are looked up by
//! tokio-postgres the first time a connection reads them, after the batch's answers.

mod batch;
mod bind;
mod connection;
mod error;
mod fragment;
pub mod guard;
mod handle;
pub mod idempotency;
mod options;
mod pipeline;
mod pool;
mod results;
mod retry;
mod row;
mod sql_shape;
mod statement;
mod two_phase;

pub use batch::Batch;
pub use connection::{Connection, Tls};
pub use error::{
    BuildError, Cause, CommitFailure, ConnectError, Error, OutcomeUnknown, PoolError, ResultError, StatementFailure,
    StatementOutcome, StatementRef, Violation,
};
pub use fragment::{Fragment, GuardBuilder, StatementBuilder};
pub use handle::{Affected, All, Handle, One, Optional};
pub use idempotency::IdempotencyKey;
pub use options::IsolationLevel;
pub use pool::{Acquire, ConnectionManager};
pub use results::Committed;
pub use retry::RetryPolicy;
pub use statement::MAX_BINDS;
pub use tokio_postgres;

/// The README's example compiles.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
pub use two_phase::Prepared;

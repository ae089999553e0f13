//! Atomic multi-statement PostgreSQL writes from Diesel statements, in one round trip.
//!
//! pgbatch renders statements built with Diesel's query builder to SQL and binary binds,
//! sends `BEGIN`, every statement and `COMMIT` to PostgreSQL as one unit of the extended
//! query protocol (one write, one `Sync`, one round trip), and returns typed results or one
//! typed error that says which statement failed, why, and what became of the others.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use pgbatch::{Batch, Cause, Error};
//!
//! diesel::table! { project (id) { id -> Int8, silo_id -> Int8, name -> Text } }
//! diesel::table! { provisioning (project_id) { project_id -> Int8, cpus -> Int8 } }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config: pgbatch::Config = "postgres://postgres@127.0.0.1/app".parse()?;
//! let manager = pgbatch::ConnectionManager::new(config);
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
//! 1. **Atomic.** All statements of a batch commit together, or none does: whatever step
//!    fails (a statement, a guard, `BEGIN` or `COMMIT` hit by a cancel request or a
//!    timeout), the server skips every later step.
//! 2. **One round trip.** A batch of N statements costs one network round trip, on success
//!    and on failure. The only exception: the first time a connection meets a custom type
//!    used in a bind, its OID is looked up once, before anything of the batch is sent.
//! 3. **Nothing half-sent.** Every statement is rendered and every bind encoded when it is
//!    pushed. A bind that cannot be encoded, a statement with more than 65535 binds, or a
//!    statement not allowed in a transaction fails the batch before anything is sent.
//! 4. **Attribution.** A failed batch names the first failing statement (index and label),
//!    its cause as a typed [`Cause`], and the [`StatementOutcome`](error::StatementOutcome) of every other statement.
//! 5. **Commit errors are theirs.** An error raised at `COMMIT` (a deferred constraint) is
//!    [`Error::Commit`], not a statement's; one raised at `BEGIN` is [`Error::Begin`].
//! 6. **Unknown is unknown.** When the connection is lost after `COMMIT` may have reached
//!    the server, or the server says it cannot tell (`40003`), the result is
//!    [`Error::OutcomeUnknown`], never success or failure.
//! 7. **Cancellation and panics.** A batch future dropped before its first poll sends
//!    nothing. Once polled, it writes the whole unit; what was written runs on the server
//!    all or nothing, and no connection goes back to a pool inside a transaction or with
//!    answers still due.
//! 8. **Retry.** On a serialization failure or deadlock the batch is replayed as it was, a
//!    bounded number of times with jittered backoff, and reports how many attempts it made.
//! 9. **Guards.** Conditions such as "this UPDATE touched exactly one row" or "this row
//!    exists" are checked on the server in the same round trip (see [`guard`]).
//! 10. **Two-phase mode.** [`Batch::prepare`] runs the statements, hands their results to
//!     the caller, and commits or rolls back in a second round trip; dropping it in between
//!     rolls back.
//!
//! Around the batch, each of these is kept by a mechanism, not by recognising cases:
//!
//! - **No holder sees what an earlier holder left in the session**, by any route, also
//!   when the cleanup itself fails: the first unit of each new holder (a pool checkout, a
//!   multiplexed batch) resets the session in its own `Sync` segment, so that a reset
//!   stopped by a cancel or a timeout makes the server skip the unit (see
//!   [Session state](#session-state)).
//! - **"Not committed" after a lost connection is final**: a resolution that finds a key
//!   uncommitted commits a fence in its marker's place, which a late copy of the lost run
//!   collides with (see [`idempotency::resolve`]).
//! - **An orphan is bounded**: a connection dropped or lost while its backend may still be
//!   inside a transaction (the network stalled mid-pipeline) is read while answers keep
//!   arriving; whenever none has come for 250 ms its backend is looked at from a new
//!   connection and ended by process id if it waits for its client (a backend still running
//!   what it was sent finishes it: a batch sent whole runs whole), where the server lets the pool's role do that (its own
//!   backends, or `pg_signal_backend`) and the process id is the server's (checked at
//!   start-up: not behind PgBouncer). Its locks are released well within a second of the
//!   caller giving up. A pool settling an unknown
//!   outcome ends the lost backend the same way before it reads the key, and waits at most
//!   10 s for a transaction still writing the key (then the outcome stays unknown).
//! - **A cancel request arrives**: [`CancelToken::cancel_query`] returns once the server
//!   (or PgBouncer, having forwarded it) has closed the cancel connection, as libpq does.
//!
//! # Pipelining
//!
//! A batch is one unit of the extended query protocol: `BEGIN`, each statement (bound by
//! the name the [statement cache](#statement-cache) gave it, or parsed with the type OIDs
//! Diesel encoded its binds for; binary results) and
//! `COMMIT`, then one `Sync`, then a `ROLLBACK` of its own, all in one write; when the
//! connection has changed hands, the session reset comes first, in the same `Sync` segment.
//! The server answers in order, and the answers are read while the pipeline is still being
//! written, so no size of batch can stall on full socket buffers:
//!
//! ```text
//! client                                              server
//!   |-- [DISCARD ALL, setup], BEGIN, s1, ..., sN, ------>|   one write
//!   |   COMMIT, Sync                                     |   (the reset: see Session state)
//!   |-- ROLLBACK ---------------------------------------->|   (ends any aborted block)
//!   |<-- [reset], ok, rows1, ..., rowsN, COMMIT, ready(I)|   one read
//!   |<-- warning: no transaction, ready(I) ---------------|
//! ```
//!
//! When step k fails, the server skips every later step up to the `Sync`: the statements
//! after it are [skipped](error::StatementOutcome::Skipped), `COMMIT` never runs, and the
//! closing `ROLLBACK` ends the aborted block. The verdict comes from the answers: the first
//! error names its step, and only `COMMIT`'s own answer means committed.
//! `docs/protocol.md` in the repository draws the exchange and lists what each fault
//! leaves.
//!
#![doc = include_str!("../docs/statement-cache.md")]
//!
//! # Multiplexing
//!
//! A pooled batch holds its connection for a whole round trip: `n` connections commit at
//! most `n / RTT` batches a second however idle the server is. Because a batch is
//! self-contained (one unit, one `Sync`, its own reset and `ROLLBACK`), the next
//! caller's batch can be written on the same connection before the first one's answers are
//! back. [`Multiplexed`] does that: one driver task per connection writes each batch given
//! to it behind those in flight, reads the answers in order and hands each caller its own;
//! [`Batch::run_multiplexed`] runs a batch on it with the same verdicts, retries and keyed
//! settlement as [`Batch::run`].
//!
//! - **Per batch, as on a connection of its own.** The server runs each unit alone: a
//!   failure or a failed guard skips the rest of that batch's unit only. Each batch is a
//!   holder of its own: its unit begins with a `ROLLBACK` of whatever the batch ahead left
//!   open and, when the batch ahead ran, the session reset, so no session state crosses
//!   from one caller's batch to another's, and a batch whose reset is stopped never runs.
//! - **A lost connection** lands every batch in flight on it with its own verdict: not
//!   committed when its `COMMIT` was never written, [`Error::OutcomeUnknown`] when it was
//!   (settled through the idempotency key, on a connection of [`Multiplexed::pool`], when the
//!   batch has one). The connection is replaced when the next batch is given to it.
//! - **Dropped callers.** A caller that drops its future before its batch was written sends
//!   nothing; after, the batch runs whole on the server and its answer is read and dropped.
//!   Other callers are unaffected either way.
//! - **Timeouts.** A cancel request reaches whatever the shared backend runs, which may be
//!   another caller's batch, so none is sent on a caller's behalf. A caller's own timeout
//!   (`tokio::time::timeout`) answers it at once, as a dropped future: nothing sent, or the
//!   batch runs whole. Bound a batch's time on the server with `statement_timeout` in the
//!   session setup ([`ConnectionManager::session_setup`]): it fails only the statement
//!   that overran, so only its batch, which rolls back.
//! - **Head-of-line blocking.** Batches on one connection run one after another on the
//!   server, so a batch waiting on a lock delays the ones behind it on that connection (at
//!   most [`in_flight_per_connection`](MultiplexedBuilder::in_flight_per_connection) of
//!   them); new batches go to the least loaded connection.
//! - **Backpressure.** At most `in_flight_per_connection` batches are in flight on each
//!   connection and [`max_waiting`](MultiplexedBuilder::max_waiting) given to the client in
//!   all; beyond that callers wait, and fail with [`error::PoolError::TimedOut`] (nothing
//!   sent) after the [`admission_timeout`](MultiplexedBuilder::admission_timeout).
//! - **What needs a connection of its own** — two-phase batches, batches under CockroachDB's
//!   restart savepoint ([`Error::NotMultiplexable`]), idempotency resolution, diesel-async
//!   queries and transactions — runs on [`Multiplexed::pool`] (or any pool).
//! - **Behind a pooler** (a connection without a backend of its own, which the client
//!   sees at start-up) the client keeps one batch in flight per connection, unless told
//!   with [`MultiplexedBuilder::pooler_keeps_pipelines`] that the pooler keeps a server
//!   connection until everything written to it was answered. PgBouncer before 1.21 does
//!   not: when a client disconnects right after one `Sync` was answered, it returns the
//!   server connection to its pool with the answers to the batches behind still due, and
//!   its next client reads them (seen with PgBouncer 1.18 in pgbatch's own suite). Behind
//!   PgBouncer, PgBouncer already multiplexes; the client then bounds and queues.
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
//!   |-- BEGIN, s1, ..., sN, Sync ------------------>|   round trip 1
//!   |<-------- ok, rows1, ..., rowsN, ready(T) -----|
//!   |   (inspect the rows in Rust)                  |   row locks held
//!   |-- COMMIT or ROLLBACK, Sync, ROLLBACK -------->|   round trip 2
//!   |<-------- ok, ready(I) ------------------------|
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
//! # diesel-async
//!
//! With the feature `diesel-async`, a [`Connection`] is a diesel-async connection: a
//! service runs its reads and single statements with diesel-async and its multi-statement
//! writes as batches, on one connection and one [`Pool`]. A batch run while the caller has
//! a transaction open (diesel-async's `transaction`, `begin_test_transaction`) joins it
//! under a savepoint of its own and never ends it; the result says so
//! ([`Committed::in_enclosing_transaction`]). See the `async_connection` module (when the feature is
//! on) and `docs/diesel-async.md` for what differs from `AsyncPgConnection`.
//!
//! # Several hosts and failover
//!
//! A URL may list several hosts (`postgres://db1:5432,db2:5432/app`, or `host=db1,db2
//! port=5432,5432`), tried in order (in random order with `load_balance_hosts=random`), each
//! within `connect_timeout`. `target_session_attrs` chooses among them as in libpq:
//! `any`, `read-write`, `read-only`, `primary`, `standby`, `prefer-standby`
//! ([`TargetSessionAttrs`]); the server's state is read from what it reports at start-up,
//! so choosing costs no round trip on PostgreSQL 14 and later. When no host qualifies,
//! [`ConnectError::NoSuitableHost`] lists each host's reason. A value pgbatch cannot honour
//! (`channel_binding=require`, `sslnegotiation=direct`, an unknown `target_session_attrs`)
//! is refused with an error naming it, never ignored.
//!
//! A batch that meets a server that does not accept writes (`25006`: a standby, or a
//! primary that is still read-only during a failover) wrote nothing; on a pool or a
//! [`Multiplexed`] client, its connection is given up and the batch replayed on a fresh
//! one, as its retry policy allows ([`Cause::ReadOnly`]). With `target_session_attrs=read-write` the fresh
//! connection goes to a server that accepts writes.
//!
//! Dead servers are noticed by TCP keepalives and `tcp_user_timeout`, on by default
//! ([`Config`](Config#dead-server-detection)); what a pool needs to follow a failover and
//! what pgbatch promises across one, per replication setting, is in `docs/failover.md`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config: pgbatch::Config =
//!     "postgres://app@db1:5432,db2:5432/app?target_session_attrs=read-write&connect_timeout=5".parse()?;
//! let pool = bb8::Pool::builder().max_size(8).build(pgbatch::ConnectionManager::new(config)).await?;
//! # let _ = pool; Ok(()) }
//! ```
//!
//! # TLS
//!
//! With the `rustls` feature, `sslmode` in a URL or [`Config`] means what it means to libpq,
//! for [`Connection::connect`] and [`ConnectionManager`] alike:
//!
//! | `sslmode`     | TLS                        | certificate checked                         |
//! |---------------|----------------------------|---------------------------------------------|
//! | `disable`     | never                      | -                                           |
//! | `prefer`      | when the server offers it  | no                                          |
//! | `require`     | always                     | the chain, only when `sslrootcert` is given |
//! | `verify-ca`   | always                     | the chain, up to `sslrootcert`              |
//! | `verify-full` | always                     | the chain, and that it names the host       |
//!
//! `sslrootcert` is a PEM file of trusted roots (or `system`, the operating system's store);
//! without it, `~/.postgresql/root.crt` is used when it exists, as libpq does.
//!
//! ```no_run
//! # async fn example() -> Result<(), pgbatch::ConnectError> {
//! let url = "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem";
//! let connection = pgbatch::Connection::connect(url).await?;
//! let pool = bb8::Pool::builder().build(pgbatch::ConnectionManager::new(url.parse::<pgbatch::Config>()?)).await?;
//! # Ok(()) }
//! ```
//!
//! A certificate that does not verify fails the connection with [`ConnectError::Tls`],
//! saying whether the CA or the host name was wrong and what to change. Without the
//! feature, `prefer` connects in the clear and the modes that require TLS fail with
//! [`ConnectError::Config`] naming the feature. Client certificates (`sslcert`, `sslkey`)
//! and `SCRAM-SHA-256-PLUS` channel binding are not supported yet.
//!
//! The cryptography is the application's process-wide rustls provider when it installed one
//! (`CryptoProvider::install_default`, for example aws-lc-rs's, whose key exchange is
//! post-quantum), and ring's otherwise.
//!
#![doc = include_str!("../docs/pgbouncer.md")]
//!
//! # Observability
//!
//! Every run is a `tracing` span `pgbatch.run` at debug level, with the statement count,
//! the first labels, the attempt, the round-trip time, `settled` (an unknown outcome
//! settled by reading the idempotency marker) and `outcome`, one word to filter on:
//! `committed`, `not_committed`, `already_committed` or `unknown` (`released` for a batch that
//! joined a transaction the caller had open); a failure adds `error`,
//! a summary with the statement, label and SQLSTATE. A two-phase batch has a
//! `pgbatch.prepare` span (outcome `open` when it waits for the decision) and a
//! `pgbatch.decide` span (`decision` = `commit` or `rollback`, outcome `committed` or
//! `rolled_back`); a diesel-async query on pgbatch's connection a `pgbatch.query` span.
//! Each retry is an info event with the attempt, the delay and the cause.
//!
//! Each of these spans also carries OpenTelemetry's conventional attributes for PostgreSQL
//! client operations (span kind `client`, `db.system.name`, `db.operation.name`,
//! `db.operation.batch.size`, `db.namespace`, `server.address`, `server.port`, and on
//! failure `db.response.status_code` and `error.type`), so that `tracing-opentelemetry`
//! exports them as any PostgreSQL client's; and pgbatch records metrics through the
//! [`metrics`] facade: `db.client.operation.duration`, batches by outcome, settlements,
//! replays, fenced keys, pool checkouts and a multiplexed client's load. The names and
//! when each is set: [`telemetry`]. Bind values and server messages (which can quote them)
//! are never logged, recorded on a span, or used as a label.
//!
//! # Limitations
//!
//! A pipeline is written before any answer is read, so no statement's SQL or binds can
//! depend on an earlier statement's result in Rust. Express the dependency in SQL instead:
//! a subquery (`INSERT ... SELECT id FROM project WHERE name = $1`), `currval()` of a
//! sequence, a data-modifying CTE, or a guard that aborts the batch.
//!
//! Custom types in result columns need no lookup: rows arrive in binary with their type
//! OIDs and Diesel decodes them from the bytes.
//!
//! A batch is a transaction: statements whose effect would outlive it in the session (`SET`
//! without `LOCAL`, `LISTEN`, `PREPARE`, temporary tables without `ON COMMIT DROP`) are
//! refused before anything is sent, with the transaction-scoped form to use instead.
//!
#![doc = include_str!("../docs/session-state.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "diesel-async")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel-async")))]
pub mod async_connection;
mod codec;
mod connect;
mod connection;
pub mod error;
pub mod idempotency;
pub mod intent;
mod outcome;
mod plan;
mod pool;
mod protocol;
mod run;
pub mod telemetry;
mod two_phase;

/// Guards: what a guard expects and how its failure is reported (see the crate docs'
/// Guards section for the SQL they generate).
pub mod guard {
    pub use crate::error::{Expectation, GuardFailure};
}

pub use codec::MAX_BINDS;
// What callers match on most; every error type is in `error`.
pub use connect::{CancelToken, Config, SessionReset, SslMode, StatementCache, TargetSessionAttrs};
pub use connection::Connection;
pub use error::{Cause, ConnectError, Error};
pub use idempotency::IdempotencyKey;
pub use outcome::Committed;
pub use plan::{
    Affected, All, Fragment, GuardBuilder, Handle, IsolationLevel, Observed, Observer, One, Optional, Results,
    RetryPolicy, StatementBuilder, StatementEvent,
};
pub use pool::{Acquire, ConnectionManager, Multiplexed, MultiplexedBuilder, Pool};
pub use run::Batch;
pub use two_phase::Prepared;

/// The README's example compiles.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The failover guide's example compiles.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/failover.md")]
struct FailoverDoctests;

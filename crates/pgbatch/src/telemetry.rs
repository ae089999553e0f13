//! The names pgbatch reports under, for dashboards and alerts: OpenTelemetry's semantic
//! conventions for PostgreSQL client operations where they have a name, pgbatch's own
//! (`pgbatch.*`) for what only pgbatch knows (unknown outcomes, settlements, fenced keys,
//! multiplexing).
//!
//! Spans go through [`tracing`] (to OpenTelemetry through `tracing-opentelemetry`, which
//! reads the `otel.kind` and `otel.status_code` fields), metrics through the [`metrics`]
//! facade (to Prometheus or OpenTelemetry through the exporter the application installs).
//! Nothing is recorded unless the application installed a subscriber or a recorder. No
//! span field and no metric label ever holds a bind value or a server message (which can
//! quote one). `docs/observability.md` in the repository says when each is set.
//!
//! # Spans
//!
//! Every run of a batch (pooled, multiplexed, inside the caller's transaction) is a span
//! `pgbatch.run`; a two-phase batch is `pgbatch.prepare` then `pgbatch.decide`; a
//! diesel-async query on pgbatch's connection is `pgbatch.query`. All at debug level, with
//! the span kind `client` and these attributes:
//!
//! | attribute | value |
//! |---|---|
//! | `db.system.name` | `postgresql` |
//! | `db.operation.name` | `BATCH` for a batch; `COMMIT` or `ROLLBACK` for a two-phase decision; not set for a diesel-async query (its text may hold several statements, and the conventions ask not to parse it) |
//! | `db.operation.batch.size` | a batch's statements (its `BEGIN` and `COMMIT` not counted); a batch of one statement is still a batch: it is a transaction pgbatch opens and commits |
//! | `db.namespace`, `server.address`, `server.port` | the database and the server of the connection the operation ran on |
//! | `db.response.status_code` | the SQLSTATE of the error the operation ended with, when it has one |
//! | `error.type` | when it failed, one of the words of [`Error`](crate::Error)'s classes: `statement`, `guard`, `serialization_failure`, `deadlock`, `commit`, `begin`, `session_reset`, `outcome_unknown`, `connection`, `connection_closed`, `pool`, `invalid`, `idempotency_marker`, `key_fenced`, `in_enclosing_transaction`, `not_multiplexable` |
//!
//! # Metrics
//!
//! | name | kind | labels | when |
//! |---|---|---|---|
//! | [`OPERATION_DURATION`] | histogram, seconds | `db.system.name`; `db.operation.name` and `pgbatch.outcome` for batches; `error.type` when it failed | every run, two-phase round trip and query |
//! | [`BATCHES`] | counter | `pgbatch.outcome`, `pgbatch.transport` | every run of a batch; a two-phase batch once, at its decision (or at its first round trip when that failed) |
//! | [`SETTLEMENTS`] | counter | `pgbatch.settled_as` (`committed`, `not_committed`, `unknown`) | an unknown outcome settled through its idempotency key |
//! | [`KEYS_FENCED`] | counter | - | a settlement voided a key that had not committed |
//! | [`REPLAYS`] | counter | `pgbatch.replay` (`same_connection`, `another_connection`, `after_settlement`) | an attempt replayed |
//! | [`CONNECTION_WAIT_TIME`] | histogram, seconds | - | every checkout of a pooled connection (batches, settlements, diesel-async) |
//! | [`CONNECTION_TIMEOUTS`] | counter | - | no pooled connection came in time |
//! | [`CONNECTION_COUNT`] | gauge | `db.client.connection.state` (`idle`, `used`) | a pooled connection was lent |
//! | [`MULTIPLEXED_IN_FLIGHT`] | gauge | `pgbatch.connection` (the connection's index in its client: `0`, `1`, ...) | batches given to a multiplexed client's connection and not yet answered |
//! | [`MULTIPLEXED_WAITING`] | gauge | - | callers waiting for a multiplexed client to take their batch |
//! | [`ADMISSION_TIMEOUTS`] | counter | - | a multiplexed client did not take a batch in time |
//!
//! `pgbatch.outcome` is one of `committed`, `not_committed`, `unknown`, `already_committed`,
//! `released` (joined the caller's transaction), `open` (a two-phase batch waiting for its
//! decision), `rolled_back` (a two-phase batch rolled back as decided); `pgbatch.transport`
//! one of `pooled` (a connection of its own, pooled or bare), `multiplexed`, `two_phase`.
//! Alert on `pgbatch.outcome="unknown"`: each is a write that may or may not have happened.

use std::time::Duration;

/// `db.system.name` of every operation.
pub const SYSTEM_NAME: &str = "postgresql";
/// `db.operation.name` of a batch.
pub const BATCH_OPERATION: &str = "BATCH";

/// `db.client.operation.duration`: how long each operation took, in seconds, from the call
/// to its verdict (retries and settlement included).
pub const OPERATION_DURATION: &str = "db.client.operation.duration";
/// `pgbatch.batches`: runs of batches by outcome.
pub const BATCHES: &str = "pgbatch.batches";
/// `pgbatch.settlements`: unknown outcomes settled through an idempotency key, by what they
/// turned out to be.
pub const SETTLEMENTS: &str = "pgbatch.settlements";
/// `pgbatch.keys_fenced`: idempotency keys a settlement voided, so that a late copy of the
/// lost run can never commit.
pub const KEYS_FENCED: &str = "pgbatch.keys_fenced";
/// `pgbatch.replays`: attempts replayed, by where.
pub const REPLAYS: &str = "pgbatch.replays";
/// `db.client.connection.wait_time`: how long a batch waited for a pooled connection.
pub const CONNECTION_WAIT_TIME: &str = "db.client.connection.wait_time";
/// `db.client.connection.timeouts`: checkouts that found no connection in time.
pub const CONNECTION_TIMEOUTS: &str = "db.client.connection.timeouts";
/// `db.client.connection.count`: a pool's connections by state, when it lent one.
pub const CONNECTION_COUNT: &str = "db.client.connection.count";
/// `pgbatch.multiplexed.in_flight`: batches given to a multiplexed client's connection and
/// not yet answered, by connection.
pub const MULTIPLEXED_IN_FLIGHT: &str = "pgbatch.multiplexed.in_flight";
/// `pgbatch.multiplexed.waiting`: callers waiting for a multiplexed client to take their
/// batch.
pub const MULTIPLEXED_WAITING: &str = "pgbatch.multiplexed.waiting";
/// `pgbatch.multiplexed.admission_timeouts`: batches a multiplexed client did not take in
/// time.
pub const ADMISSION_TIMEOUTS: &str = "pgbatch.multiplexed.admission_timeouts";

/// Records one finished operation: its duration and, for batches, its outcome (a
/// diesel-async query has neither an operation name nor an outcome word).
pub(crate) fn operation_finished(
    operation: Option<&'static str>,
    outcome: Option<&'static str>,
    error_type: Option<&'static str>,
    transport: Option<&'static str>,
    elapsed: Duration,
) {
    let mut labels = Vec::with_capacity(4);
    labels.push(metrics::Label::from_static_parts("db.system.name", SYSTEM_NAME));
    if let Some(operation) = operation {
        labels.push(metrics::Label::from_static_parts("db.operation.name", operation));
    }
    if let Some(outcome) = outcome {
        labels.push(metrics::Label::from_static_parts("pgbatch.outcome", outcome));
    }
    if let Some(error_type) = error_type {
        labels.push(metrics::Label::from_static_parts("error.type", error_type));
    }
    metrics::histogram!(OPERATION_DURATION, labels).record(elapsed.as_secs_f64());
    if let (Some(outcome), Some(transport)) = (outcome, transport) {
        metrics::counter!(BATCHES, "pgbatch.outcome" => outcome, "pgbatch.transport" => transport).increment(1);
    }
}

/// An unknown outcome settled as `settled_as`.
pub(crate) fn settled(settled_as: &'static str) {
    metrics::counter!(SETTLEMENTS, "pgbatch.settled_as" => settled_as).increment(1);
}

/// A settlement fenced a key.
pub(crate) fn key_fenced() {
    metrics::counter!(KEYS_FENCED).increment(1);
}

/// An attempt is replayed `where_`.
pub(crate) fn replayed(where_: &'static str) {
    metrics::counter!(REPLAYS, "pgbatch.replay" => where_).increment(1);
}

/// A checkout of a pooled connection ended after `waited`, with or without one.
pub(crate) fn checkout(waited: Duration, timed_out: bool) {
    metrics::histogram!(CONNECTION_WAIT_TIME).record(waited.as_secs_f64());
    if timed_out {
        metrics::counter!(CONNECTION_TIMEOUTS).increment(1);
    }
}

/// A pool's connections as it lent one.
pub(crate) fn pool_connections(idle: u32, used: u32) {
    metrics::gauge!(CONNECTION_COUNT, "db.client.connection.state" => "idle").set(idle);
    metrics::gauge!(CONNECTION_COUNT, "db.client.connection.state" => "used").set(used);
}

/// A batch given to a multiplexed client's connection `connection` (`1`) or answered (`-1`).
pub(crate) fn multiplexed_in_flight(connection: metrics::SharedString, change: f64) {
    metrics::gauge!(MULTIPLEXED_IN_FLIGHT, "pgbatch.connection" => connection).increment(change);
}

/// A caller starts (`1`) or stops (`-1`) waiting for a multiplexed client to take its batch.
pub(crate) fn multiplexed_waiting(change: f64) {
    metrics::gauge!(MULTIPLEXED_WAITING).increment(change);
}

/// A multiplexed client did not take a batch in time.
pub(crate) fn admission_timed_out() {
    metrics::counter!(ADMISSION_TIMEOUTS).increment(1);
}

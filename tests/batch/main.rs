//! End-to-end tests of the batch core against a real PostgreSQL: each test gets a database
//! of its own (see `pgbatch-testing`).

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod ambiguous;
mod cancellation;
mod commit;
mod common;
mod connect;
mod connection_loss;
mod custom_types;
mod failures;
mod guards;
mod holders;
mod hooks;
mod idempotency;
mod large;
mod logs;
mod multiplexed;
mod not_sent;
mod restart;
mod retry;
mod session;
mod statement_cache;
mod telemetry;
mod two_phase;

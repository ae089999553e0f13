//! pgbatch's guarantees under faults, against a real PostgreSQL: cancel requests and
//! statement timeouts landing anywhere in a batch, `COMMIT` included. Each case checks on
//! a fresh connection that a batch is all there or not there at all, that its verdict
//! matches what the database holds, and that no connection is left inside a transaction.

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod commit_cancel;
mod crash;
mod fence;
mod orphan;
mod storm;
mod support;
mod sweeps;
mod unsettled;

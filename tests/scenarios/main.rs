//! The control-plane scenarios end to end, against a real PostgreSQL: fragments from domain
//! modules composed into batches, their typed failures, and their behaviour under contention.

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod contention;
mod control_plane;
mod silo_and_sync;
mod world;

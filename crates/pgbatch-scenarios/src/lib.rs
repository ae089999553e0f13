//! The reference control-plane scenarios, written the way a control-plane team would:
//! domain modules whose functions return [`pgbatch::Fragment`]s carrying their own error
//! mapping, and services that compose them into one atomic batch.
//!
//! Examples, tests and benchmarks share these, so what pgbatch is measured on is the work
//! its users do.

pub mod disks;
pub mod example;
pub mod firewall;
pub mod instances;
pub mod project;
pub mod provisioning;
pub mod schema;
pub mod seed;
pub mod service;
pub mod silo;
pub mod sync;

/// The scenarios' schema, as SQL.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

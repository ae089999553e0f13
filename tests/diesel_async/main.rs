//! pgbatch's connection as a diesel-async connection, against a real PostgreSQL: diesel-async
//! queries, transactions and batches on one connection and one pool; batches inside the
//! caller's transaction; drops, bad input and lost sessions; scenarios of diesel-async's own
//! test suite; and every Diesel PostgreSQL type read and written through both
//! `AsyncPgConnection` and pgbatch's connection, compared.

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod differential;
mod drops;
mod fidelity;
mod holders;
mod ported;

mod support;
mod transactions;
mod wrappers;

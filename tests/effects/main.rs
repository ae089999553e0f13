//! Effects outside the database, against a real PostgreSQL: the intent protocol's pieces,
//! and the upload-and-bill program (scenario B1) killed at every step and recovered.

// Test modules share helpers with `pub`; nothing here is an API.
#![allow(unreachable_pub, missing_docs)]

mod common;
mod crash;
mod intents;

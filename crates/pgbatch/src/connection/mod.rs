//! A connection that speaks PostgreSQL's protocol itself (through `postgres-protocol`):
//! start-up and authentication, what it knows of its own state, the batch exchange that
//! sends a unit ending in one `Sync`, units in flight and the one read loop (a single
//! flight or a pipeline), the session between holders, custom-type lookups, the backend
//! behind it, and what happens to a connection dropped with answers due.
//!
//! The seam to the layers above is small: [`Exchange`] in (what to send: `BEGIN`,
//! statements, how to end), [`Answers`](crate::protocol::Answers) out (each statement's rows
//! and the step that failed, or a lost connection).

mod answers;
mod backend;
mod exchange;
mod flight;
mod holder;
mod orphan;
pub(crate) mod pipeline;
#[cfg(feature = "diesel-async")]
mod request;
pub(crate) mod startup;
mod state;
mod statements;
mod step;
pub(crate) mod types;

pub(crate) use exchange::{End, Exchange, Queued, Restart};
pub(crate) use pipeline::Pipeline;
#[cfg(feature = "diesel-async")]
pub(crate) use state::Attachment;
pub use state::Connection;
pub(crate) use state::{EndBackend, Peer, Terminate, TxStatus};
pub(crate) use statements::CacheMiss;

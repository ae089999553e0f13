//! The protocol path: connections that speak PostgreSQL's protocol themselves (through
//! `postgres-protocol`), the exchange that sends a batch as one unit ending in one `Sync`,
//! custom-type lookups, and pooling.
//!
//! The seam to the layers above is small: [`Exchange`] in (what to send: `BEGIN`,
//! statements, how to end), [`Answers`] out (each statement's rows and the step that
//! failed, or a lost connection). Another transport would implement the same exchange.

mod answers;
mod backend;
mod cancel;
mod collect;
mod config;
mod connection;
mod driver;
mod exchange;
mod flight;
mod holder;
mod io;
mod multiplex;
mod orphan;
mod pipeline;
mod pool;
mod prelude;
#[cfg(feature = "diesel-async")]
mod request;
mod session;
mod socket;
mod sql;
mod startup;
mod step;
mod tls;
mod types;
mod unit;

pub use cancel::CancelToken;
pub use config::{Config, SslMode, TargetSessionAttrs};
pub use connection::Connection;
pub(crate) use connection::{EndBackend, Terminate, TxStatus};
pub(crate) use exchange::{End, Exchange, Restart};
pub use multiplex::{Multiplexed, MultiplexedBuilder};
pub use pool::{Acquire, ConnectionManager, Pool};
pub(crate) use prelude::PreludeOutcome;
pub use session::SessionReset;
pub(crate) use unit::{Answers, BatchNotSent, Ending, NotSent, Position};

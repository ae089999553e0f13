//! Reaching a server: where and how to connect (`Config`), the socket and its keepalives,
//! TLS, the byte stream with its buffers, cancel requests, and the session settings a pool
//! gives its connections (`SessionReset`). Nothing here speaks the protocol past start-up's
//! first bytes; [`crate::connection`] builds a connection on top.

mod cancel;
mod config;
mod io;
mod modes;
mod parse;
mod session;
mod socket;
pub(crate) mod tls;

pub use cancel::CancelToken;
pub use config::Config;
pub(crate) use io::{Io, without_waiting};
pub use modes::{SslMode, TargetSessionAttrs};
pub(crate) use session::Session;
pub use session::{SessionReset, StatementCache};
pub(crate) use socket::{Target, open_socket, targets};

//! Connections that cannot be opened, fail in use, or cannot be had from a pool.

use std::sync::Arc;
use std::time::Duration;

use super::server::ServerError;

/// Why a connection failed while a batch or a lookup was using it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Reading from or writing to the socket failed (a reset, a broken pipe, a TLS error).
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The server closed the connection without a word.
    #[error("the server closed the connection")]
    Closed,
    /// The server ended the session with a `FATAL` error (for example
    /// `pg_terminate_backend`, or a server shutting down).
    #[error("the server ended the session: {0}")]
    Session(Box<ServerError>),
    /// The server sent something the protocol does not allow at this point. The
    /// connection is discarded.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Why a connection could not be opened or is no longer usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string or configuration is invalid, or asks for something this
    /// build cannot do (TLS without the `rustls` feature). Fix the configuration.
    #[error("invalid connection configuration: {0}")]
    Config(String),
    /// The host could not be reached: the address does not resolve, nothing listens on
    /// the port, or the network failed during the handshake. Check that the server runs
    /// and the host and port are right.
    #[error("could not connect to {host}: {source}")]
    Io {
        /// The host and port (or socket path) tried.
        host: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not finish the handshake within the configured `connect_timeout`
    /// (or, for a cancel request, did not acknowledge it in time).
    #[error("connecting to {host} timed out after {after:?}")]
    Timeout {
        /// The host and port tried.
        host: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// TLS could not be set up: the server does not offer it while `sslmode` requires
    /// it, the handshake failed, or the server's certificate did not verify (wrong CA,
    /// or a host name the certificate does not name under `verify-full`).
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// The host tried.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the session: wrong password (`28P01`), unknown database
    /// (`3D000`), too many connections (`53300`), a server starting up or shutting down.
    #[error("the server at {host} refused the connection: {error}")]
    Server {
        /// The host tried.
        host: String,
        /// The server's error.
        error: Box<ServerError>,
    },
    /// The server asked for an authentication method this crate does not implement
    /// (GSSAPI, SSPI), or the SCRAM exchange failed.
    #[error("authentication with {host} failed: {reason}")]
    Authentication {
        /// The host tried.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The server broke the protocol during the handshake.
    #[error("protocol violation while connecting to {host}: {reason}")]
    Protocol {
        /// The host tried.
        host: String,
        /// What was wrong.
        reason: String,
    },
    /// The connection is closed (by the server, the network, or an earlier failure).
    /// A pool discards it; open a new one.
    #[error("the connection is closed")]
    Closed,
    /// The server is not the kind `target_session_attrs` asks for: a hot standby or a
    /// read-only server when one that accepts writes is wanted, a primary when a standby
    /// is. With several hosts the next one is tried; alone, this says which host was what.
    /// During a failover, the new primary may still be read-only for a moment: retry.
    #[error("{host} is {found}, and target_session_attrs={wanted} asks for another kind of server")]
    WrongServer {
        /// The host tried.
        host: String,
        /// What the server is.
        found: &'static str,
        /// The `target_session_attrs` value.
        wanted: &'static str,
    },
    /// None of several hosts gave a suitable connection: each host's reason, in the order
    /// they were tried (a host refusing, timing out, or being the wrong kind of server).
    #[error(
        "no host gave a suitable connection: {}",
        failures.iter().map(|(host, error)| format!("{host}: {error}")).collect::<Vec<_>>().join("; ")
    )]
    NoSuitableHost {
        /// Each host tried (`host:port`) and why it failed.
        failures: Vec<(String, ConnectError)>,
    },
    /// The connection is open but not idle: answers of an interrupted batch are still
    /// due, or the server reports a transaction in progress. A pool discards it.
    #[error("the connection is not idle: an interrupted batch left it in an unknown state")]
    Unclean,
}

/// Why no connection could be had from the pool. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool had no idle connection and could not open one within its
    /// `connection_timeout`. When opening connections failed meanwhile, the last failure
    /// is kept: a wrong password or a server that is down shows here.
    #[error("timed out waiting for a pooled connection{}", last_connect_error.as_ref().map(|e| format!(" (last connection attempt: {e})")).unwrap_or_default())]
    TimedOut {
        /// The last error of the pool's attempts to open a connection, if any failed.
        last_connect_error: Option<Arc<ConnectError>>,
    },
    /// Opening a new connection failed.
    #[error("could not open a connection: {0}")]
    Connect(#[source] ConnectError),
}

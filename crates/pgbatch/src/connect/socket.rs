//! Where a connection goes and the socket it goes over: a host's addresses, TCP with
//! keepalive and `TCP_NODELAY`, or a Unix socket. Start-up and cancel requests both open
//! their sockets here.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use tokio_postgres::config::Host;

use super::io::Stream;
use crate::error::ConnectError;

/// One address a connection can be opened to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Tcp { host: String, addr: SocketAddr },
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, addr } if host == &addr.ip().to_string() => write!(f, "{addr}"),
            Target::Tcp { host, addr } => write!(f, "{host} ({addr})"),
            Target::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Target {
    /// The address and port telemetry names (`server.address`, `server.port`): the host
    /// name as configured, or the socket's path.
    pub(crate) fn address_and_port(&self) -> (String, Option<u16>) {
        match self {
            Target::Tcp { host, addr } => (host.clone(), Some(addr.port())),
            Target::Unix(path) => (path.display().to_string(), None),
        }
    }
}

/// The addresses of one host.
pub(crate) async fn targets(host: &Host, hostaddr: Option<IpAddr>, port: u16) -> Result<Vec<Target>, ConnectError> {
    Ok(match host {
        Host::Unix(dir) => vec![Target::Unix(dir.join(format!(".s.PGSQL.{port}")))],
        Host::Tcp(name) => match hostaddr {
            Some(ip) => vec![Target::Tcp { host: name.clone(), addr: SocketAddr::new(ip, port) }],
            None => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|source| ConnectError::Io { host: format!("{name}:{port}"), source })?
                .map(|addr| Target::Tcp { host: name.clone(), addr })
                .collect(),
        },
    })
}

/// Opens the socket to `target`, with the TCP settings of `config` when given (keepalives,
/// `tcp_user_timeout`); a cancel request's socket gives none.
pub(crate) async fn open_socket(
    target: &Target,
    config: Option<&tokio_postgres::Config>,
) -> Result<Box<dyn Stream>, ConnectError> {
    let io_error = |source| ConnectError::Io { host: target.to_string(), source };
    Ok(match target {
        Target::Tcp { addr, .. } => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(io_error)?;
            stream.set_nodelay(true).map_err(io_error)?;
            if let Some(config) = config {
                let socket = socket2::SockRef::from(&stream);
                if let Some(keepalive) = keepalive(config) {
                    socket.set_tcp_keepalive(&keepalive).map_err(io_error)?;
                }
                if let Some(&timeout) = config.get_tcp_user_timeout() {
                    set_user_timeout(&socket, timeout).map_err(io_error)?;
                }
            }
            Box::new(stream)
        }
        #[cfg(unix)]
        Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await.map_err(io_error)?),
        #[cfg(not(unix))]
        Target::Unix(_) => return Err(ConnectError::Config("Unix sockets are not available on this platform".into())),
    })
}

/// Sets `TCP_USER_TIMEOUT`: how long written data may stay unacknowledged before the
/// kernel gives up on the connection.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
fn set_user_timeout(socket: &socket2::SockRef<'_>, timeout: std::time::Duration) -> std::io::Result<()> {
    socket.set_tcp_user_timeout(Some(timeout))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
fn set_user_timeout(_: &socket2::SockRef<'_>, _: std::time::Duration) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "tcp_user_timeout is only supported on Linux"))
}

/// The keepalive settings of a configuration (see [`Config`](super::config::Config) for pgbatch's defaults).
fn keepalive(config: &tokio_postgres::Config) -> Option<socket2::TcpKeepalive> {
    if !config.get_keepalives() {
        return None;
    }
    let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
    #[cfg(not(any(target_os = "openbsd", target_os = "redox", target_os = "solaris")))]
    if let Some(interval) = config.get_keepalives_interval() {
        keepalive = keepalive.with_interval(interval);
    }
    #[cfg(not(any(target_os = "openbsd", target_os = "redox", target_os = "solaris", target_os = "windows")))]
    if let Some(retries) = config.get_keepalives_retries() {
        keepalive = keepalive.with_retries(retries);
    }
    Some(keepalive)
}

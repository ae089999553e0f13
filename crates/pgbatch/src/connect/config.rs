//! Where and how to connect: tokio-postgres's configuration (hosts, user, database,
//! timeouts) plus TLS as libpq means it (`sslmode` up to `verify-full`, `sslrootcert`).

use std::path::PathBuf;
use std::time::Duration;

use super::modes::{SslMode, TargetSessionAttrs};

/// tokio-postgres's default idle time before the first keepalive probe.
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// pgbatch's default idle time before the first keepalive probe (`keepalives_idle`).
pub(crate) const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
/// pgbatch's default time between keepalive probes (`keepalives_interval`).
pub(crate) const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
/// pgbatch's default number of unanswered probes before the connection is dropped
/// (`keepalives_retries`).
pub(crate) const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// pgbatch's default limit on how long written data may stay unacknowledged
/// (`tcp_user_timeout`).
pub(crate) const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to connect.
///
/// Parse it from a `postgres://` URL or a libpq `key=value` string; every key
/// tokio-postgres understands works, several hosts included (`host=a,b port=5432,5433`, or
/// `postgres://a:5432,b:5433/db`), and `sslmode`, `sslrootcert` and `target_session_attrs`
/// mean what they mean to libpq. A value pgbatch cannot honour (`channel_binding=require`,
/// `sslnegotiation=direct`) fails the connection with an error naming it, never ignored:
///
/// ```
/// let config: pgbatch::Config =
///     "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem".parse()?;
/// assert_eq!(config.get_ssl_mode(), pgbatch::SslMode::VerifyFull);
/// # Ok::<(), pgbatch::ConnectError>(())
/// ```
///
/// A `tokio_postgres::Config` converts into one, keeping its `sslmode`.
///
/// # Dead-server detection
///
/// A server that vanishes without closing its connections (a host lost, a network
/// partition, a failover that moves an address) leaves a connection waiting forever unless
/// TCP notices. tokio-postgres's defaults notice late (a first keepalive probe after 2
/// hours, and the kernel's retransmission timeout, about 15 minutes on Linux, for unanswered
/// writes), so pgbatch sets its own wherever the configuration leaves tokio-postgres's:
///
/// | setting | pgbatch's default | effect |
/// |---|---|---|
/// | `keepalives` | on | |
/// | `keepalives_idle` | 30 s | an idle connection is probed after 30 s of silence |
/// | `keepalives_interval` | 10 s | then every 10 s |
/// | `keepalives_retries` | 3 | and dropped when they go unanswered (on Linux, once nothing has been acknowledged for `tcp_user_timeout`): within about 90 s |
/// | `tcp_user_timeout` | 60 s (Linux) | a connection whose writes go unacknowledged for 60 s is dropped |
/// | `connect_timeout` | 10 s, per host | a host that accepts TCP but never answers fails the attempt (libpq waits forever) |
///
/// A value set in the URL (or on the `tokio_postgres::Config`) is kept; `keepalives=0`
/// turns keepalives off. A pool should also replace its connections from time to time, see
/// [`ConnectionManager`].
///
/// ```
/// let config: pgbatch::Config = "postgres://app@db/app?keepalives_idle=5".parse()?;
/// assert_eq!(config.postgres().get_keepalives_idle(), std::time::Duration::from_secs(5));
/// assert_eq!(config.postgres().get_tcp_user_timeout(), Some(&std::time::Duration::from_secs(60)));
/// # Ok::<(), pgbatch::ConnectError>(())
/// ```
///
/// [`ConnectionManager`]: crate::ConnectionManager
#[derive(Debug, Clone)]
pub struct Config {
    postgres: tokio_postgres::Config,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
    target_session_attrs: TargetSessionAttrs,
}

impl Config {
    /// The underlying tokio-postgres configuration: hosts, ports, user, password,
    /// database, options, application name, connect timeout, keepalives.
    pub fn postgres(&self) -> &tokio_postgres::Config {
        &self.postgres
    }

    /// Changes the underlying tokio-postgres configuration.
    pub fn postgres_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.postgres
    }

    /// Sets the TLS mode.
    pub fn ssl_mode(&mut self, mode: SslMode) -> &mut Self {
        self.ssl_mode = mode;
        self
    }

    /// The TLS mode.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Trusts the certificates in this PEM file as roots when verifying the server
    /// (`verify-ca`, `verify-full`, and `require` when given), or the system's roots when
    /// the path is `system`.
    pub fn ssl_root_cert(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The root certificate file, if one was given.
    pub fn get_ssl_root_cert(&self) -> Option<&std::path::Path> {
        self.ssl_root_cert.as_deref()
    }

    /// Sets which server of the listed hosts a connection may end on.
    pub fn target_session_attrs(&mut self, attrs: TargetSessionAttrs) -> &mut Self {
        self.target_session_attrs = attrs;
        self
    }

    /// Which server of the listed hosts a connection may end on.
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// Replaces tokio-postgres's TCP defaults (a first keepalive probe after 2 hours, and
    /// the operating system's retransmission timeout, about 15 minutes on Linux) with
    /// pgbatch's, each only where the configuration still holds tokio-postgres's default.
    fn detect_dead_servers_sooner(&mut self) {
        let postgres = &mut self.postgres;
        if !postgres.get_keepalives() {
            return;
        }
        if postgres.get_keepalives_idle() == TOKIO_POSTGRES_KEEPALIVES_IDLE {
            postgres.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
        }
        if postgres.get_keepalives_interval().is_none() {
            postgres.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
        }
        if postgres.get_keepalives_retries().is_none() {
            postgres.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
        }
        if postgres.get_tcp_user_timeout().is_none() {
            postgres.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
    }

    /// The first setting pgbatch cannot honour, with what to set instead.
    pub(crate) fn unsupported(&self) -> Option<String> {
        use tokio_postgres::config::{ChannelBinding, SslNegotiation};
        if self.postgres.get_channel_binding() == ChannelBinding::Require {
            return Some(
                "channel_binding=require is not supported: pgbatch does not implement SCRAM-SHA-256-PLUS; use \
                 channel_binding=prefer or disable, with sslmode=verify-full to authenticate the server"
                    .into(),
            );
        }
        if self.postgres.get_ssl_negotiation() == SslNegotiation::Direct {
            return Some(
                "sslnegotiation=direct is not supported: pgbatch negotiates TLS with an SSLRequest; use \
                 sslnegotiation=postgres"
                    .into(),
            );
        }
        None
    }
}

impl From<tokio_postgres::Config> for Config {
    fn from(postgres: tokio_postgres::Config) -> Self {
        let ssl_mode = match postgres.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let target_session_attrs = match postgres.get_target_session_attrs() {
            tokio_postgres::config::TargetSessionAttrs::ReadWrite => TargetSessionAttrs::ReadWrite,
            _ => TargetSessionAttrs::Any,
        };
        let mut config = Config { postgres, ssl_mode, ssl_root_cert: None, target_session_attrs };
        config.detect_dead_servers_sooner();
        config
    }
}

impl From<&tokio_postgres::Config> for Config {
    fn from(postgres: &tokio_postgres::Config) -> Self {
        Config::from(postgres.clone())
    }
}

impl From<&Config> for Config {
    fn from(config: &Config) -> Self {
        config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_servers_are_detected_within_a_minute_unless_the_url_says_otherwise() {
        let config: Config = "postgres://h/db".parse().unwrap();
        let postgres = config.postgres();
        assert!(postgres.get_keepalives());
        assert_eq!(postgres.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(postgres.get_keepalives_interval(), Some(DEFAULT_KEEPALIVES_INTERVAL));
        assert_eq!(postgres.get_keepalives_retries(), Some(DEFAULT_KEEPALIVES_RETRIES));
        assert_eq!(postgres.get_tcp_user_timeout(), Some(&DEFAULT_TCP_USER_TIMEOUT));

        let config: Config =
            "host=h keepalives_idle=600 keepalives_interval=1 keepalives_retries=9 tcp_user_timeout=5".parse().unwrap();
        let postgres = config.postgres();
        assert_eq!(postgres.get_keepalives_idle(), Duration::from_secs(600));
        assert_eq!(postgres.get_keepalives_interval(), Some(Duration::from_secs(1)));
        assert_eq!(postgres.get_keepalives_retries(), Some(9));
        assert_eq!(postgres.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));

        let off: Config = "postgres://h/db?keepalives=0".parse().unwrap();
        assert!(!off.postgres().get_keepalives());
    }

    #[test]
    fn the_default_is_prefer() {
        let config: Config = "postgres://h/db".parse().unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
    }
}

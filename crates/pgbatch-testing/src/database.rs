//! A fresh database per test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use testcontainers::ContainerAsync;
use testcontainers::runners::AsyncRunner;
use testcontainers_modules::postgres::Postgres;
use tokio::sync::OnceCell;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::LocalCluster;
use crate::proxy::{Proxy, ProxyBuilder};

/// Where the server behind a [`TestDatabase`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerSource {
    /// The `DATABASE_URL` environment variable.
    DatabaseUrl,
    /// The libpq environment variables (`PGHOST`, ...).
    Libpq,
    /// A server answering on PostgreSQL's standard address, `127.0.0.1:5432`, as the user
    /// `postgres` without a password (a local install with trust authentication).
    StandardPort,
    /// A private cluster started from the PostgreSQL binaries installed on this machine
    /// ([`LocalCluster`](crate::LocalCluster)).
    PrivateCluster,
    /// A container started through testcontainers.
    Container,
    /// A server the caller named ([`TestDatabase::create_on`]).
    Explicit,
}

/// Why no test database could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// No server was configured, none answered on the standard port, no private cluster
    /// could be started and no Docker daemon answered.
    #[error(
        "no PostgreSQL server for tests. Any one of these works: set DATABASE_URL (e.g. \
         postgres://postgres@127.0.0.1:5432/postgres) or the libpq variables PGHOST/PGPORT/PGUSER/PGPASSWORD; \
         run a server on 127.0.0.1:5432 that lets the user postgres in; install PostgreSQL's server binaries \
         (e.g. `apt-get install -y postgresql`) so that a private cluster can be started; or start a Docker \
         daemon for a throwaway container. (Private cluster: {cluster}. Docker: {docker}.)"
    )]
    NoServer {
        /// Why no private cluster could be started.
        cluster: String,
        /// Why the container could not be started.
        docker: String,
    },
    /// `DATABASE_URL` does not parse as a connection string.
    #[error("DATABASE_URL is not a valid connection string: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// The server was found but refused the connection or the `CREATE DATABASE`.
    #[error("could not create a test database on the {source_name} server: {}", chain(error))]
    Server {
        /// Which server.
        source_name: &'static str,
        /// The server's error.
        #[source]
        error: tokio_postgres::Error,
    },
}

/// An error and its sources on one line: tokio-postgres puts the cause (connection
/// refused, authentication failed) in the source, not in its own message.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The server tests run against, found once per process.
struct Server {
    admin: Config,
    source: ServerSource,
    /// Keeps the container, if any, alive for the whole process.
    _container: Option<ContainerAsync<Postgres>>,
    /// Keeps the private cluster, if any, running until the process exits.
    _cluster: Option<LocalCluster>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// A database created for one test and dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    config: Config,
    admin: Config,
    source: ServerSource,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the server found as the crate docs describe.
    ///
    /// # Errors
    ///
    /// [`SetupError::NoServer`] when no server is configured and Docker does not answer;
    /// [`SetupError::Server`] when the server refuses the connection or the database.
    pub async fn create() -> Result<Self, SetupError> {
        let server = SERVER.get_or_try_init(find_server).await?;
        Self::create_with(&server.admin, server.source).await
    }

    /// Creates a fresh database on the server `admin` connects to (as a user allowed to
    /// create databases), for example a [`LocalCluster`](crate::LocalCluster) of a test's
    /// own.
    ///
    /// # Errors
    ///
    /// [`SetupError::Server`] when the server refuses the connection or the database.
    pub async fn create_on(admin: &Config) -> Result<Self, SetupError> {
        Self::create_with(admin, ServerSource::Explicit).await
    }

    async fn create_with(admin_config: &Config, source: ServerSource) -> Result<Self, SetupError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("pgbatch_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = connect(admin_config).await.map_err(|error| server_error(source, error))?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|error| server_error(source, error))?;
        let mut config = admin_config.clone();
        config.dbname(&name);
        Ok(TestDatabase { name, config, admin: admin_config.clone(), source })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the server came from.
    pub fn source(&self) -> ServerSource {
        self.source
    }

    /// A tokio-postgres configuration for this database.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A `postgres://` URL for this database, for libraries that take one (diesel-async).
    pub fn url(&self) -> String {
        url_of(&self.config)
    }

    /// The server's TCP address: the target of a [`Proxy`] put in front of it.
    ///
    /// # Errors
    ///
    /// When the configuration names no TCP host (a Unix socket) or the host does not resolve.
    pub async fn server_addr(&self) -> std::io::Result<SocketAddr> {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            _ => return Err(std::io::Error::other("the test server is not reached over TCP")),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host} does not resolve")))
    }

    /// A proxy builder whose target is this database's server.
    ///
    /// # Errors
    ///
    /// As for [`server_addr`](Self::server_addr).
    pub async fn proxy(&self) -> std::io::Result<ProxyBuilder> {
        Ok(Proxy::builder(self.server_addr().await?))
    }

    /// This database's configuration with `proxy` as its only host. (Cloning
    /// [`config`](Self::config) and calling `host()` would add a host, not replace it.)
    /// TLS is disabled (`sslmode=disable`): the proxy reads the protocol's messages to
    /// place its faults, which it cannot do in an encrypted stream.
    pub fn config_via(&self, proxy: &Proxy) -> Config {
        let mut config = Config::new();
        config.host(proxy.addr().ip().to_string()).port(proxy.addr().port()).dbname(&self.name);
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        config
    }

    /// A `postgres://` URL of this database through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        url_of(&self.config_via(proxy))
    }

    /// Opens a plain tokio-postgres connection to this database, with its driver spawned
    /// on the current runtime. Use it to set up schemas and to check what a test wrote.
    ///
    /// # Errors
    ///
    /// The connection error.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        connect(&self.config).await
    }

    /// Runs SQL (several statements allowed) on a fresh connection to this database.
    ///
    /// # Errors
    ///
    /// The connection's or the server's error.
    pub async fn execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.connect().await?.batch_execute(sql).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime (or while a test panics); a thread of its own with
        // its own runtime can block on the DROP without either mattering.
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = connect(&admin).await.ok()?;
                client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("pgbatch-testing: could not drop test database; it will be dropped by the next test run");
        }
    }
}

async fn find_server() -> Result<Server, SetupError> {
    let (mut container, mut cluster) = (None, None);
    let (admin, source) = if let Ok(url) = std::env::var("DATABASE_URL") {
        (url.parse::<Config>().map_err(SetupError::InvalidUrl)?, ServerSource::DatabaseUrl)
    } else if std::env::var_os("PGHOST").is_some() {
        (libpq_config(), ServerSource::Libpq)
    } else if let Some(config) = standard_port().await {
        (config, ServerSource::StandardPort)
    } else {
        // Starting a cluster blocks on initdb and pg_ctl: off the runtime's threads.
        let started = tokio::task::spawn_blocking(|| LocalCluster::start(&[])).await;
        match started.map_err(|panicked| panicked.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            Ok(started) => (cluster.insert(started).config(), ServerSource::PrivateCluster),
            Err(why_not) => {
                let (config, started) = start_container(why_not).await?;
                container = Some(started);
                (config, ServerSource::Container)
            }
        }
    };
    let server = Server { admin, source, _container: container, _cluster: cluster };
    drop_abandoned_databases(&server).await;
    Ok(server)
}

/// The server on `127.0.0.1:5432`, when it lets the user `postgres` in without a password.
async fn standard_port() -> Option<Config> {
    let mut config = Config::new();
    config.host("127.0.0.1").port(5432).user("postgres").dbname("postgres");
    config.connect_timeout(Duration::from_secs(2));
    let client = connect(&config).await.ok()?;
    client.simple_query("SELECT 1").await.ok()?;
    config.connect_timeout(Duration::from_secs(10));
    Some(config)
}

/// A throwaway container; `cluster` says why no private cluster could be started instead.
async fn start_container(cluster: String) -> Result<(Config, ContainerAsync<Postgres>), SetupError> {
    let no_server = |error: testcontainers::TestcontainersError| SetupError::NoServer {
        cluster: cluster.clone(),
        docker: error.to_string(),
    };
    let container = Postgres::default().start().await.map_err(no_server)?;
    let host = container.get_host().await.map_err(no_server)?;
    let port = container.get_host_port_ipv4(5432).await.map_err(no_server)?;
    let mut config = Config::new();
    config.host(host.to_string()).port(port).user("postgres").password("postgres").dbname("postgres");
    Ok((config, container))
}

fn libpq_config() -> Config {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut config = Config::new();
    config.host(var("PGHOST").unwrap_or_else(|| "localhost".into()));
    config.port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432));
    config.user(var("PGUSER").or_else(|| var("USER")).unwrap_or_else(|| "postgres".into()));
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    config.dbname(var("PGDATABASE").unwrap_or_else(|| "postgres".into()));
    config.connect_timeout(Duration::from_secs(10));
    config
}

/// Drops test databases whose creating process no longer runs (a test run killed before
/// its databases could be dropped).
async fn drop_abandoned_databases(server: &Server) {
    let Ok(client) = connect(&server.admin).await else { return };
    let Ok(rows) =
        crate::query_rows(&client, "SELECT datname FROM pg_database WHERE datname LIKE 'pgbatch\\_test\\_%'").await
    else {
        return;
    };
    for name in rows.into_iter().filter_map(|row| row.into_iter().next().flatten()) {
        let pid = name.trim_start_matches("pgbatch_test_").split('_').next().and_then(|p| p.parse::<u32>().ok());
        let abandoned = pid.is_some_and(|pid| {
            pid != std::process::id()
                && std::path::Path::new("/proc").exists()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        if abandoned {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
        }
    }
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The connection's end is reported to its client's requests; nothing to add here.
        let _ = connection.await;
    });
    Ok(client)
}

fn server_error(source: ServerSource, error: tokio_postgres::Error) -> SetupError {
    let source_name = match source {
        ServerSource::DatabaseUrl => "DATABASE_URL",
        ServerSource::Libpq => "PGHOST",
        ServerSource::StandardPort => "127.0.0.1:5432",
        ServerSource::PrivateCluster => "private cluster",
        ServerSource::Container => "container",
        ServerSource::Explicit => "given",
    };
    SetupError::Server { source_name, error }
}

/// Renders a `Config` with one TCP host as a URL.
fn url_of(config: &Config) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().map(encode).unwrap_or_default();
    let password =
        config.get_password().map(|p| format!(":{}", encode(&String::from_utf8_lossy(p)))).unwrap_or_default();
    let dbname = config.get_dbname().map(encode).unwrap_or_default();
    let options = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "?sslmode=disable",
        _ => "",
    };
    format!("postgres://{user}{password}@{host}:{port}/{dbname}{options}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded() {
        let mut config = Config::new();
        config.host("127.0.0.1").port(5433).user("post gres").password("p@ss").dbname("db");
        assert_eq!(url_of(&config), "postgres://post%20gres:p%40ss@127.0.0.1:5433/db");
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        assert_eq!(url_of(&config), "postgres://post%20gres:p%40ss@127.0.0.1:5433/db?sslmode=disable");
    }
}

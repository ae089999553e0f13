//! A fresh database per test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::LocalCluster;
use crate::container;
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
    /// `PGBATCH_TEST_SERVER=container` asked for a container, and none could be started.
    #[error(
        "PGBATCH_TEST_SERVER=container: could not start a container of the image {image}: {error}. Is a Docker \
         daemon running and does the image exist (PGBATCH_TEST_IMAGE names another)?"
    )]
    Container {
        /// The image asked for.
        image: String,
        /// testcontainers' error.
        error: String,
    },
    /// `PGBATCH_TEST_SERVER=cluster` asked for a private cluster, and none could be started.
    #[error("PGBATCH_TEST_SERVER=cluster: could not start a private cluster: {0}")]
    Cluster(#[source] crate::ClusterError),
    /// `PGBATCH_TEST_SERVER` holds a value other than `container` or `cluster`.
    #[error("PGBATCH_TEST_SERVER={0:?} is not a server source: use `container` or `cluster`, or unset it")]
    InvalidServerSetting(String),
    /// `DATABASE_URL` does not parse as a connection string pgbatch accepts.
    #[error("DATABASE_URL is not a valid connection string: {0}")]
    InvalidUrl(#[source] pgbatch::ConnectError),
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
    /// Keeps the container, if any, for the whole process.
    container: Option<container::Started>,
    /// Keeps the private cluster, if any, running until the process exits.
    cluster: Option<LocalCluster>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// Leaves the server this process started for its tests (a container, a private cluster)
/// running after the process exits, so that a kept database stays reachable, and returns
/// the shell command that removes it; `None` when the server is not this process's own.
pub(crate) fn keep_server() -> Option<String> {
    let server = SERVER.get()?;
    let (watched, removal) = match (&server.container, &server.cluster) {
        (Some(started), _) => {
            let id = started.container.id();
            (PathBuf::from(id), format!("docker rm -f -v {id}"))
        }
        (None, Some(cluster)) => (cluster.data_dir().to_owned(), cluster.removal()),
        (None, None) => return None,
    };
    std::fs::write(crate::cluster::keep_marker(&watched), b"").ok()?;
    Some(removal)
}

/// Names, when a database is dropped, another one to drop with it.
pub(crate) struct DropWith(pub(crate) Box<dyn FnOnce() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for DropWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropWith")
    }
}

/// A database created for one test and dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    config: Config,
    admin: Config,
    source: ServerSource,
    /// Says, when this database is dropped, which other database goes with it: the
    /// template it was cloned from, when it was that template's last copy.
    pub(crate) drop_with: Option<DropWith>,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the server found as the crate docs describe.
    ///
    /// # Errors
    ///
    /// [`SetupError::NoServer`] when no server is configured and Docker does not answer;
    /// [`SetupError::Server`] when the server refuses the connection or the database.
    pub async fn create() -> Result<Self, SetupError> {
        let (admin, source) = Self::server().await?;
        Self::create_with(&admin, source).await
    }

    /// Creates a fresh database on the server `admin` connects to (as a user allowed to
    /// create databases), for example a [`LocalCluster`](crate::LocalCluster) of a test's
    /// own.
    ///
    /// # Errors
    ///
    /// [`SetupError::Server`] when the server refuses the connection or the database.
    ///
    /// With several hosts (a failover formation's URL, standby first or not), the database
    /// is created on the first one that accepts writes, as pgbatch follows such a URL with
    /// `target_session_attrs=read-write`, and the test database is reached there.
    pub async fn create_on(admin: &Config) -> Result<Self, SetupError> {
        Self::create_with(&writable_host(admin).await, ServerSource::Explicit).await
    }

    async fn create_with(admin_config: &Config, source: ServerSource) -> Result<Self, SetupError> {
        Self::create_from(admin_config, source, None).await
    }

    /// Creates a database, empty or as a copy of `template` (`CREATE DATABASE ... TEMPLATE`).
    pub(crate) async fn create_from(
        admin_config: &Config,
        source: ServerSource,
        template: Option<&str>,
    ) -> Result<Self, SetupError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("pgbatch_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = connect(admin_config).await.map_err(|error| server_error(source, error))?;
        let create = match template {
            Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        admin.batch_execute(&create).await.map_err(|error| server_error(source, error))?;
        let mut config = admin_config.clone();
        config.dbname(&name);
        Ok(TestDatabase { name, config, admin: admin_config.clone(), source, drop_with: None })
    }

    /// The server's admin configuration and where it came from, found once per process.
    pub(crate) async fn server() -> Result<(Config, ServerSource), SetupError> {
        let server = SERVER.get_or_try_init(find_server).await?;
        Ok((server.admin.clone(), server.source))
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

    /// A pgbatch configuration for this database, with `DATABASE_URL`'s TLS settings
    /// (`sslmode` up to `verify-full`, `sslrootcert`) when it asks for TLS.
    pub fn connection_config(&self) -> pgbatch::Config {
        let mut config = pgbatch::Config::from(&self.config);
        if let (tokio_postgres::config::SslMode::Require, Some(tls)) = (self.config.get_ssl_mode(), URL_TLS.get()) {
            config.ssl_mode(tls.get_ssl_mode());
            if let Some(root) = tls.get_ssl_root_cert() {
                config.ssl_root_cert(root);
            }
        }
        config
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

impl TestDatabase {
    /// Keeps the database (a template): returns its name, and dropping no longer drops it.
    pub(crate) fn into_name(mut self) -> String {
        std::mem::take(&mut self.name)
    }

    /// Drops databases `names` on the server `admin` reaches, from a thread of its own with
    /// its own runtime: a `Drop` may run inside a runtime, or while a test panics, and can
    /// block on it without either mattering.
    pub(crate) fn drop_databases(admin: &Config, names: Vec<String>) {
        let admin = admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = connect(&admin).await.ok()?;
                for name in names {
                    client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.ok()?;
                }
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("pgbatch-testing: could not drop a test database; it will be dropped by the next test run");
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // The template too, when this was the last database cloned from it.
        let template = self.drop_with.take().and_then(|drop_with| (drop_with.0)());
        let names: Vec<String> = std::iter::once(name).chain(template).filter(|name| !name.is_empty()).collect();
        if !names.is_empty() {
            Self::drop_databases(&self.admin, names);
        }
    }
}

async fn find_server() -> Result<Server, SetupError> {
    let (mut container, mut cluster) = (None, None);
    let forced = std::env::var("PGBATCH_TEST_SERVER").ok().filter(|value| !value.is_empty());
    let url = std::env::var("DATABASE_URL").ok();
    let (admin, source) = match (forced.as_deref(), url) {
        (Some("container"), _) => {
            let image = container::image();
            let started = container::start(&image).await.map_err(|error| SetupError::Container { image, error })?;
            (container.insert(started).config.clone(), ServerSource::Container)
        }
        (Some("cluster"), _) => {
            let started = start_cluster().await.map_err(SetupError::Cluster)?;
            (cluster.insert(started).config(), ServerSource::PrivateCluster)
        }
        (Some(other), _) => return Err(SetupError::InvalidServerSetting(other.to_owned())),
        (None, Some(url)) => (writable_host(&url_config(&url)?).await, ServerSource::DatabaseUrl),
        (None, None) if std::env::var_os("PGHOST").is_some() => (libpq_config(), ServerSource::Libpq),
        (None, None) => match standard_port().await {
            Some(config) => (config, ServerSource::StandardPort),
            None => match start_cluster().await {
                Ok(started) => (cluster.insert(started).config(), ServerSource::PrivateCluster),
                Err(why_not) => {
                    let image = container::image();
                    let started = container::start(&image)
                        .await
                        .map_err(|docker| SetupError::NoServer { cluster: why_not.to_string(), docker })?;
                    (container.insert(started).config.clone(), ServerSource::Container)
                }
            },
        },
    };
    let server = Server { admin, source, container, cluster };
    drop_abandoned_databases(&server).await;
    Ok(server)
}

/// With several hosts, `admin` narrowed to the first host that accepts writes (databases
/// can only be created there), as pgbatch itself follows the list with
/// `target_session_attrs=read-write`; `admin` as it is with one host, or when no host
/// answers as writable (the error then comes from the server itself).
async fn writable_host(admin: &Config) -> Config {
    let hosts = admin.get_hosts();
    if hosts.len() < 2 {
        return admin.clone();
    }
    let ports = admin.get_ports();
    for (index, host) in hosts.iter().enumerate() {
        let Host::Tcp(name) = host else { continue };
        // `host()` and `port()` add to a configuration's lists: build one with this host only.
        let mut single = Config::new();
        single.host(name).port(ports.get(index).or(ports.first()).copied().unwrap_or(5432));
        single.ssl_mode(admin.get_ssl_mode());
        single.connect_timeout(admin.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10)));
        if let Some(user) = admin.get_user() {
            single.user(user);
        }
        if let Some(password) = admin.get_password() {
            single.password(password);
        }
        if let Some(dbname) = admin.get_dbname() {
            single.dbname(dbname);
        }
        let Ok(client) = connect(&single).await else { continue };
        let writable = crate::query_value(&client, "SELECT NOT pg_is_in_recovery()").await;
        if writable.ok().flatten().as_deref() == Some("t") {
            return single;
        }
    }
    admin.clone()
}

/// A private cluster; starting one blocks on initdb and pg_ctl, so off the runtime's threads.
async fn start_cluster() -> Result<LocalCluster, crate::ClusterError> {
    tokio::task::spawn_blocking(|| LocalCluster::start(&[])).await.unwrap_or_else(|panicked| {
        Err(crate::ClusterError::Io {
            what: "starting a private cluster".into(),
            source: std::io::Error::other(panicked),
        })
    })
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

/// `DATABASE_URL` read as pgbatch reads it (libpq's `sslmode` values up to `verify-full`,
/// `sslrootcert`), as the tokio-postgres configuration the harness's own connections use;
/// when it asks for TLS, its TLS settings are kept for them.
fn url_config(url: &str) -> Result<Config, SetupError> {
    use pgbatch::SslMode;
    let parsed: pgbatch::Config = url.parse().map_err(SetupError::InvalidUrl)?;
    let mut config = parsed.postgres().clone();
    let tls_required = matches!(parsed.get_ssl_mode(), SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull);
    config.ssl_mode(match parsed.get_ssl_mode() {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        _ if tls_required => tokio_postgres::config::SslMode::Require,
        _ => tokio_postgres::config::SslMode::Prefer,
    });
    if tls_required {
        let _ = URL_TLS.set(parsed);
    }
    Ok(config)
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

/// The TLS settings of `DATABASE_URL` (`sslmode`, `sslrootcert`) when it asks for TLS: the
/// harness's connections to that server use them as pgbatch would.
static URL_TLS: std::sync::OnceLock<pgbatch::Config> = std::sync::OnceLock::new();

/// Opens a tokio-postgres connection, its driver spawned on the current runtime: in the
/// clear, or over TLS made as pgbatch makes it when the configuration requires TLS.
pub(crate) async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        return Ok(client);
    }
    let tls = URL_TLS.get().cloned().unwrap_or_else(|| pgbatch::Config::from(config));
    let (client, connection) = config.connect(crate::tls::HarnessTls { config: tls }).await?;
    tokio::spawn(connection);
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
    let options = match (config.get_ssl_mode(), URL_TLS.get()) {
        (tokio_postgres::config::SslMode::Disable, _) => "?sslmode=disable".to_owned(),
        // DATABASE_URL's own TLS settings, for libraries that take a URL.
        (tokio_postgres::config::SslMode::Require, Some(tls)) => {
            let root = tls
                .get_ssl_root_cert()
                .map(|root| format!("&sslrootcert={}", encode(&root.to_string_lossy())))
                .unwrap_or_default();
            format!("?sslmode={}{root}", tls.get_ssl_mode().name())
        }
        (tokio_postgres::config::SslMode::Require, None) => "?sslmode=require".to_owned(),
        _ => String::new(),
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

//! Opening a connection: the socket, TLS, the startup message and authentication
//! (cleartext, MD5, SCRAM-SHA-256), up to the server's first `ReadyForQuery`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::config::Host;

use super::cancel::CancelToken;
use super::config::Config;
use super::connection::{Connection, server_error};
use super::io::{Io, Stream};
use super::session::Session;
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

/// Opens a connection to the first host of `config` that accepts it.
pub(crate) async fn connect(config: &Config, session: Arc<Session>) -> Result<Connection, ConnectError> {
    let postgres = config.postgres();
    let hosts = postgres.get_hosts();
    if hosts.is_empty() {
        return Err(ConnectError::Config("no host given: set host in the URL or connection string".into()));
    }
    let ports = postgres.get_ports();
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(ConnectError::Config(format!(
            "{} ports for {} hosts: give one port, or one per host",
            ports.len(),
            hosts.len()
        )));
    }
    let port_of = |index: usize| match ports {
        [] => 5432,
        [port] => *port,
        ports => ports.get(index).copied().unwrap_or(5432),
    };
    let mut last_error = None;
    for (index, host) in hosts.iter().enumerate() {
        let port = port_of(index);
        let host_name = match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        };
        let attempt = async {
            let mut error = None;
            for target in targets(host, postgres.get_hostaddrs().get(index).copied(), port).await? {
                match attempt(&target, &host_name, config, Arc::clone(&session)).await {
                    Ok(connection) => return Ok(connection),
                    Err(failed) => error = Some(failed),
                }
            }
            Err(error.unwrap_or_else(|| ConnectError::Config(format!("{host_name} resolves to no address"))))
        };
        let result = match postgres.get_connect_timeout() {
            Some(&after) => tokio::time::timeout(after, attempt)
                .await
                .unwrap_or_else(|_| Err(ConnectError::Timeout { host: format!("{host_name}:{port}"), after })),
            None => attempt.await,
        };
        match result {
            Ok(connection) => return Ok(connection),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.expect("at least one host was tried"))
}

/// The addresses of one host.
async fn targets(host: &Host, hostaddr: Option<IpAddr>, port: u16) -> Result<Vec<Target>, ConnectError> {
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

/// Opens the socket to `target`, with TCP keepalives when given.
pub(crate) async fn open_socket(
    target: &Target,
    keepalive: Option<&socket2::TcpKeepalive>,
) -> Result<Box<dyn Stream>, ConnectError> {
    let io_error = |source| ConnectError::Io { host: target.to_string(), source };
    Ok(match target {
        Target::Tcp { addr, .. } => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(io_error)?;
            stream.set_nodelay(true).map_err(io_error)?;
            if let Some(keepalive) = keepalive {
                socket2::SockRef::from(&stream).set_tcp_keepalive(keepalive).map_err(io_error)?;
            }
            Box::new(stream)
        }
        #[cfg(unix)]
        Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await.map_err(io_error)?),
        #[cfg(not(unix))]
        Target::Unix(_) => return Err(ConnectError::Config("Unix sockets are not available on this platform".into())),
    })
}

/// One attempt on one address.
async fn attempt(
    target: &Target,
    host: &str,
    config: &Config,
    session: Arc<Session>,
) -> Result<Connection, ConnectError> {
    let socket = open_socket(target, keepalive(config.postgres()).as_ref()).await?;
    let stream = super::tls::negotiate(socket, config, host).await?;
    let mut io = Io::new(stream);
    let fail = Failure { host: target.to_string() };

    let postgres = config.postgres();
    let user = match postgres.get_user() {
        Some(user) => user.to_owned(),
        None => whoami::username().map_err(|_| {
            ConnectError::Config("no user given and the operating system's user name is unknown".into())
        })?,
    };
    let mut parameters = vec![("client_encoding", "UTF8"), ("user", user.as_str())];
    if let Some(dbname) = postgres.get_dbname() {
        parameters.push(("database", dbname));
    }
    if let Some(name) = postgres.get_application_name() {
        parameters.push(("application_name", name));
    }
    if let Some(options) = postgres.get_options() {
        parameters.push(("options", options));
    }
    frontend::startup_message(parameters.iter().copied(), io.queue()).map_err(|e| fail.protocol(e))?;
    io.write_all().await.map_err(|e| fail.io(e))?;
    authenticate(&mut io, &user, postgres.get_password(), &fail).await?;

    let mut server_parameters = HashMap::new();
    let mut key = None;
    loop {
        match io.read_message().await.map_err(|e| fail.io(e))? {
            Message::BackendKeyData(body) => key = Some((body.process_id(), body.secret_key())),
            Message::ParameterStatus(body) => {
                if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                    server_parameters.insert(name.to_owned(), value.to_owned());
                }
            }
            Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => return Err(fail.server(&body)),
            Message::ReadyForQuery(_) => break,
            _ => return Err(fail.protocol("an unexpected message before the server was ready")),
        }
    }
    // A server without cancel keys (some poolers) gets a token that cancels nothing.
    let (process_id, secret_key) = key.unwrap_or((0, 0));
    let cancel = CancelToken::new(target.clone(), process_id, secret_key);
    let mut connection = Connection::new(io, server_parameters, cancel, Arc::clone(&session));
    super::exchange::run_setup(&mut connection, &session.setup).await.map_err(|error| match error {
        super::exchange::SetupError::Wire(e) => fail.protocol(e),
        super::exchange::SetupError::Server(error) => ConnectError::Server { host: fail.host.clone(), error },
    })?;
    Ok(connection)
}

/// The keepalive settings of a configuration (tokio-postgres's defaults: on, 2 hours idle).
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

async fn authenticate(io: &mut Io, user: &str, password: Option<&[u8]>, fail: &Failure) -> Result<(), ConnectError> {
    let password =
        || password.ok_or_else(|| fail.authentication("the server asks for a password and none was given".into()));
    loop {
        match io.read_message().await.map_err(|e| fail.io(e))? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?, io.queue()).map_err(|e| fail.protocol(e))?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), io.queue()).map_err(|e| fail.protocol(e))?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Ok(Some(mechanism)) = fallible_iterator::FallibleIterator::next(&mut mechanisms) {
                    offered.push(mechanism.to_owned());
                }
                if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(fail.authentication(format!("the server offers only {}", offered.join(", "))));
                }
                scram(io, password()?, fail).await?;
                continue;
            }
            Message::ErrorResponse(body) => return Err(fail.server(&body)),
            Message::AuthenticationGss | Message::AuthenticationSspi | Message::AuthenticationKerberosV5 => {
                return Err(fail.authentication("GSSAPI, SSPI and Kerberos are not supported".into()));
            }
            _ => return Err(fail.protocol("an unexpected message during authentication")),
        }
        io.write_all().await.map_err(|e| fail.io(e))?;
    }
}

/// SCRAM-SHA-256 (RFC 7677), without channel binding.
async fn scram(io: &mut Io, password: &[u8], fail: &Failure) -> Result<(), ConnectError> {
    let mut scram = ScramSha256::new(password, sasl::ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), io.queue()).map_err(|e| fail.protocol(e))?;
    io.write_all().await.map_err(|e| fail.io(e))?;
    let failed = |e: std::io::Error| fail.authentication(format!("SCRAM: {e}"));
    match io.read_message().await.map_err(|e| fail.io(e))? {
        Message::AuthenticationSaslContinue(body) => scram.update(body.data()).map_err(failed)?,
        Message::ErrorResponse(body) => return Err(fail.server(&body)),
        _ => return Err(fail.protocol("an unexpected message during SCRAM")),
    }
    frontend::sasl_response(scram.message(), io.queue()).map_err(|e| fail.protocol(e))?;
    io.write_all().await.map_err(|e| fail.io(e))?;
    match io.read_message().await.map_err(|e| fail.io(e))? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(failed),
        Message::ErrorResponse(body) => Err(fail.server(&body)),
        _ => Err(fail.protocol("an unexpected message during SCRAM")),
    }
}

/// Builds the errors of one attempt, naming its host.
struct Failure {
    host: String,
}

impl Failure {
    fn io(&self, source: std::io::Error) -> ConnectError {
        ConnectError::Io { host: self.host.clone(), source }
    }
    fn protocol(&self, reason: impl fmt::Display) -> ConnectError {
        ConnectError::Protocol { host: self.host.clone(), reason: reason.to_string() }
    }
    fn authentication(&self, reason: String) -> ConnectError {
        ConnectError::Authentication { host: self.host.clone(), reason }
    }
    fn server(&self, body: &postgres_protocol::message::backend::ErrorResponseBody) -> ConnectError {
        ConnectError::Server { host: self.host.clone(), error: Box::new(server_error(body.fields())) }
    }
}

//! Opening a connection: the socket, TLS, the startup message and authentication
//! (cleartext, MD5, SCRAM-SHA-256), up to the server's first `ReadyForQuery`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::config::Host;

use super::backend::{Backend, IDENTIFY, identity};
use super::flight::{Flight, Unit};
use super::state::{Connection, EndBackend, Peer};
use super::step::queue_read;
use crate::connect::CancelToken;
use crate::connect::Io;
use crate::connect::Session;
use crate::connect::{Config, TargetSessionAttrs};
use crate::connect::{Target, open_socket, targets};
use crate::error::{ConnectError, ServerError, WireError};
use crate::protocol::{Answers, Ending};

/// How long connecting to one host may take when the configuration sets no
/// `connect_timeout`: a server that accepts TCP but never answers must not hold a caller,
/// or a pool slot, forever.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many more times start-up asks who the backend is when the question itself failed.
const IDENTIFY_TRIES: usize = 3;

/// How long ending an orphaned backend may take, connecting included.
const END_BACKEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl Connection {
    /// Connects to a `postgres://` URL or a `key=value` connection string, with TLS as
    /// its `sslmode` says (see [`Config`]).
    ///
    /// # Errors
    ///
    /// [`ConnectError::Config`] when the string does not parse; otherwise as for
    /// [`connect_with`](Self::connect_with).
    pub async fn connect(params: &str) -> Result<Self, ConnectError> {
        let config: Config = params.parse()?;
        Self::connect_with(&config).await
    }

    /// Connects with a [`Config`] (a `&tokio_postgres::Config` converts into one).
    ///
    /// The whole handshake (TCP, TLS, authentication) is bounded by the configuration's
    /// `connect_timeout` (10 s when it sets none), for every host it names.
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: unreachable host, timeout, TLS, authentication, the server refusing
    /// the session, or the server not being the kind `target_session_attrs` asks for
    /// ([`ConnectError::WrongServer`]). With several hosts,
    /// [`ConnectError::NoSuitableHost`] lists each host's reason.
    pub async fn connect_with(config: impl Into<Config>) -> Result<Self, ConnectError> {
        let config = config.into();
        connect(&config, Arc::new(Session::default())).await
    }
}

/// Opens a connection to the first host of `config` that accepts it and is the kind of
/// server its `target_session_attrs` asks for (hosts in random order with
/// `load_balance_hosts=random`).
pub(crate) async fn connect(config: &Config, session: Arc<Session>) -> Result<Connection, ConnectError> {
    if let Some(problem) = config.unsupported() {
        return Err(ConnectError::Config(problem));
    }
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
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    if postgres.get_load_balance_hosts() == tokio_postgres::config::LoadBalanceHosts::Random {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rng());
    }
    // prefer-standby: a standby if any host is one, then any server.
    let passes: &[TargetSessionAttrs] = match config.get_target_session_attrs() {
        TargetSessionAttrs::PreferStandby => &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any],
        TargetSessionAttrs::Any => &[TargetSessionAttrs::Any],
        TargetSessionAttrs::ReadWrite => &[TargetSessionAttrs::ReadWrite],
        TargetSessionAttrs::ReadOnly => &[TargetSessionAttrs::ReadOnly],
        TargetSessionAttrs::Primary => &[TargetSessionAttrs::Primary],
        TargetSessionAttrs::Standby => &[TargetSessionAttrs::Standby],
    };
    let mut failures = Vec::new();
    for &wanted in passes {
        for &index in &order {
            let host = &hosts[index];
            let port = port_of(index);
            let host_name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let attempt = async {
                let mut error = None;
                for target in targets(host, postgres.get_hostaddrs().get(index).copied(), port).await? {
                    match attempt(&target, &host_name, config, Arc::clone(&session)).await {
                        Ok(mut connection) => {
                            suits(&mut connection, wanted, &format!("{host_name}:{port}")).await?;
                            return Ok(connection);
                        }
                        Err(failed) => error = Some(failed),
                    }
                }
                Err(error.unwrap_or_else(|| ConnectError::Config(format!("{host_name} resolves to no address"))))
            };
            let after = postgres.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            let result = tokio::time::timeout(after, attempt)
                .await
                .unwrap_or_else(|_| Err(ConnectError::Timeout { host: format!("{host_name}:{port}"), after }));
            match result {
                Ok(connection) => return Ok(connection),
                Err(error) => failures.push((format!("{host_name}:{port}"), error)),
            }
        }
    }
    // One host tried once: its own error. Several: each one's.
    if failures.len() == 1 {
        return Err(failures.pop().map(|(_, error)| error).expect("one failure"));
    }
    Err(ConnectError::NoSuitableHost { failures })
}

/// Fails unless the server behind `connection` is the kind `wanted` asks for.
async fn suits(connection: &mut Connection, wanted: TargetSessionAttrs, host: &str) -> Result<(), ConnectError> {
    if wanted == TargetSessionAttrs::Any {
        return Ok(());
    }
    let (standby, read_only) = server_state(connection).await.ok_or_else(|| ConnectError::Protocol {
        host: host.to_owned(),
        reason: "could not read whether the server is a standby or read-only".into(),
    })?;
    let found = match wanted {
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary if standby => Some("a hot standby"),
        TargetSessionAttrs::ReadWrite if read_only => Some("read-only (default_transaction_read_only is on)"),
        TargetSessionAttrs::ReadOnly if !standby && !read_only => Some("a server that accepts writes"),
        TargetSessionAttrs::Standby if !standby => Some("not a standby"),
        _ => None,
    };
    match found {
        Some(found) => Err(ConnectError::WrongServer { host: host.to_owned(), found, wanted: wanted.name() }),
        None => Ok(()),
    }
}

/// Whether the server is a hot standby, and whether its transactions are read-only by
/// default: from what it reported at start-up (PostgreSQL 14 and later), otherwise from one
/// query (older servers, PgBouncer); `None` when that query fails.
async fn server_state(connection: &mut Connection) -> Option<(bool, bool)> {
    let state = {
        let reported = |name| connection.parameter(name).map(|value| value == "on");
        (reported("in_hot_standby"), reported("default_transaction_read_only"))
    };
    if let (Some(standby), Some(read_only)) = state {
        return Some((standby, read_only));
    }
    let mut flight = Flight::new();
    queue_read(connection, &mut flight, SERVER_STATE, &[]).ok()?;
    let answers = flight.land(connection).await.answers.pop()?;
    let row = answers.outputs.first()?.rows.first()?;
    let text = |index| row.value(index).and_then(|value| std::str::from_utf8(value).ok());
    Some((text(0)? == "true", text(1)? == "on"))
}

/// The server's state where it does not report it at start-up.
const SERVER_STATE: &str =
    "SELECT CAST(pg_catalog.pg_is_in_recovery() AS text), pg_catalog.current_setting('transaction_read_only')";

/// One attempt on one address.
async fn attempt(
    target: &Target,
    host: &str,
    config: &Config,
    session: Arc<Session>,
) -> Result<Connection, ConnectError> {
    let socket = open_socket(target, Some(config.postgres())).await?;
    let stream = crate::connect::tls::negotiate(socket, config, host).await?;
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
    let (address, port) = target.address_and_port();
    connection.set_peer(Peer { database: postgres.get_dbname().unwrap_or(&user).to_owned(), address, port });
    let identity = start_session(&mut connection, &session.setup).await.map_err(|error| match error {
        SetupError::Wire(e) => fail.protocol(e),
        SetupError::Server(error) => ConnectError::Server { host: fail.host.clone(), error },
    })?;
    let backend = identity.and_then(|identity| Backend::new(process_id, identity));
    connection.set_end_backend(backend.map(|backend| ender(config.clone(), backend)));
    connection.restore_startup_parameters(postgres.get_application_name());
    connection.start_statement_cache();
    Ok(connection)
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
        ConnectError::Server { host: self.host.clone(), error: Box::new(ServerError::parse(body.fields())) }
    }
}

/// Ends `backend` from a new connection opened with `config`.
fn ender(config: Config, backend: Backend) -> EndBackend {
    let (config, backend) = (Arc::new(config), Arc::new(backend));
    Arc::new(move |when| {
        let (config, backend) = (Arc::clone(&config), Arc::clone(&backend));
        Box::pin(async move {
            let ended = tokio::time::timeout(END_BACKEND_TIMEOUT, async {
                let mut connection = connect(&config, Arc::new(Session::default())).await.ok()?;
                Some(backend.terminate(&mut connection, when).await)
            })
            .await;
            let ended = matches!(ended, Ok(Some(true)));
            tracing::debug!(ended, "ending the backend of a connection given up mid-transaction");
            ended
        })
    })
}

/// Why the session setup failed.
#[derive(Debug)]
pub(crate) enum SetupError {
    Wire(WireError),
    Server(Box<ServerError>),
}

/// Starts a new connection's session, in one round trip: reads who its backend is (see
/// [`backend`](super::backend)), then runs the session setup statements, each a unit of its
/// own. Returns the backend's process id and start time, when the server shows them.
pub(crate) async fn start_session(
    connection: &mut Connection,
    statements: &[String],
) -> Result<Option<(i32, String)>, SetupError> {
    let protocol = |e: std::io::Error| SetupError::Wire(WireError::Protocol(e.to_string()));
    let mut flight = Flight::new();
    queue_read(connection, &mut flight, IDENTIFY, &[]).map_err(protocol)?;
    for sql in statements {
        frontend::query(sql, connection.io().queue()).map_err(protocol)?;
        flight.push(connection, Unit::Discard);
    }
    let landed = flight.land(connection).await;
    if connection.is_closed() {
        return Err(SetupError::Wire(WireError::Closed));
    }
    if let Some(error) = landed.discarded_error {
        return Err(SetupError::Server(error));
    }
    let mut answers = landed.answers.into_iter().next();
    // A cancel request can land on the lookup (a cancel storm by application name): ask
    // again, in a round trip of its own, rather than take the backend for a pooler's.
    for _ in 0..IDENTIFY_TRIES {
        if !matches!(&answers, Some(Answers { ending: Ending::Failed { .. }, .. })) {
            break;
        }
        let mut flight = Flight::new();
        queue_read(connection, &mut flight, IDENTIFY, &[]).map_err(protocol)?;
        answers = flight.land(connection).await.answers.into_iter().next();
    }
    // A server that does not show the backend (a pooler's fake process id, CockroachDB)
    // gives no identity: such a backend is never ended by process id.
    Ok(answers.as_ref().and_then(identity))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_state_query_uses_listed_constructs_only() {
        crate::codec::constructs::assert_allowed(super::SERVER_STATE, &[]);
    }
}

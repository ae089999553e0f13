//! A connection a batch has to itself.

use std::collections::HashMap;
use std::fmt;

use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, Socket};

use crate::error::{BuildError, ConnectError};
use crate::retry::RetryPolicy;
use crate::statement::TypeName;

/// A PostgreSQL connection that runs batches.
///
/// It owns its `tokio_postgres::Client` and never shares it: a batch pipelines `BEGIN`, its
/// statements and `COMMIT` back to back, and another task's request slipped into the
/// middle would run inside the batch's transaction. `&mut Connection` makes that
/// impossible. Get one with [`Connection::connect`], or from a
/// [`bb8::Pool`] of [`ConnectionManager`](crate::ConnectionManager).
///
/// The connection's I/O runs on a task spawned on the current tokio runtime; when the
/// server or the network ends it, [`Connection::is_closed`] turns true and batches fail
/// with nothing sent.
pub struct Connection {
    client: Client,
    driver: JoinHandle<()>,
    /// OIDs of custom types, looked up once per connection: `(type, array type)`.
    custom_types: HashMap<TypeName, (Type, Type)>,
    /// Set when a two-phase batch may have left a transaction open and its `ROLLBACK` could
    /// not be queued; the pool discards such a connection.
    poisoned: bool,
    /// The retry policy of batches that set none.
    retry: RetryPolicy,
}

impl Connection {
    /// Connects without TLS to a `postgres://` URL or a `key=value` connection string.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Postgres`] when the string does not parse or the server cannot be
    /// reached or refuses the login.
    pub async fn connect(params: &str) -> Result<Self, ConnectError> {
        let config: Config = params.parse()?;
        Self::connect_with(&config, NoTls).await
    }

    /// Connects with a tokio-postgres `Config` and TLS connector.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Postgres`] when the server cannot be reached or refuses the login.
    pub async fn connect_with<T>(config: &Config, tls: T) -> Result<Self, ConnectError>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = config.connect(tls).await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "PostgreSQL connection ended with an error");
            }
        });
        Ok(Connection { client, driver, custom_types: HashMap::new(), poisoned: false, retry: RetryPolicy::default() })
    }

    /// Whether the connection is closed: batches on it fail with nothing sent.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.driver.is_finished()
    }

    /// Whether the connection can run a batch: open, and not left in an unknown
    /// transaction state. Costs no round trip.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Closed`] or [`ConnectError::Poisoned`].
    pub fn check(&self) -> Result<(), ConnectError> {
        if self.poisoned {
            Err(ConnectError::Poisoned)
        } else if self.is_closed() {
            Err(ConnectError::Closed)
        } else {
            Ok(())
        }
    }

    /// Forgets the cached OIDs of custom types. Call it after dropping and re-creating a
    /// type on a long-lived connection; the next batch that uses the type looks it up
    /// again.
    pub fn clear_type_cache(&mut self) {
        self.custom_types.clear();
        self.client.clear_type_cache();
    }

    /// Sets the retry policy of batches on this connection that set none.
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        self.retry = policy;
    }

    /// The retry policy of batches on this connection that set none.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }

    pub(crate) fn custom_type(&self, name: &TypeName, array: bool) -> Option<&Type> {
        self.custom_types.get(name).map(|(element, array_type)| if array { array_type } else { element })
    }

    /// Looks up the custom types not yet known to this connection. Each costs one query
    /// (plus tokio-postgres's own type-info queries) the first time, none after.
    ///
    /// The lookup goes through tokio-postgres's `RETURNING`-column type resolution, so its
    /// cache learns the type too and rows of that type decode without further queries.
    pub(crate) async fn resolve_types(&mut self, names: Vec<&TypeName>) -> Result<(), ResolveError> {
        for name in names {
            if self.custom_types.contains_key(name) {
                continue;
            }
            let sql = format!("SELECT NULL::{ty}, NULL::{ty}[]", ty = name.to_sql());
            let types = match self.client.prepare(&sql).await {
                Ok(statement) => statement.columns().iter().map(|c| c.type_().clone()).collect::<Vec<_>>(),
                Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                    return Err(ResolveError::Unknown(BuildError::UnknownType { name: name.to_string() }));
                }
                Err(error) => return Err(ResolveError::Connection(error)),
            };
            let [element, array] = <[Type; 2]>::try_from(types)
                .map_err(|_| ResolveError::Unknown(BuildError::UnknownType { name: name.to_string() }))?;
            tracing::debug!(%name, oid = element.oid(), "resolved custom type");
            self.custom_types.insert(name.clone(), (element, array));
        }
        Ok(())
    }
}

pub(crate) enum ResolveError {
    Unknown(BuildError),
    Connection(tokio_postgres::Error),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.is_closed())
            .field("poisoned", &self.poisoned)
            .field("custom_types", &self.custom_types.len())
            .finish_non_exhaustive()
    }
}

/// The TLS connectors a [`ConnectionManager`](crate::ConnectionManager) can use: any
/// tokio-postgres `MakeTlsConnect` whose streams and handshakes can move between threads
/// (`NoTls`, `postgres-native-tls`, `tokio-postgres-rustls`).
pub trait Tls:
    MakeTlsConnect<Socket, Stream = Self::Connected, TlsConnect = Self::Connector> + Clone + Send + Sync + 'static
{
    /// The stream a TLS connection gives.
    type Connected: Send + 'static;
    /// The per-connection connector.
    type Connector: TlsConnect<Socket, Stream = Self::Connected, Future = Self::Handshake> + Send;
    /// The TLS handshake.
    type Handshake: Send;
}

impl<T> Tls for T
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Connected = T::Stream;
    type Connector = T::TlsConnect;
    type Handshake = <T::TlsConnect as TlsConnect<Socket>>::Future;
}

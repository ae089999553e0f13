//! Pooling connections with bb8.

use std::ops::DerefMut;

use tokio_postgres::{Config, NoTls};

use crate::connection::{Connection, Tls};
use crate::error::{ConnectError, PoolError};
use crate::retry::RetryPolicy;

/// A [`bb8::ManageConnection`] that opens pgbatch [`Connection`]s.
///
/// Checking a connection out costs no round trip: [`is_valid`](bb8::ManageConnection::is_valid)
/// checks the connection's local state (open, not left inside a transaction) instead of
/// sending a query, so bb8's test-on-checkout can stay on.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = pgbatch::ConnectionManager::new("postgres://postgres@127.0.0.1/app".parse()?);
/// let pool = bb8::Pool::builder().max_size(8).build(manager).await?;
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionManager<T = NoTls> {
    config: Config,
    tls: T,
    retry: RetryPolicy,
}

impl ConnectionManager<NoTls> {
    /// A manager that connects without TLS.
    pub fn new(config: Config) -> Self {
        Self::with_tls(config, NoTls)
    }
}

impl<T: Tls> ConnectionManager<T> {
    /// A manager that connects with the given TLS connector.
    pub fn with_tls(config: Config, tls: T) -> Self {
        ConnectionManager { config, tls, retry: RetryPolicy::default() }
    }

    /// The retry policy of batches run on this pool's connections that set none.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

impl<T: Tls> bb8::ManageConnection for ConnectionManager<T> {
    type Connection = Connection;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Connection, ConnectError> {
        let mut connection = Connection::connect_with(&self.config, self.tls.clone()).await?;
        connection.set_retry_policy(self.retry);
        Ok(connection)
    }

    async fn is_valid(&self, connection: &mut Connection) -> Result<(), ConnectError> {
        connection.check()
    }

    fn has_broken(&self, connection: &mut Connection) -> bool {
        connection.check().is_err()
    }
}

/// Where a batch can run: a connection it borrows, or a pool it checks one out of.
///
/// Implemented for `&mut Connection`, `&bb8::Pool<ConnectionManager<_>>` and
/// `&mut bb8::PooledConnection<'_, ConnectionManager<_>>`.
pub trait Acquire: Send {
    /// The connection, held for the length of the batch.
    type Lease: DerefMut<Target = Connection> + Send;

    /// Gets the connection.
    ///
    /// # Errors
    ///
    /// [`PoolError`] when the pool times out or cannot open a connection.
    fn acquire(self) -> impl Future<Output = Result<Self::Lease, PoolError>> + Send;
}

impl<'c> Acquire for &'c mut Connection {
    type Lease = &'c mut Connection;

    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        Ok(self)
    }
}

impl<'p, T: Tls> Acquire for &'p bb8::Pool<ConnectionManager<T>> {
    type Lease = bb8::PooledConnection<'p, ConnectionManager<T>>;

    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        self.get().await.map_err(|error| match error {
            bb8::RunError::User(error) => PoolError::Connect(error),
            bb8::RunError::TimedOut => PoolError::TimedOut,
        })
    }
}

impl<'c, 'p, T: Tls> Acquire for &'c mut bb8::PooledConnection<'p, ConnectionManager<T>> {
    type Lease = &'c mut Connection;

    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        Ok(&mut **self)
    }
}

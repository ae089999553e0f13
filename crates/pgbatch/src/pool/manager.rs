//! Pooling connections with bb8, and where a batch gets its connection.

use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Instant;

use crate::connect::Config;
use crate::connect::{Session, SessionReset, StatementCache};
use crate::connection::Connection;
use crate::error::{ConnectError, PoolError};
use crate::plan::RetryPolicy;
use crate::telemetry;

/// A bb8 pool of pgbatch connections: what a service keeps and runs batches on.
pub type Pool = bb8::Pool<ConnectionManager>;

/// A [`bb8::ManageConnection`] that opens pgbatch [`Connection`]s.
///
/// Checking a connection out costs no round trip:
/// [`is_valid`](bb8::ManageConnection::is_valid) checks the connection's own state (open,
/// idle, no answers due; see [`Connection::check`]) instead of sending a query, so bb8's
/// test-on-checkout can stay on. A connection that comes back from a batch in any other
/// state is discarded, never lent out again.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = pgbatch::ConnectionManager::new("postgres://postgres@127.0.0.1/app".parse::<pgbatch::Config>()?)
///     .session_setup(["SET application_name = 'billing'"]);
/// let pool = bb8::Pool::builder().max_size(8).build(manager).await?;
/// # let _ = pool; Ok(()) }
/// ```
///
/// # Lifetimes, and following a failover
///
/// A pool given every host of a formation and `target_session_attrs=read-write` follows a
/// failover by itself: connections to a server that died or was demoted fail their next
/// check or batch and are discarded, and new ones go to whichever host accepts writes (a
/// keyed batch whose answer was lost settles itself on one of them). What bounds how long
/// a pool keeps connections that still work but should go (to a CockroachDB node being
/// drained, to a host after `load_balance_hosts=random` should spread load again) are
/// bb8's own settings, on [`bb8::Builder`]:
///
/// | bb8 setting | bb8's default | advice |
/// |---|---|---|
/// | [`max_lifetime`](bb8::Builder::max_lifetime) | 30 min | shorter than any drain window (CockroachDB: `server.shutdown.connections.timeout`) |
/// | [`idle_timeout`](bb8::Builder::idle_timeout) | 10 min | a few minutes |
/// | [`connection_timeout`](bb8::Builder::connection_timeout) | 30 s | how long a batch waits for a connection while no host accepts writes |
///
/// Dead servers are noticed by TCP keepalives and `tcp_user_timeout`, on by default (see
/// [`Config`](crate::Config#dead-server-detection)).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let url = "postgres://app@db-a:5432,db-b:5432/app?target_session_attrs=read-write&connect_timeout=2";
/// let pool = bb8::Pool::builder()
///     .max_size(8)
///     .max_lifetime(Some(Duration::from_secs(5 * 60)))
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .connection_timeout(Duration::from_secs(10))
///     .build(pgbatch::ConnectionManager::new(url.parse::<pgbatch::Config>()?))
///     .await?;
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    config: Config,
    session: Arc<Session>,
}

impl ConnectionManager {
    /// A manager that connects as `config` says (a `tokio_postgres::Config` converts into
    /// a [`Config`]). Without a `connect_timeout` in it, connections time out after 10 s.
    pub fn new(config: impl Into<Config>) -> Self {
        ConnectionManager { config: config.into(), session: Arc::new(Session::default()) }
    }

    /// The retry policy of batches run on this pool's connections that set none.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        Arc::make_mut(&mut self.session).retry = policy;
        self
    }

    /// Statements every new connection runs once, before its first batch (and again
    /// after each reset of its session, in the same segment as the unit the reset comes
    /// before): session settings such as
    /// `SET disallow_full_table_scans = on` on CockroachDB, or `SET statement_timeout =
    /// '5s'`. Nothing is sent for them when there are none.
    ///
    /// A statement that fails makes the connection attempt fail with
    /// [`ConnectError::Server`]; after a reset, it makes the server skip the unit behind it
    /// ([`Error::SessionReset`](crate::Error::SessionReset)).
    #[must_use]
    pub fn session_setup<S: Into<String>>(mut self, statements: impl IntoIterator<Item = S>) -> Self {
        Arc::make_mut(&mut self.session).setup = statements.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an [`Observer`](crate::Observer) that hears of every statement of every run on
    /// this pool's connections (its label, what became of it, the run's round trip, the
    /// attempt): the place for metrics and probes. Without one nothing is called.
    #[must_use]
    pub fn observer(mut self, observer: impl crate::plan::Observer) -> Self {
        Arc::make_mut(&mut self.session).observer = Some(Arc::new(observer));
        self
    }

    /// When the sessions of this pool's connections are reset; by default whenever a
    /// connection changes hands after being used, so that no holder sees what another left.
    /// See [`SessionReset`] for what [`SessionReset::WhenRecognised`] gives up.
    #[must_use]
    pub fn session_reset(mut self, reset: SessionReset) -> Self {
        Arc::make_mut(&mut self.session).reset = reset;
        self
    }

    /// Whether this pool's connections keep their statements prepared on the server, and
    /// how many; by default up to 256 each where a connection has a server session of its
    /// own, none behind a pooler. See [`StatementCache`].
    #[must_use]
    pub fn statement_cache(mut self, cache: StatementCache) -> Self {
        Arc::make_mut(&mut self.session).statements = cache;
        self
    }

    /// The configuration connections are opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The retry policy of batches that set none.
    pub(crate) fn session_retry(&self) -> RetryPolicy {
        self.session.retry
    }
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Connection, ConnectError> {
        crate::connection::startup::connect(&self.config, Arc::clone(&self.session)).await
    }

    async fn is_valid(&self, connection: &mut Connection) -> Result<(), ConnectError> {
        connection.fit_to_lend()
    }

    /// Called as the pool takes a connection back: its holder's time with the session ends
    /// here, so the next holder's first unit resets it.
    fn has_broken(&self, connection: &mut Connection) -> bool {
        connection.hand_over();
        connection.fit_to_lend().is_err()
    }
}

/// Where a batch can run: a connection it borrows, or a pool it checks one out of.
///
/// Implemented for `&mut Connection`, `&Pool` (`&bb8::Pool<ConnectionManager>`) and
/// `&mut bb8::PooledConnection<'_, ConnectionManager>`.
pub trait Acquire: Send {
    /// The connection, held for the length of the batch.
    type Lease: DerefMut<Target = Connection> + Send;

    /// Gets the connection.
    ///
    /// # Errors
    ///
    /// [`PoolError`] when the pool times out or cannot open a connection.
    fn acquire(self) -> impl Future<Output = Result<Self::Lease, PoolError>> + Send;

    /// Another way to get a fresh connection from the same place, when there is one (a
    /// pool): used to settle an unknown outcome on a connection other than the one that
    /// was lost.
    fn another(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

impl<'c> Acquire for &'c mut Connection {
    type Lease = &'c mut Connection;

    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        Ok(self)
    }
}

impl<'p> Acquire for &'p Pool {
    type Lease = bb8::PooledConnection<'p, ConnectionManager>;

    /// Within the pool's `connection_timeout`, whatever happens: a slow checkout on a pool
    /// that is still opening connections makes one attempt of its own halfway through, to
    /// say why connecting fails (bb8 keeps the errors of the connections it opens in the
    /// background to itself), and is answered at the deadline either way.
    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        let started = Instant::now();
        let timeout = self.config().connection_timeout;
        let mut get = std::pin::pin!(self.get());
        let diagnosis = async {
            tokio::time::sleep(timeout / 2).await;
            let state = self.state();
            // A pool that is full is busy, not failing to connect: nothing to diagnose.
            if state.connections >= self.config().max_size {
                return std::future::pending().await;
            }
            match tokio::time::timeout(timeout / 2, self.dedicated_connection()).await {
                Ok(Err(error)) => Some(Arc::new(error)),
                Ok(Ok(_)) | Err(_) => None,
            }
        };
        let (got, last_connect_error) = tokio::select! {
            biased;
            got = &mut get => (got, None),
            last_connect_error = diagnosis => (get.await, last_connect_error),
        };
        let lease = match got {
            Ok(connection) => Ok(connection),
            Err(bb8::RunError::User(error)) => Err(PoolError::Connect(error)),
            Err(bb8::RunError::TimedOut) => Err(PoolError::TimedOut { last_connect_error }),
        };
        telemetry::checkout(started.elapsed(), matches!(lease, Err(PoolError::TimedOut { .. })));
        if lease.is_ok() {
            let state = self.state();
            telemetry::pool_connections(
                state.idle_connections,
                state.connections.saturating_sub(state.idle_connections),
            );
        }
        lease
    }

    fn another(&self) -> Option<Self> {
        Some(*self)
    }
}

impl<'c, 'p> Acquire for &'c mut bb8::PooledConnection<'p, ConnectionManager> {
    type Lease = &'c mut Connection;

    async fn acquire(self) -> Result<Self::Lease, PoolError> {
        Ok(&mut **self)
    }
}

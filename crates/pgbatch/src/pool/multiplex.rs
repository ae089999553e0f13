//! Many callers' batches on a few connections: each connection is driven by a task of its
//! own, which writes every batch given to it behind the ones still in flight and hands the
//! answers back in order (see [`Pipeline`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bb8::ManageConnection;
use metrics::SharedString;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::driver::{Delivery, Driver, Job, Load};
use super::manager::{ConnectionManager, Pool};
use crate::codec::Statement;
use crate::connection::Peer;
use crate::error::{ConnectError, PoolError, WireError};
use crate::plan::RetryPolicy;
use crate::protocol::Collector;
use crate::protocol::sql::COMMIT;
use crate::protocol::{BatchNotSent, NotSent};
use crate::telemetry;

/// Batches of many concurrent callers multiplexed on a few shared connections.
///
/// A pooled batch holds its connection for a whole round trip, so `n` connections commit at
/// most `n / RTT` batches a second. A batch is self-contained (one unit, one `Sync`, its own
/// prelude and `ROLLBACK`), so the next caller's batch can be written on the same
/// connection before the first one's answer is back: `Multiplexed` keeps up to
/// [`in_flight_per_connection`](MultiplexedBuilder::in_flight_per_connection) batches in
/// flight on each of its connections, and gives each caller's batch to the least loaded
/// one. Run batches on it with [`Batch::run_multiplexed`](crate::Batch::run_multiplexed).
///
/// Every guarantee of a batch holds per batch: the server runs each as if it had the
/// connection to itself (a failure skips the rest of its own unit only; each batch is a
/// holder of its own, so its prelude rolls back what the batch ahead left open and resets
/// the session the batch ahead used, and a batch whose prelude fails never runs), answers are handed back in the
/// order they were sent, and a connection lost mid-flight gives every batch in flight on
/// it its own verdict: not committed when its `COMMIT` was never written, unknown when it
/// was. A lost connection is replaced with the next batch given to it.
///
/// See the crate docs' Multiplexing section for timeouts, head-of-line blocking and what
/// needs a pooled connection instead.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = pgbatch::ConnectionManager::new("postgres://postgres@localhost/app".parse::<pgbatch::Config>()?);
/// let client = pgbatch::Multiplexed::builder(manager).connections(4).build().await?;
/// let mut batch = pgbatch::Batch::new();
/// batch.push(diesel::sql_query("UPDATE quota SET used = used + 1 WHERE silo = 7"));
/// batch.run_multiplexed(&client).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Multiplexed {
    shared: Arc<Shared>,
}

struct Shared {
    lanes: Vec<Lane>,
    /// Batches given to the client and not yet answered, across all connections.
    admission: Arc<Semaphore>,
    admission_timeout: Duration,
    retry: RetryPolicy,
    /// Connections of their own, for settling unknown outcomes and reading markers.
    pool: Pool,
    /// How many batches each driver keeps in flight.
    depth: usize,
    /// The database and server of the client's connections, for telemetry.
    peer: Option<Arc<Peer>>,
}

/// One connection's queue and its driver's load.
struct Lane {
    /// The connection's index among the client's, as telemetry labels it.
    index: SharedString,
    jobs: mpsc::Sender<Job>,
    /// Batches given to this lane and not yet answered.
    load: Arc<AtomicUsize>,
}

/// Builds a [`Multiplexed`] client.
#[derive(Debug)]
#[must_use]
pub struct MultiplexedBuilder {
    manager: ConnectionManager,
    connections: usize,
    in_flight_per_connection: usize,
    max_waiting: usize,
    admission_timeout: Duration,
    pooler_keeps_pipelines: bool,
}

impl MultiplexedBuilder {
    /// How many connections batches are multiplexed on (default 4).
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// How many batches may be in flight on one connection at once (default 32). Beyond
    /// it, batches wait for that connection; a batch behind a slow one (a lock wait) waits
    /// at most this many batches deep. Behind a pooler it is 1 unless the pooler
    /// [keeps pipelines](Self::pooler_keeps_pipelines).
    pub fn in_flight_per_connection(mut self, batches: usize) -> Self {
        self.in_flight_per_connection = batches.max(1);
        self
    }

    /// Says that the pooler between the client and the server (if any) keeps a server
    /// connection linked to a client until every batch written to it has been answered,
    /// also when the client's connection ends: PgBouncer 1.21 and later, or any pooler in
    /// session mode (default false).
    ///
    /// Behind a pooler (connections without a backend of their own, see
    /// [`Connection::has_own_backend`](crate::Connection::has_own_backend)) and without this, the client keeps one batch in
    /// flight per connection: PgBouncer before 1.21, when a client disconnects just after
    /// one batch was answered, hands the server connection to its next client with the
    /// answers of the batches written behind that one still to come, and that client reads
    /// them as its own.
    pub fn pooler_keeps_pipelines(mut self, keeps: bool) -> Self {
        self.pooler_keeps_pipelines = keeps;
        self
    }

    /// How many batches may be given to the client at once, in flight or waiting for a
    /// connection (default 1024): the bound on the memory queued batches take. Beyond it,
    /// callers wait up to the [`admission_timeout`](Self::admission_timeout).
    pub fn max_waiting(mut self, batches: usize) -> Self {
        self.max_waiting = batches.max(1);
        self
    }

    /// How long a caller waits for its batch to be taken when
    /// [`max_waiting`](Self::max_waiting) batches are already given (default 30 s); then
    /// the batch fails with [`PoolError::TimedOut`], nothing sent.
    pub fn admission_timeout(mut self, timeout: Duration) -> Self {
        self.admission_timeout = timeout;
        self
    }

    /// Opens the connections and starts one driver task per connection on the current
    /// Tokio runtime.
    ///
    /// # Errors
    ///
    /// The first connection that could not be opened (the server is down, the
    /// configuration is wrong): a client is never built half-connected.
    pub async fn build(self) -> Result<Multiplexed, ConnectError> {
        let mut connections = Vec::with_capacity(self.connections);
        for _ in 0..self.connections {
            connections.push(self.manager.connect().await?);
        }
        let behind_pooler = connections.iter().any(|connection| !connection.has_own_backend());
        let peer = connections.first().and_then(|connection| connection.peer().cloned());
        let depth = if behind_pooler && !self.pooler_keeps_pipelines {
            tracing::warn!(
                "multiplexing behind a pooler with one batch in flight per connection; \
                 call MultiplexedBuilder::pooler_keeps_pipelines(true) behind PgBouncer 1.21 or later"
            );
            1
        } else {
            self.in_flight_per_connection
        };
        let mut lanes = Vec::with_capacity(self.connections);
        for (index, connection) in connections.into_iter().enumerate() {
            let (jobs, queue) = mpsc::channel(depth);
            let driver = Driver { manager: self.manager.clone(), queue, connection: Some(connection), depth };
            tokio::spawn(driver.run());
            lanes.push(Lane { index: index.to_string().into(), jobs, load: Arc::new(AtomicUsize::new(0)) });
        }
        let retry = self.manager.session_retry();
        let pool = bb8::Pool::builder().max_size(2).min_idle(Some(0)).build_unchecked(self.manager);
        Ok(Multiplexed {
            shared: Arc::new(Shared {
                lanes,
                admission: Arc::new(Semaphore::new(self.max_waiting)),
                admission_timeout: self.admission_timeout,
                retry,
                pool,
                depth,
                peer,
            }),
        })
    }
}

impl Multiplexed {
    /// A builder of a client whose connections `manager` opens (with its session setup,
    /// session reset, observer and retry policy).
    pub fn builder(manager: ConnectionManager) -> MultiplexedBuilder {
        MultiplexedBuilder {
            manager,
            connections: 4,
            in_flight_per_connection: 32,
            max_waiting: 1024,
            admission_timeout: Duration::from_secs(30),
            pooler_keeps_pipelines: false,
        }
    }

    /// A pool of up to two connections of the client's own configuration, for what needs a
    /// connection to itself: two-phase batches ([`Batch::prepare`](crate::Batch::prepare)),
    /// batches under CockroachDB's restart savepoint, diesel-async queries and
    /// transactions. The client settles unknown outcomes on it.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The retry policy of batches that set none.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.shared.retry
    }

    /// How many batches the client keeps in flight on one connection: the builder's
    /// [`in_flight_per_connection`](MultiplexedBuilder::in_flight_per_connection), or 1
    /// behind a pooler not said to [keep pipelines](MultiplexedBuilder::pooler_keeps_pipelines).
    pub fn in_flight_per_connection(&self) -> usize {
        self.shared.depth
    }

    /// The database and server of the client's connections.
    pub(crate) fn peer(&self) -> Option<&Peer> {
        self.shared.peer.as_deref()
    }

    /// How many batches are in flight or waiting, per connection.
    pub fn load(&self) -> Vec<usize> {
        self.shared.lanes.iter().map(|lane| lane.load.load(Ordering::Relaxed)).collect()
    }

    /// Gives a batch's statements to the least loaded connection and waits for their
    /// answers. Dropping the future before the batch was written sends nothing; after, the
    /// batch runs whole on the server, and its answers are read and dropped.
    pub(crate) async fn send(
        &self,
        statements: Vec<Arc<Statement>>,
        begin: Cow<'static, str>,
    ) -> Result<Delivery, BatchNotSent> {
        let admitted =
            tokio::time::timeout(self.shared.admission_timeout, self.shared.admission.clone().acquire_owned());
        let waiting = Waiting::new();
        let admitted = admitted.await;
        drop(waiting);
        let permit = match admitted {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(NotSent::Closed.into()),
            Err(_) => {
                telemetry::admission_timed_out();
                return Err(BatchNotSent::Pool(PoolError::TimedOut { last_connect_error: None }));
            }
        };
        let lane = self
            .shared
            .lanes
            .iter()
            .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
            .expect("a client has at least one connection");
        let count = statements.len();
        let (reply, answer) = oneshot::channel();
        let job = Job { statements, begin, reply, _permit: permit, _load: Load::new(&lane.load, &lane.index) };
        if lane.jobs.send(job).await.is_err() {
            return Err(NotSent::Closed.into());
        }
        match answer.await {
            Ok(delivered) => delivered,
            // The driver went away with the batch (its runtime shut down): it may have
            // been written, so its outcome is unknown.
            Err(_) => Ok(Delivery {
                answers: Collector::new(1, count, 0, Some(COMMIT)).lost(WireError::Closed, true),
                replication_unconfirmed: false,
                orphan: None,
            }),
        }
    }
}

/// A caller waiting for the client to take its batch, in the waiting gauge for as long as
/// it waits (also when the caller gives up).
struct Waiting;

impl Waiting {
    fn new() -> Self {
        telemetry::multiplexed_waiting(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        telemetry::multiplexed_waiting(-1.0);
    }
}

impl std::fmt::Debug for Multiplexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexed")
            .field("connections", &self.shared.lanes.len())
            .field("load", &self.load())
            .finish()
    }
}

//! A connection a batch has to itself, and what it knows about its own state.

#[cfg(feature = "diesel-async")]
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use super::statements::Statements;
use crate::codec::TypeName;
use crate::connect::CancelToken;
use crate::connect::{Io, without_waiting};
use crate::connect::{Session, SessionReset, StatementCache};
use crate::error::ConnectError;
use crate::plan::RetryPolicy;

/// The server's transaction status, from its last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

/// A PostgreSQL connection that runs batches.
///
/// It speaks the protocol itself (through `postgres-protocol`), so that a batch's `BEGIN`,
/// statements and `COMMIT` travel as one unit ending in one `Sync` (see the crate docs'
/// Pipelining section). Nothing else can use it while a batch runs: `&mut Connection`
/// makes sure no other request slips into the middle of a pipeline. Get one with
/// [`Connection::connect`], or from a [`bb8::Pool`] of
/// [`ConnectionManager`](crate::ConnectionManager).
///
/// A connection always knows whether it is clean: open, idle, with no answers due. A
/// batch future dropped mid-flight leaves its answers due; the next batch on the
/// connection reads them first (they are already on their way, so this costs no round
/// trip), and a pool discards such a connection instead of lending it out.
///
/// Its session is its holder's: what one batch or query leaves in it (a `SET`, a
/// temporary table) is there for the holder's next one. When a pool takes the connection
/// back, the next holder's first unit resets the session first, in the same `Sync` segment
/// (see [`SessionReset`] and the crate docs' Session state section).
pub struct Connection {
    /// `None` only while being dropped.
    pub(super) io: Option<Io>,
    /// Units sent (or queued) whose `ReadyForQuery` has not been read yet.
    pub(super) pending: usize,
    pub(super) status: TxStatus,
    pub(super) broken: bool,
    /// Whether the holder ran something that may have left state in the session (any
    /// statement, or with [`SessionReset::WhenRecognised`] a recognised one) since the
    /// session was last made clean.
    pub(super) used: bool,
    /// Whether the session must be made clean before the next unit that starts outside a
    /// transaction: it changed hands after being used, or an earlier reset did not complete.
    pub(super) reset_due: bool,
    /// Whether the open transaction, if any, is one the caller opened with a request of
    /// its own (a diesel-async transaction): batches then join it and never end it.
    pub(super) caller_transaction: bool,
    /// Whether the server said, during the last exchange, that it stopped waiting for
    /// synchronous replication of a commit.
    pub(super) replication_unconfirmed: bool,
    pub(super) parameters: HashMap<String, String>,
    cancel: CancelToken,
    /// OIDs of custom types, looked up once per connection: `(type, array type)`.
    types: HashMap<TypeName, (u32, u32)>,
    pub(super) session: Arc<Session>,
    /// The database and server the connection reached, for telemetry.
    peer: Option<Arc<Peer>>,
    /// What the session reset runs after `DISCARD ALL`: the session setup, behind a pooler
    /// preceded by the start-up parameters `DISCARD ALL` takes back (see
    /// [`restore_startup_parameters`](Self::restore_startup_parameters)).
    pub(super) reset_setup: Arc<[String]>,
    /// Ends the server process behind the connection from another connection, when it can
    /// be ended by process id (see [`backend`](super::backend)).
    pub(super) end_backend: Option<EndBackend>,
    /// The statements this connection keeps prepared on the server (see
    /// [`statements`](super::statements)); off until start-up has seen whether a pooler is
    /// in between.
    pub(super) statements: Statements,
    /// What an adapter keeps on the connection for its callers, and its say in whether a
    /// pool may lend the connection out (see [`Attachment`]).
    #[cfg(feature = "diesel-async")]
    attachment: Option<(Box<dyn Any + Send>, LendCheck)>,
}

/// What an adapter outside the core keeps on a connection for its own callers (the
/// diesel-async adapter: its transaction manager and instrumentation). The connection
/// carries it without knowing its type, as bb8 keeps its adapters outside its core.
#[cfg(feature = "diesel-async")]
pub(crate) trait Attachment: Any + Send + Default {
    /// Whether a pool may lend `connection` out, given what [`Connection::check`] found.
    fn fit_to_lend(connection: &mut Connection, checked: Result<(), ConnectError>) -> Result<(), ConnectError>;
}

/// [`Attachment::fit_to_lend`] of the attachment a connection carries.
#[cfg(feature = "diesel-async")]
type LendCheck = fn(&mut Connection, Result<(), ConnectError>) -> Result<(), ConnectError>;

/// The database and server a connection reached, as telemetry names them (`db.namespace`,
/// `server.address`, `server.port`).
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) database: String,
    pub(crate) address: String,
    /// None for a Unix-domain socket.
    pub(crate) port: Option<u16>,
}

/// When a backend is to be ended (see [`backend`](super::backend)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Terminate {
    /// Whatever it is doing.
    Always,
    /// Only while it waits for its client (an orphan): not while it runs what it was sent.
    IfWaitingForClient,
}

/// Ends a connection's backend from another connection, when it is in the state
/// [`Terminate`] names; true when it ended one. Made by start-up, which knows how to open
/// that other connection.
pub(crate) type EndBackend = Arc<dyn Fn(Terminate) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

impl Connection {
    pub(crate) fn new(io: Io, parameters: HashMap<String, String>, cancel: CancelToken, session: Arc<Session>) -> Self {
        Connection {
            io: Some(io),
            pending: 0,
            status: TxStatus::Idle,
            broken: false,
            used: false,
            reset_due: false,
            caller_transaction: false,
            replication_unconfirmed: false,
            parameters,
            cancel,
            types: HashMap::new(),
            reset_setup: session.setup.iter().cloned().collect(),
            session,
            end_backend: None,
            peer: None,
            statements: Statements::new(0),
            #[cfg(feature = "diesel-async")]
            attachment: None,
        }
    }

    pub(crate) fn set_peer(&mut self, peer: Peer) {
        self.peer = Some(Arc::new(peer));
    }

    /// The database and server the connection reached.
    pub(crate) fn peer(&self) -> Option<&Arc<Peer>> {
        self.peer.as_ref()
    }

    pub(crate) fn set_end_backend(&mut self, end_backend: Option<EndBackend>) {
        self.end_backend = end_backend;
    }

    /// Ends the server process behind the connection from another connection, when it can
    /// be ended by process id (not behind PgBouncer).
    pub(crate) fn end_backend(&self) -> Option<EndBackend> {
        self.end_backend.clone()
    }

    /// Whether this connection has a server session of its own: the process id the server
    /// gave it at start-up is its backend's. False behind PgBouncer and other poolers,
    /// which run a client's statements on server connections they share between clients.
    pub fn has_own_backend(&self) -> bool {
        self.end_backend.is_some()
    }

    /// Whether the connection is closed or broken: batches on it fail with nothing sent.
    pub fn is_closed(&self) -> bool {
        self.broken
    }

    /// Whether the connection can run a batch right away: open, outside any transaction,
    /// with no answers due. Reads what has already arrived without waiting, so it notices
    /// a server that ended the session; costs no round trip.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Closed`] when closed, [`ConnectError::Unclean`] when answers of an
    /// interrupted batch are still due or a transaction is open. A session that still holds
    /// what an earlier holder left is fit: the next unit resets it first, in its own write.
    pub fn check(&mut self) -> Result<(), ConnectError> {
        if !self.broken {
            let _ = without_waiting(|cx| self.poll_drain(cx));
        }
        if self.broken {
            Err(ConnectError::Closed)
        } else if self.pending > 0 || self.io().has_unwritten() || self.status != TxStatus::Idle {
            Err(ConnectError::Unclean)
        } else {
            Ok(())
        }
    }

    /// A token that cancels the statement this connection's backend is running, from
    /// another task (the same as `pg_cancel_backend` on its process).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Forgets the cached OIDs of custom types. Call it after dropping and re-creating a
    /// type on a long-lived connection; the next batch that uses the type looks it up
    /// again.
    pub fn clear_type_cache(&mut self) {
        self.types.clear();
    }

    /// Sets the retry policy of batches on this connection that set none.
    pub fn set_retry_policy(&mut self, policy: RetryPolicy) {
        Arc::make_mut(&mut self.session).retry = policy;
    }

    /// The retry policy of batches on this connection that set none.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.session.retry
    }

    /// Sets an [`Observer`](crate::Observer) that hears of every statement of every run
    /// on this connection.
    pub fn set_observer(&mut self, observer: impl crate::plan::Observer) {
        Arc::make_mut(&mut self.session).observer = Some(Arc::new(observer));
    }

    /// Sets when this connection's session is reset; see [`SessionReset`].
    pub fn set_session_reset(&mut self, reset: SessionReset) {
        Arc::make_mut(&mut self.session).reset = reset;
    }

    /// Sets whether this connection keeps its statements prepared on the server; see
    /// [`StatementCache`]. The statements it kept are closed before its next unit.
    pub fn set_statement_cache(&mut self, cache: StatementCache) {
        Arc::make_mut(&mut self.session).statements = cache;
        self.start_statement_cache();
    }

    /// Starts the statement cache as the session settings say, for where the connection
    /// is (behind a pooler or not).
    pub(crate) fn start_statement_cache(&mut self) {
        let capacity = self.session.statements.capacity(self.shares_server_session());
        let mut fresh = Statements::new(capacity);
        self.statements.forget();
        fresh.restore_closing(self.statements.take_closing());
        self.statements = fresh;
    }

    /// After a [`CacheMiss`](super::statements::CacheMiss): forgets every statement the
    /// connection keeps prepared (closed before the next unit), so that the next units
    /// prepare their statements anew.
    pub(crate) fn after_cache_miss(&mut self) {
        tracing::debug!("a cached statement could not run as prepared: forgetting the statement cache");
        self.statements.forget();
    }

    /// How many statements the connection keeps prepared on the server now.
    pub fn cached_statements(&self) -> usize {
        self.statements.len()
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub(crate) fn io(&mut self) -> &mut Io {
        self.io.as_mut().expect("the stream is present until drop")
    }

    pub(crate) fn status(&self) -> TxStatus {
        self.status
    }

    pub(crate) fn custom_type(&self, name: &TypeName) -> Option<(u32, u32)> {
        self.types.get(name).copied()
    }

    pub(crate) fn remember_type(&mut self, name: TypeName, oids: (u32, u32)) {
        self.types.insert(name, oids);
    }

    /// Counts units just queued; their `ReadyForQuery`s are now due.
    pub(crate) fn expect_units(&mut self, count: usize) {
        self.pending += count;
    }

    /// Whether the server said, since [`forget_replication_warning`](Self::forget_replication_warning),
    /// that it stopped waiting for synchronous replication of a commit: the commit is local
    /// to this server and may be lost if it fails over before its standbys catch up.
    pub(crate) fn replication_unconfirmed(&self) -> bool {
        self.replication_unconfirmed
    }

    /// Starts listening anew for the synchronous-replication warning (at each exchange).
    pub(crate) fn forget_replication_warning(&mut self) {
        self.replication_unconfirmed = false;
    }

    /// Whether the server is inside a transaction the caller opened with a request of its
    /// own: a batch joins it (see [`End::Release`](super::exchange::End::Release)), and
    /// nothing pgbatch sends may end it.
    pub(crate) fn in_caller_transaction(&self) -> bool {
        self.caller_transaction && self.status != TxStatus::Idle
    }

    /// Records, after a caller's own request, whether it left a transaction open.
    #[cfg(feature = "diesel-async")]
    pub(crate) fn note_caller_request(&mut self) {
        self.caller_transaction = self.status != TxStatus::Idle;
    }

    /// The adapter state of type `T` this connection carries, made the first time it is
    /// asked for.
    #[cfg(feature = "diesel-async")]
    pub(crate) fn attachment<T: Attachment>(&mut self) -> &mut T {
        if self.attachment.as_ref().is_none_or(|(found, _)| !found.is::<T>()) {
            self.attachment = Some((Box::new(T::default()), T::fit_to_lend));
        }
        match self.attachment.as_mut().and_then(|(found, _)| found.downcast_mut::<T>()) {
            Some(found) => found,
            None => unreachable!("an attachment of this type was put in place above"),
        }
    }

    /// Whether a pool may lend the connection out: [`Connection::check`], and what the
    /// adapter state it carries says (see [`Attachment`]).
    pub(crate) fn fit_to_lend(&mut self) -> Result<(), ConnectError> {
        let checked = self.check();
        #[cfg(feature = "diesel-async")]
        if let Some((_, lends)) = self.attachment {
            return lends(self, checked);
        }
        checked
    }

    /// Gives up on the connection: closes its socket, which ends its session (and any
    /// transaction in it) on the server. A pool discards it; batches on it fail with
    /// nothing sent.
    pub(crate) fn abandon(&mut self) {
        self.broken = true;
        self.io = None;
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("broken", &self.broken)
            .field("pending", &self.pending)
            .field("status", &self.status)
            .field("custom_types", &self.types.len())
            .finish_non_exhaustive()
    }
}

//! A connection a batch has to itself, and what it knows about its own state.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::cancel::CancelToken;
use super::collect::{Answers, Ending, NotSent, Step};
use super::io::{Io, without_waiting};
use super::prelude::{Prelude, PreludeOutcome};
use super::session::{Session, SessionReset};
use super::sql::{BEGIN, ROLLBACK};
use crate::codec::TypeName;
use crate::error::{ConnectError, ServerError, SqlState, WireError};
use crate::plan::RetryPolicy;

/// The server's transaction status, from its last `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

/// The start of the WARNING a server sends when a commit stops waiting for synchronous
/// replication (a cancel request, a timeout): committed locally, perhaps not replicated.
/// PostgreSQL sends it untranslated only with `lc_messages` in English (`C`, `en_*`).
const SYNC_REPLICATION_CANCELLED: &str = "canceling wait for synchronous replication";

/// How long a dropped connection with answers due waits for the next of them before it
/// looks at its backend from another connection, and ends it if it is an orphan: waiting
/// for its client (for the rest of a stalled pipeline, inside its transaction), holding its
/// row locks for nothing. A backend still running what it was sent is left to finish it (a
/// batch sent whole runs whole), and looked at again after the same time.
const QUIET_ON_DROP: Duration = Duration::from_millis(250);

/// The longest a dropped connection keeps waiting for its answers; then its backend is
/// ended whatever it does.
const DRAIN_ON_DROP: Duration = Duration::from_secs(10);

/// How long giving up a session behind a pooler waits for its `BEGIN` to be answered.
const END_SESSION_TIMEOUT: Duration = Duration::from_secs(5);

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
    io: Option<Io>,
    /// Units sent (or queued) whose `ReadyForQuery` has not been read yet.
    pending: usize,
    status: TxStatus,
    broken: bool,
    /// Whether the holder ran something that may have left state in the session (any
    /// statement, or with [`SessionReset::WhenRecognised`] a recognised one) since the
    /// session was last made clean.
    used: bool,
    /// Whether the session must be made clean before the next unit that starts outside a
    /// transaction: it changed hands after being used, or an earlier reset did not complete.
    reset_due: bool,
    /// Whether the open transaction, if any, is one the caller opened with a request of
    /// its own (a diesel-async transaction): batches then join it and never end it.
    caller_transaction: bool,
    /// Whether the server said, during the last exchange, that it stopped waiting for
    /// synchronous replication of a commit.
    replication_unconfirmed: bool,
    parameters: HashMap<String, String>,
    cancel: CancelToken,
    /// OIDs of custom types, looked up once per connection: `(type, array type)`.
    types: HashMap<TypeName, (u32, u32)>,
    session: Arc<Session>,
    /// What the session reset runs after `DISCARD ALL`: the session setup, behind a pooler
    /// preceded by the start-up parameters `DISCARD ALL` takes back (see
    /// [`restore_startup_parameters`](Self::restore_startup_parameters)).
    reset_setup: Arc<[String]>,
    /// Ends the server process behind the connection from another connection, when it can
    /// be ended by process id (see [`backend`](super::backend)).
    end_backend: Option<EndBackend>,
    /// What a diesel-async caller keeps on the connection.
    #[cfg(feature = "diesel-async")]
    pub(crate) caller: CallerState,
}

/// What a diesel-async caller keeps on the connection: the transaction manager its
/// `transaction` calls go through, and its instrumentation.
#[cfg(feature = "diesel-async")]
pub(crate) struct CallerState {
    pub(crate) transaction_manager: diesel_async::AnsiTransactionManager,
    pub(crate) instrumentation: diesel::connection::DynInstrumentation,
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
            #[cfg(feature = "diesel-async")]
            caller: CallerState {
                transaction_manager: diesel_async::AnsiTransactionManager::default(),
                instrumentation: diesel::connection::DynInstrumentation::default_instrumentation(),
            },
        }
    }

    pub(crate) fn set_end_backend(&mut self, end_backend: Option<EndBackend>) {
        self.end_backend = end_backend;
    }

    /// Makes the session reset give the session back the parameters this connection asked
    /// for at start-up, when a pooler is in between. `DISCARD ALL` resets every parameter
    /// to its value at the *server* session's start; directly connected that is this
    /// connection's own start-up, but behind a pooler it is whatever the pooler's server
    /// connection started with, and the pooler had set this client's `application_name` on
    /// top. Without this, the unit behind the reset would run under another client's name
    /// (or none). pgbatch's `client_encoding` is UTF8 on every connection, so the pooler's
    /// server connections start with it.
    pub(crate) fn restore_startup_parameters(&mut self, application_name: Option<&str>) {
        if !self.shares_server_session() {
            return;
        }
        let Some(name) = application_name else { return };
        // A string literal: standard_conforming_strings is always on (PostgreSQL 9.1 on) and
        // start-up parameters hold no NUL byte.
        let restore = format!("SELECT set_config('application_name', '{}', false)", name.replace('\'', "''"));
        self.reset_setup = std::iter::once(restore).chain(self.session.setup.iter().cloned()).collect();
    }

    /// What the session reset runs after `DISCARD ALL`.
    pub(crate) fn reset_setup(&self) -> Arc<[String]> {
        Arc::clone(&self.reset_setup)
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

    /// Whether the server session behind the connection may be handed to other clients
    /// between its transactions: no backend of its own (a pooler in between), unless the
    /// server is CockroachDB, which shows no backend either but gives each connection a
    /// session of its own.
    fn shares_server_session(&self) -> bool {
        !self.has_own_backend() && self.parameter("crdb_version").is_none()
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

    /// Ends the current holder's time with the connection (a pool takes it back, a
    /// multiplexed batch has been written): when the holder used the session, the next unit
    /// resets it first.
    pub(crate) fn hand_over(&mut self) {
        self.reset_due |= self.used;
        self.used = false;
    }

    /// Records that a unit of the holder's is queued: `touches_session` when pgbatch
    /// recognises one of its statements as changing the session.
    pub(crate) fn note_use(&mut self, touches_session: bool) {
        self.used |= touches_session || self.resets_after_any_use();
    }

    /// What a unit must run first, in its own segment, so that it starts on a session known
    /// clean; `outside` says whether it starts outside any transaction (it begins one, or is
    /// a caller's request on an idle connection). Behind a pooler every such unit may land on
    /// a server session another client just left, so each is reset.
    pub(crate) fn prelude(&self, outside: bool) -> Prelude {
        if !outside || self.in_caller_transaction() {
            return Prelude::NONE;
        }
        let reset = self.reset_due || (self.shares_server_session() && self.resets_after_any_use());
        // With answers still due (units pipelined ahead), the state they leave is not known.
        let rollback = self.status != TxStatus::Idle || self.pending > 0;
        let commit = reset && !self.session.setup.is_empty();
        Prelude { rollback, reset, setup: if reset { self.reset_setup.len() } else { 0 }, commit }
    }

    /// Takes in what became of a unit's prelude (see [`prelude_landed`](Self::prelude_landed))
    /// and gives the session up when the prelude could not clear it; a unit the server
    /// skipped because its prelude failed is [`NotSent::Prelude`]: nothing of it ran.
    pub(crate) async fn after_prelude(&mut self, prelude: Prelude, answers: Answers) -> Result<Answers, NotSent> {
        if self.prelude_landed(prelude, answers.prelude) {
            self.end_session().await;
        }
        match answers.ending {
            Ending::Failed { step: Step::Prelude, error } => {
                let cleared = matches!(answers.prelude, PreludeOutcome::Failed { cleared: true });
                Err(NotSent::Prelude { error, cleared })
            }
            ending => Ok(Answers { ending, ..answers }),
        }
    }

    /// Takes in what became of a unit's prelude; true when the session can no longer be
    /// trusted (the reset failed before `DISCARD ALL` completed): the connection must then
    /// be given up, its session with it.
    pub(crate) fn prelude_landed(&mut self, prelude: Prelude, outcome: PreludeOutcome) -> bool {
        match outcome {
            PreludeOutcome::Done if prelude.reset => {
                self.reset_due = false;
                false
            }
            PreludeOutcome::Done | PreludeOutcome::Unknown => false,
            PreludeOutcome::Failed { cleared } => {
                // Nothing of the unit ran; the setup may be missing even when the session was
                // cleared, so the reset stays due.
                self.reset_due |= prelude.reset;
                !cleared
            }
        }
    }

    /// Gives up on the connection and on its server session, which may hold what an earlier
    /// holder left. Directly connected, closing the socket ends the session. Behind a
    /// pooler the server session would go back to the pooler's pool: it is first left inside
    /// a transaction (`BEGIN`, waited for), so that the pooler closes it when the client
    /// goes ("client disconnect while server was not ready").
    pub(crate) async fn end_session(&mut self) {
        if !self.broken
            && self.shares_server_session()
            && self.drain().await.is_ok()
            && frontend::query(BEGIN, self.io().queue()).is_ok()
        {
            self.expect_units(1);
            let _ = tokio::time::timeout(END_SESSION_TIMEOUT, self.drain()).await;
        }
        self.abandon();
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

    /// Whether statements that run on this connection make its session need a reset, when
    /// pgbatch does not recognise them as changing it.
    pub(crate) fn resets_after_any_use(&self) -> bool {
        self.session.reset == SessionReset::BetweenHolders
    }

    /// Gives up on the connection: closes its socket, which ends its session (and any
    /// transaction in it) on the server. A pool discards it; batches on it fail with
    /// nothing sent.
    pub(crate) fn abandon(&mut self) {
        self.broken = true;
        self.io = None;
    }

    /// Handles a message every state may see: parameter changes, notices and
    /// notifications, and the `ReadyForQuery` that ends a unit. Returns the message when it
    /// belongs to the unit being read.
    pub(crate) fn absorb(&mut self, message: Message) -> Option<Message> {
        match message {
            Message::ParameterStatus(body) => {
                if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                    self.parameters.insert(name.to_owned(), value.to_owned());
                }
                None
            }
            Message::NoticeResponse(body) => {
                // Every committed batch's closing ROLLBACK draws 25P01 ("there is no
                // transaction in progress"), which says nothing. A commit whose wait for
                // synchronous replication was cancelled is reported. Other notices go to a
                // debug log, their kind only, since the message can quote values.
                let notice = ServerError::parse(body.fields());
                if notice.message().starts_with(SYNC_REPLICATION_CANCELLED) {
                    self.replication_unconfirmed = true;
                } else if *notice.code() != SqlState::NO_ACTIVE_SQL_TRANSACTION {
                    tracing::debug!(severity = notice.severity(), code = notice.code().code(), "server notice");
                }
                None
            }
            Message::NotificationResponse(_) => {
                tracing::debug!("notification ignored: batches do not listen");
                None
            }
            Message::ReadyForQuery(body) => {
                self.pending = self.pending.saturating_sub(1);
                self.status = match body.status() {
                    b'T' => TxStatus::InTransaction,
                    b'E' => TxStatus::Failed,
                    _ => TxStatus::Idle,
                };
                // Whoever opened the transaction, it has ended.
                self.caller_transaction &= self.status != TxStatus::Idle;
                Some(Message::ReadyForQuery(body))
            }
            other => Some(other),
        }
    }

    /// Writes what is queued, as far as the socket takes it without waiting; the failure
    /// when the write failed.
    pub(crate) fn poll_send(&mut self, cx: &mut std::task::Context<'_>) -> Result<(), WireError> {
        if self.io().has_unwritten()
            && let Poll::Ready(Err(error)) = self.io().poll_write(cx)
        {
            return Err(WireError::Io(error));
        }
        Ok(())
    }

    /// The next message that answers a request (parameter reports and notices are taken in
    /// here, not handed on); the failure when the server closed the connection or the read
    /// failed.
    pub(crate) fn poll_answer(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Message, WireError>> {
        loop {
            let message = match std::task::ready!(self.io().poll_message(cx)) {
                Ok(Some(message)) => message,
                Ok(None) => return Poll::Ready(Err(WireError::Closed)),
                Err(error) => return Poll::Ready(Err(WireError::Io(error))),
            };
            if let Some(message) = self.absorb(message) {
                return Poll::Ready(Ok(message));
            }
        }
    }

    /// Writes what is queued and reads the answers still due, throwing them away; then
    /// notices, without waiting, a server that closed the connection or ended the session.
    pub(crate) fn poll_drain(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), WireError>> {
        if self.broken {
            return Poll::Ready(Err(WireError::Closed));
        }
        let written = match self.io().poll_write(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => return Poll::Ready(Err(self.lost(WireError::Io(error)))),
            Poll::Pending => false,
        };
        loop {
            let message = match self.io().poll_message(cx) {
                Poll::Ready(Ok(Some(message))) => message,
                Poll::Ready(Ok(None)) => return Poll::Ready(Err(self.lost(WireError::Closed))),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(self.lost(WireError::Io(error)))),
                // Nothing more has arrived: settled when nothing is due.
                Poll::Pending if self.pending == 0 && written => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            };
            match self.absorb(message) {
                Some(Message::ErrorResponse(body)) => {
                    let error = ServerError::parse(body.fields());
                    if error.ended_session() || self.pending == 0 {
                        return Poll::Ready(Err(self.lost(WireError::Session(Box::new(error)))));
                    }
                    // An earlier batch's error, already reported (or its future dropped).
                }
                Some(Message::ReadyForQuery(_)) | None => {}
                Some(_) if self.pending > 0 => {}
                Some(_) => {
                    return Poll::Ready(Err(self.lost(WireError::Protocol("a message outside any request".into()))));
                }
            }
        }
    }

    /// Waits until the answers still due have been read.
    pub(crate) async fn drain(&mut self) -> Result<(), WireError> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// Marks the connection broken and passes the error on.
    pub(crate) fn lost(&mut self, error: WireError) -> WireError {
        self.broken = true;
        error
    }

    /// Queues `ROLLBACK` without waiting for it, for a `Drop`: it is written now if the
    /// socket takes it, otherwise with whatever next uses or drops the connection. A pool
    /// discards the connection (its answer is due); a bare connection's next unit reads it
    /// first.
    pub(crate) fn queue_rollback(&mut self) {
        if self.broken {
            return;
        }
        let _ = frontend::query(ROLLBACK, self.io().queue());
        self.expect_units(1);
        let _ = without_waiting(|cx| self.io().poll_write(cx));
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let pending = self.pending;
        let end_backend = self.end_backend.take();
        let runtime = tokio::runtime::Handle::try_current();
        let Some(mut io) = self.io.take().filter(|_| !self.broken) else {
            // Lost with answers due: the server's side may still be open (a middlebox
            // closed only ours), its backend inside the transaction. End it.
            if let (Some(end_backend), Ok(runtime)) = (end_backend.filter(|_| pending > 0), runtime) {
                runtime.spawn(end_backend(Terminate::Always));
            }
            return;
        };
        // Answers still due: read them, then close. Whenever none has come for a moment,
        // end the backend if it waits for its client (the rest of a stalled pipeline, inside
        // its transaction, holding its locks); one still running what it was sent finishes
        // it. Otherwise say goodbye; closing is what matters.
        let mut goodbye = BytesMut::new();
        frontend::terminate(&mut goodbye);
        if pending == 0 && !io.has_unwritten() {
            io.queue().extend_from_slice(&goodbye);
            let _ = without_waiting(|cx| io.poll_write(cx));
            return;
        }
        let Ok(runtime) = runtime else { return };
        runtime.spawn(async move {
            let drained = drain_or_end(&mut io, pending, end_backend.as_ref()).await;
            if drained {
                io.queue().extend_from_slice(&goodbye);
            }
            io.close().await;
            if let Some(end_backend) = end_backend.filter(|_| !drained) {
                end_backend(Terminate::Always).await;
            }
        });
    }
}

/// Reads the `pending` answers still due on a dropped connection's stream (writing what is
/// queued first); true when they all came. Whenever nothing has arrived for
/// [`QUIET_ON_DROP`], asks `end_backend` to end the backend if it waits for its client, and
/// gives up when it did, or after [`DRAIN_ON_DROP`].
async fn drain_or_end(io: &mut Io, pending: usize, end_backend: Option<&EndBackend>) -> bool {
    let deadline = tokio::time::Instant::now() + DRAIN_ON_DROP;
    let mut due = pending;
    let mut written = false;
    while due > 0 && tokio::time::Instant::now() < deadline {
        let progress = tokio::time::timeout(QUIET_ON_DROP, async {
            if !written {
                io.write_all().await?;
                written = true;
            }
            if let Message::ReadyForQuery(_) = io.read_message().await? {
                due -= 1;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        match progress {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_quiet) => {
                if let Some(end_backend) = end_backend
                    && end_backend(Terminate::IfWaitingForClient).await
                {
                    return false;
                }
            }
        }
    }
    due == 0
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

//! A connection a batch has to itself, and what it knows about its own state.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::cancel::CancelToken;
use super::config::Config;
use super::io::{Io, without_waiting};
use super::session::Session;
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

/// How long a dropped connection may take to read the answers still due before it is
/// closed: long enough for a batch that was sent whole to finish on the server.
const DRAIN_ON_DROP: Duration = Duration::from_secs(60);

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
pub struct Connection {
    /// `None` only while being dropped.
    io: Option<Io>,
    /// Units sent (or queued) whose `ReadyForQuery` has not been read yet.
    pending: usize,
    status: TxStatus,
    broken: bool,
    parameters: HashMap<String, String>,
    cancel: CancelToken,
    /// OIDs of custom types, looked up once per connection: `(type, array type)`.
    types: HashMap<TypeName, (u32, u32)>,
    session: Arc<Session>,
}

impl Connection {
    pub(crate) fn new(io: Io, parameters: HashMap<String, String>, cancel: CancelToken, session: Arc<Session>) -> Self {
        Connection {
            io: Some(io),
            pending: 0,
            status: TxStatus::Idle,
            broken: false,
            parameters,
            cancel,
            types: HashMap::new(),
            session,
        }
    }

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
    /// `connect_timeout`, for every host it names.
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: unreachable host, timeout, TLS, authentication, or the server
    /// refusing the session. With several hosts, the last host's error.
    pub async fn connect_with(config: impl Into<Config>) -> Result<Self, ConnectError> {
        let config = config.into();
        super::startup::connect(&config, Arc::new(Session::default())).await
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
    /// interrupted batch are still due or a transaction is open.
    pub fn check(&mut self) -> Result<(), ConnectError> {
        if !self.broken {
            let _ = without_waiting(|cx| self.poll_settle(cx));
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

    /// Counts a unit just queued; its `ReadyForQuery` is now due.
    pub(crate) fn expect_unit(&mut self) {
        self.pending += 1;
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
                // transaction in progress"), which says nothing: other notices go to a debug
                // log, their kind only, since the message can quote values.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let notice = server_error(body.fields());
                    if *notice.code() != SqlState::NO_ACTIVE_SQL_TRANSACTION {
                        tracing::debug!(severity = notice.severity(), code = notice.code().code(), "server notice");
                    }
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
                Some(Message::ReadyForQuery(body))
            }
            other => Some(other),
        }
    }

    /// Writes what is queued and reads the answers still due, throwing them away; then
    /// notices, without waiting, a server that closed the connection or ended the session.
    pub(crate) fn poll_settle(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), WireError>> {
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
                    let error = server_error(body.fields());
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
    pub(crate) async fn settle(&mut self) -> Result<(), WireError> {
        std::future::poll_fn(|cx| self.poll_settle(cx)).await
    }

    /// Marks the connection broken and passes the error on.
    pub(crate) fn lost(&mut self, error: WireError) -> WireError {
        self.broken = true;
        error
    }

    /// Queues `ROLLBACK` without waiting for it, for a `Drop`: it is written now if the
    /// socket takes it, otherwise with whatever next uses or drops the connection.
    pub(crate) fn queue_rollback(&mut self) {
        if self.broken {
            return;
        }
        let _ = frontend::query(super::exchange::ROLLBACK, self.io().queue());
        self.expect_unit();
        let _ = without_waiting(|cx| self.io().poll_write(cx));
    }
}

/// A server error from an `ErrorResponse` or `NoticeResponse`'s fields.
pub(crate) fn server_error(mut fields: postgres_protocol::message::backend::ErrorFields<'_>) -> ServerError {
    let mut pairs = Vec::new();
    while let Ok(Some(field)) = fields.next() {
        pairs.push((field.type_(), String::from_utf8_lossy(field.value_bytes()).into_owned()));
    }
    ServerError::from_fields(pairs.iter().map(|(kind, value)| (*kind, value.as_str())))
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else { return };
        if self.broken {
            return;
        }
        // Answers still due: let the server finish what it was sent (a batch sent whole
        // runs whole), then close. Otherwise say goodbye; closing is what matters.
        let pending = self.pending;
        let mut goodbye = BytesMut::new();
        frontend::terminate(&mut goodbye);
        if pending == 0 && !io.has_unwritten() {
            io.queue().extend_from_slice(&goodbye);
            let _ = without_waiting(|cx| io.poll_write(cx));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let drained = tokio::time::timeout(DRAIN_ON_DROP, async {
                io.write_all().await?;
                let mut due = pending;
                while due > 0 {
                    if let Message::ReadyForQuery(_) = io.read_message().await? {
                        due -= 1;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if matches!(drained, Ok(Ok(()))) {
                io.queue().extend_from_slice(&goodbye);
            }
            io.close().await;
        });
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

//! Reading a connection's answers: what every state may see (parameter reports, notices,
//! the `ReadyForQuery` that ends a unit), writing what is queued, draining the answers of
//! units nobody waits for, and a connection lost.

use std::task::Poll;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::state::{Connection, TxStatus};
use crate::connect::without_waiting;
use crate::error::{ServerError, SqlState, WireError};
use crate::protocol::sql::ROLLBACK;

/// The start of the WARNING a server sends when a commit stops waiting for synchronous
/// replication (a cancel request, a timeout): committed locally, perhaps not replicated.
/// PostgreSQL sends it untranslated only with `lc_messages` in English (`C`, `en_*`).
const SYNC_REPLICATION_CANCELLED: &str = "canceling wait for synchronous replication";

impl Connection {
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
        if self.pending > 0 {
            // Answers read without their units: whether a Parse among them ran is not known.
            self.statements.forget_pending();
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

//! Units in flight: writing what is queued while reading the answers, unit by unit, until
//! every unit due has answered or the connection fails.
//!
//! A unit is the requests up to and including one `Sync` (or one simple `Query`); the
//! server answers each with one `ReadyForQuery`. Some units' answers are collected (a
//! batch, a type lookup); others only have to be read (a `ROLLBACK` that makes sure the
//! connection ends outside any transaction).

use std::collections::VecDeque;
use std::task::{Context, Poll};

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::state::{Connection, TxStatus};
use crate::error::{ServerError, SqlState, WireError};
use crate::protocol::Collector;
use crate::protocol::{Answers, Ending};

/// One unit due.
pub(crate) enum Unit {
    /// Its answers are collected.
    Collect(Collector),
    /// Its answers are read and dropped; an error in it is kept.
    Discard,
}

/// What a flight brought back.
pub(crate) struct Landed {
    /// The collected units' answers, in order.
    pub(crate) answers: Vec<Answers>,
    /// The first error of a discarded unit.
    pub(crate) discarded_error: Option<Box<ServerError>>,
}

impl Landed {
    /// Whether the server refused a write because its session is read-only (`25006`: a
    /// standby, or a primary still read-only during a failover). Every session opened
    /// before it became writable stays that way, so the connection is worth nothing to
    /// writers.
    pub(crate) fn refused_writes(&self) -> bool {
        self.answers.iter().any(|answers| {
            matches!(&answers.ending, Ending::Failed { error, .. } if *error.code() == SqlState::READ_ONLY_SQL_TRANSACTION)
        })
    }
}

/// What reads a connection's answers: one flight, or a [`Pipeline`](super::pipeline::Pipeline)
/// of them.
pub(crate) trait Reader {
    /// Whether every answer due has been read.
    fn answered(&self) -> bool;

    /// Takes the next message the server sent.
    fn take(&mut self, connection: &mut Connection, message: Message) -> Result<(), WireError>;

    /// The connection failed: every unit still due reports the failure.
    fn fail(&mut self, connection: &mut Connection, error: WireError);
}

/// The one read loop: writes what is queued while reading the answers and handing them to
/// `reader`, until every answer due has been read and every byte written, or the
/// connection fails. Writing and reading interleave, so that a server that answers early
/// and blocks on its full output buffer is never deadlocked against a client still writing.
pub(crate) fn poll_answers(reader: &mut impl Reader, connection: &mut Connection, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        if let Err(error) = connection.poll_send(cx) {
            reader.fail(connection, error);
            return Poll::Ready(());
        }
        if reader.answered() && !connection.io().has_unwritten() {
            return Poll::Ready(());
        }
        let message = match connection.poll_answer(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(message)) => message,
            Poll::Ready(Err(error)) => {
                reader.fail(connection, error);
                return Poll::Ready(());
            }
        };
        if let Err(error) = reader.take(connection, message) {
            reader.fail(connection, error);
            return Poll::Ready(());
        }
    }
}

/// The units of one exchange, in the order they were queued.
pub(crate) struct Flight {
    units: VecDeque<Unit>,
    answers: Vec<Answers>,
    /// The first error of a discarded unit.
    discarded_error: Option<Box<ServerError>>,
    /// Where the end step (`COMMIT`) of the first collected unit ends in the byte stream.
    end_offset: Option<u64>,
    /// When the first collected unit leaves a transaction open and fails, roll it back at
    /// once (a two-phase batch's first round trip).
    roll_back_open_failure: bool,
}

impl Flight {
    pub(crate) fn new() -> Self {
        Flight {
            units: VecDeque::new(),
            answers: Vec::new(),
            discarded_error: None,
            end_offset: None,
            roll_back_open_failure: false,
        }
    }

    /// Adds a unit just queued on `connection`.
    pub(crate) fn push(&mut self, connection: &mut Connection, unit: Unit) {
        connection.expect_units(1);
        self.units.push_back(unit);
    }

    pub(crate) fn set_end_offset(&mut self, offset: u64) {
        self.end_offset = Some(offset);
    }

    pub(crate) fn roll_back_open_failure(&mut self) {
        self.roll_back_open_failure = true;
    }

    /// Drives the connection until every unit has answered; returns the collected units'
    /// answers, in order. When the connection fails, the units still due report it.
    pub(crate) async fn land(mut self, connection: &mut Connection) -> Landed {
        std::future::poll_fn(|cx| self.poll(connection, cx)).await;
        self.landed()
    }

    /// Hands one message of this flight's to it, for a [`Pipeline`](super::pipeline::Pipeline)
    /// that reads for several flights in turn; true once every unit has answered.
    pub(crate) fn accept(&mut self, connection: &mut Connection, message: Message) -> Result<bool, WireError> {
        self.take(connection, message)?;
        Ok(self.units.is_empty())
    }

    /// What the flight brought back, once every unit has answered or reported a failure.
    pub(crate) fn landed(self) -> Landed {
        Landed { answers: self.answers, discarded_error: self.discarded_error }
    }

    fn poll(&mut self, connection: &mut Connection, cx: &mut Context<'_>) -> Poll<()> {
        poll_answers(self, connection, cx)
    }
}

impl Reader for Flight {
    fn answered(&self) -> bool {
        self.units.is_empty()
    }

    /// Hands a message to the unit it belongs to.
    fn take(&mut self, connection: &mut Connection, message: Message) -> Result<(), WireError> {
        let Some(unit) = self.units.front_mut() else {
            return match message {
                // A server that ends the session between requests says so first.
                Message::ErrorResponse(body) => Err(WireError::Session(Box::new(ServerError::parse(body.fields())))),
                _ => Err(WireError::Protocol("a message outside any request".into())),
            };
        };
        match unit {
            Unit::Discard => match message {
                Message::ReadyForQuery(_) => {
                    self.units.pop_front();
                }
                Message::ErrorResponse(body) => {
                    let error = ServerError::parse(body.fields());
                    tracing::debug!(code = error.code().code(), "a follow-up request of a batch failed");
                    self.discarded_error.get_or_insert(Box::new(error));
                }
                _ => {}
            },
            Unit::Collect(collector) => {
                if collector.take(message)? {
                    let Some(Unit::Collect(collector)) = self.units.pop_front() else { unreachable!("matched above") };
                    let (prepared, parsed) = collector.parses();
                    connection.statements.settle(prepared, parsed);
                    let failed = collector.failed();
                    self.answers.push(collector.finish());
                    if failed && self.roll_back_open_failure && connection.status() != TxStatus::Idle {
                        // The first round trip of a two-phase batch failed inside its open
                        // transaction: end it now, before the connection is handed back.
                        frontend::query(crate::protocol::sql::ROLLBACK, connection.io().queue())
                            .map_err(|e| WireError::Protocol(e.to_string()))?;
                        self.units.push_front(Unit::Discard);
                        connection.expect_units(1);
                    }
                    self.roll_back_open_failure = false;
                }
            }
        }
        Ok(())
    }

    /// The connection failed: it is broken, and every unit still due reports the failure.
    fn fail(&mut self, connection: &mut Connection, error: WireError) {
        let error = connection.lost(error);
        let end_sent = self.end_offset.is_some_and(|offset| connection.io().written() >= offset);
        let mut error = Some(error);
        for unit in self.units.drain(..) {
            if let Unit::Collect(collector) = unit {
                let (prepared, parsed) = collector.parses();
                connection.statements.settle(prepared, parsed);
                // The first collected unit gets the error itself, the others a copy of its
                // kind; only the first can have an end step in flight.
                let this = error.take().unwrap_or(WireError::Closed);
                let end_sent = end_sent && self.end_offset.take().is_some();
                self.answers.push(collector.lost(this, end_sent));
            }
        }
    }
}

//! Reading one unit's answers: which step each answer belongs to, the rows and row count
//! of every statement, and the first error.

use std::ops::Range;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};

use super::connection::server_error;
use crate::codec::{Column, Row, StepOutput};
use crate::error::{ServerError, SqlState, WireError};

/// A step of a batch's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Begin,
    Statement(usize),
    /// `COMMIT` or `ROLLBACK`.
    End,
}

/// How a batch's unit ended, read from its answers.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every step answered: the end step as asked (`COMMIT` committed, `ROLLBACK` rolled
    /// back), or, without an end step, every statement ran and the transaction is open.
    Done,
    /// A step failed; the server skipped every step after it.
    Failed { step: Step, error: Box<ServerError> },
    /// The connection failed before the unit's answers were complete. `end_sent` says
    /// whether the end step (`COMMIT`) had been written whole by then.
    Lost { error: WireError, end_sent: bool },
}

/// What a batch's unit answered.
#[derive(Debug)]
pub(crate) struct Answers {
    /// One output per statement that completed, in order.
    pub(crate) outputs: Vec<StepOutput>,
    pub(crate) ending: Ending,
}

/// Follows a unit's answers step by step.
pub(crate) struct Collector {
    /// Steps before the statements (`BEGIN`, a savepoint), reported as [`Step::Begin`].
    prefix: usize,
    statements: usize,
    /// Steps between the statements and the end (releasing a savepoint), reported as
    /// [`Step::End`].
    suffix: usize,
    /// The tag the end step must answer with, if there is one.
    end_tag: Option<&'static str>,
    /// Steps completed so far.
    completed: usize,
    columns: Option<Arc<[Column]>>,
    rows: Vec<Row>,
    outputs: Vec<StepOutput>,
    failure: Option<(Step, Box<ServerError>)>,
    /// Whether the end step answered as asked.
    ended: bool,
}

impl Collector {
    pub(crate) fn new(prefix: usize, statements: usize, suffix: usize, end_tag: Option<&'static str>) -> Self {
        Collector {
            prefix,
            statements,
            suffix,
            end_tag,
            completed: 0,
            columns: None,
            rows: Vec::new(),
            outputs: Vec::with_capacity(statements),
            failure: None,
            ended: false,
        }
    }

    /// The step the next answer belongs to.
    fn step(&self) -> Step {
        match self.completed.checked_sub(self.prefix) {
            None => Step::Begin,
            Some(index) if index < self.statements => Step::Statement(index),
            Some(_) => Step::End,
        }
    }

    /// Whether the next answer is the end step's own (not a step before it).
    fn at_end(&self) -> bool {
        self.completed >= self.prefix + self.statements + self.suffix
    }

    /// Takes one message of the unit. Returns true at its `ReadyForQuery`.
    pub(crate) fn take(&mut self, message: Message) -> Result<bool, WireError> {
        match message {
            Message::ParseComplete | Message::BindComplete | Message::NoData => {}
            Message::RowDescription(body) => self.columns = Some(columns(&body)?),
            Message::DataRow(body) => {
                let columns = self.columns.clone().ok_or_else(|| protocol("a row without a row description"))?;
                self.rows.push(row(columns, &body)?);
            }
            Message::CommandComplete(body) => {
                let tag = body.tag().map_err(|_| protocol("a command tag that is not UTF-8"))?;
                self.complete(tag);
            }
            Message::EmptyQueryResponse => self.complete(""),
            Message::ErrorResponse(body) => {
                if self.ended {
                    // The end step answered first: the transaction ended as asked. A cancel or
                    // statement timeout the server acts on after that, before the Sync,
                    // cannot undo a commit.
                    tracing::debug!("an error after the transaction ended is not the batch's");
                } else if self.failure.is_none() {
                    // After an error the server skips to the Sync: there is only one.
                    self.failure = Some((self.step(), Box::new(server_error(body.fields()))));
                }
            }
            Message::ReadyForQuery(_) => return Ok(true),
            Message::PortalSuspended | Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                return Err(protocol("a statement asked for a sub-protocol a batch does not speak"));
            }
            _ => return Err(protocol("an unexpected message in a batch's answers")),
        }
        Ok(false)
    }

    fn complete(&mut self, tag: &str) {
        match self.step() {
            Step::Begin => {}
            Step::Statement(_) => {
                self.columns = None;
                let affected = tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                self.outputs.push(StepOutput { rows: std::mem::take(&mut self.rows), affected });
            }
            Step::End if !self.at_end() => {}
            Step::End => match self.end_tag {
                Some(expected) if tag == expected => self.ended = true,
                // `COMMIT` of a transaction the server had already aborted answers
                // `ROLLBACK`. With one Sync per unit an abort shows as an error first, so
                // this is a server's own doing; either way nothing committed.
                _ => {
                    let error = ServerError::synthetic(
                        SqlState::IN_FAILED_SQL_TRANSACTION,
                        format!("the server answered the end of the transaction with {tag:?}: it rolled back"),
                    );
                    self.failure.get_or_insert((Step::End, Box::new(error)));
                }
            },
        }
        self.completed += 1;
    }

    /// Whether the unit's steps all succeeded so far.
    pub(crate) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The answers of a unit whose `ReadyForQuery` arrived.
    pub(crate) fn finish(self) -> Answers {
        let ending = match self.failure {
            Some((step, error)) => Ending::Failed { step, error },
            None if self.end_tag.is_some() && !self.ended => {
                Ending::Lost { error: protocol("the unit ended without its end step's answer"), end_sent: true }
            }
            None => Ending::Done,
        };
        Answers { outputs: self.outputs, ending }
    }

    /// The answers of a unit cut short by a failed connection.
    pub(crate) fn lost(self, error: WireError, end_sent: bool) -> Answers {
        let ending = match self.failure {
            // What the server said before the connection failed stands.
            Some((step, error)) => Ending::Failed { step, error },
            None if self.ended => Ending::Done,
            None => Ending::Lost { error, end_sent },
        };
        Answers { outputs: self.outputs, ending }
    }
}

fn protocol(what: &str) -> WireError {
    WireError::Protocol(what.to_owned())
}

fn columns(body: &RowDescriptionBody) -> Result<Arc<[Column]>, WireError> {
    body.fields()
        .map(|field| Ok(Column { name: field.name().to_owned(), type_oid: field.type_oid() }))
        .collect::<Vec<_>>()
        .map(Arc::from)
        .map_err(|_| protocol("a malformed row description"))
}

fn row(columns: Arc<[Column]>, body: &DataRowBody) -> Result<Row, WireError> {
    let values: Vec<Option<Range<usize>>> = body.ranges().collect().map_err(|_| protocol("a malformed data row"))?;
    if values.len() != columns.len() {
        return Err(protocol("a data row whose width does not match its description"));
    }
    Ok(Row::new(columns, body.buffer_bytes().clone(), values))
}

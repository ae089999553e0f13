//! Reading one unit's answers: which step each answer belongs to, the rows and row count
//! of every statement, and the first error.

use std::ops::Range;
use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message, RowDescriptionBody};

use super::prelude::{Prelude, PreludeOutcome};
use super::unit::{Answers, Ending, Position, Prepared};
use crate::codec::{Column, Row, StepOutput};
use crate::error::{ServerError, SqlState, WireError};

/// Follows a unit's answers step by step.
pub(crate) struct Collector {
    /// Steps written before the unit's own, in the same segment.
    prelude: Prelude,
    /// Steps before the statements (`BEGIN`, a savepoint), reported as [`Position::Begin`].
    prefix: usize,
    statements: usize,
    /// Steps between the statements and the end (releasing a savepoint), reported as
    /// [`Position::End`].
    suffix: usize,
    /// The tag the end step must answer with, if there is one.
    end_tag: Option<&'static str>,
    /// Steps completed so far.
    completed: usize,
    columns: Option<Arc<[Column]>>,
    rows: Vec<Row>,
    outputs: Vec<StepOutput>,
    failure: Option<(Position, Box<ServerError>)>,
    /// Whether the end step answered as asked.
    ended: bool,
    /// `ParseComplete`s read: the first this many `Parse` messages of the unit ran.
    parsed: usize,
    /// Whether the step being answered has bound (its `BindComplete` came).
    bound: bool,
    /// Whether the failure came before its step had bound.
    failed_before_running: bool,
    /// The unit's `Parse`s into named statements.
    prepared: Vec<Prepared>,
}

impl Collector {
    pub(crate) fn new(prefix: usize, statements: usize, suffix: usize, end_tag: Option<&'static str>) -> Self {
        Collector {
            prelude: Prelude::NONE,
            prefix,
            statements,
            suffix,
            end_tag,
            completed: 0,
            columns: None,
            rows: Vec::new(),
            // A caller's simple query says `usize::MAX`: as many as it holds.
            outputs: Vec::with_capacity(statements.min(64)),
            failure: None,
            ended: false,
            parsed: 0,
            bound: false,
            failed_before_running: false,
            prepared: Vec::new(),
        }
    }

    /// The unit parses these named statements.
    pub(crate) fn preparing(mut self, prepared: Vec<Prepared>) -> Self {
        self.prepared = prepared;
        self
    }

    /// The unit's named `Parse`s, and how many of its `Parse` messages the server
    /// confirmed so far.
    pub(crate) fn parses(&self) -> (&[Prepared], usize) {
        (&self.prepared, self.parsed)
    }

    /// The unit's steps follow `prelude`'s, in the same segment.
    pub(crate) fn after(mut self, prelude: Prelude) -> Self {
        self.prelude = prelude;
        self
    }

    /// The step the next answer belongs to.
    fn position(&self) -> Position {
        let Some(own) = self.completed.checked_sub(self.prelude.steps()) else { return Position::Prelude };
        match own.checked_sub(self.prefix) {
            None => Position::Begin,
            Some(index) if index < self.statements => Position::Statement(index),
            Some(_) => Position::End,
        }
    }

    /// Whether the next answer is the end step's own (not a step before it).
    fn at_end(&self) -> bool {
        // A caller's simple query says `usize::MAX` statements.
        self.completed
            >= self
                .prelude
                .steps()
                .saturating_add(self.prefix)
                .saturating_add(self.statements)
                .saturating_add(self.suffix)
    }

    /// What became of the prelude, from the answers read so far.
    fn prelude_outcome(&self) -> PreludeOutcome {
        match &self.failure {
            Some((Position::Prelude, _)) => PreludeOutcome::Failed {
                cleared: self.prelude.discard_step().is_some_and(|discard| self.completed > discard),
            },
            _ if self.completed >= self.prelude.steps() => PreludeOutcome::Done,
            // A failure after the prelude means every step of it answered.
            Some(_) => PreludeOutcome::Done,
            None => PreludeOutcome::Unknown,
        }
    }

    /// Takes one message of the unit. Returns true at its `ReadyForQuery`.
    pub(crate) fn take(&mut self, message: Message) -> Result<bool, WireError> {
        match message {
            Message::ParseComplete => self.parsed += 1,
            Message::BindComplete => self.bound = true,
            Message::NoData | Message::CloseComplete => {}
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
                    self.failure = Some((self.position(), Box::new(ServerError::parse(body.fields()))));
                    self.failed_before_running = !self.bound;
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
        let position = self.position();
        if !matches!(position, Position::Statement(_)) {
            // Rows of a step that is not a statement (a setup `SELECT`) are nobody's.
            self.rows.clear();
            self.columns = None;
        }
        match position {
            Position::Prelude | Position::Begin => {}
            Position::Statement(_) => {
                self.columns = None;
                let affected = tag.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                self.outputs.push(StepOutput { rows: std::mem::take(&mut self.rows), affected });
            }
            Position::End if !self.at_end() => {}
            Position::End => match self.end_tag {
                Some(expected) if tag == expected => self.ended = true,
                // `COMMIT` of a transaction the server had already aborted answers
                // `ROLLBACK`. With one Sync per unit an abort shows as an error first, so
                // this is a server's own doing; either way nothing committed.
                _ => {
                    let error = ServerError::synthetic(
                        SqlState::IN_FAILED_SQL_TRANSACTION,
                        format!("the server answered the end of the transaction with {tag:?}: it rolled back"),
                    );
                    self.failure.get_or_insert((Position::End, Box::new(error)));
                }
            },
        }
        self.completed += 1;
        self.bound = false;
    }

    /// Whether the unit's steps all succeeded so far.
    pub(crate) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The answers of a unit whose `ReadyForQuery` arrived.
    pub(crate) fn finish(self) -> Answers {
        let prelude = self.prelude_outcome();
        let ending = match self.failure {
            Some((at, error)) => Ending::Failed { at, error },
            None if self.end_tag.is_some() && !self.ended => {
                Ending::Lost { error: protocol("the unit ended without its end step's answer"), end_sent: true }
            }
            None => Ending::Done,
        };
        Answers { outputs: self.outputs, ending, prelude, failed_before_running: self.failed_before_running }
    }

    /// The answers of a unit cut short by a failed connection.
    pub(crate) fn lost(self, error: WireError, end_sent: bool) -> Answers {
        let prelude = self.prelude_outcome();
        let ending = match self.failure {
            // What the server said before the connection failed stands.
            Some((at, error)) => Ending::Failed { at, error },
            None if self.ended => Ending::Done,
            None => Ending::Lost { error, end_sent },
        };
        Answers { outputs: self.outputs, ending, prelude, failed_before_running: self.failed_before_running }
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

/// The collector fed recorded answer streams, byte by byte: no server needed.
#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::backend::Message;

    use super::*;

    /// One backend message: its type byte, its length and its body.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn complete(tag: &str) -> Vec<u8> {
        message(b'C', format!("{tag}\0").as_bytes())
    }

    fn error(code: &str) -> Vec<u8> {
        message(b'E', format!("SERROR\0C{code}\0Msomething failed\0\0").as_bytes())
    }

    /// A row description of one int4 column `n`, and a row holding `value`.
    fn one_row(value: i32) -> Vec<u8> {
        let mut description = BytesMut::new();
        description.put_i16(1);
        description.put_slice(b"n\0");
        description.put_i32(0);
        description.put_i16(0);
        description.put_u32(23);
        description.put_i16(4);
        description.put_i32(-1);
        description.put_i16(1);
        let mut row = BytesMut::new();
        row.put_i16(1);
        row.put_i32(4);
        row.put_i32(value);
        [message(b'T', &description), message(b'D', &row)].concat()
    }

    const PARSED_AND_BOUND: [u8; 10] = [b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4];

    /// The answers to `BEGIN; SELECT (one row); INSERT; COMMIT; Sync`, with `fail` replacing
    /// the completion of step `fail` (0 = BEGIN, 3 = COMMIT) by an error.
    fn stream(fail: Option<usize>) -> Vec<u8> {
        let steps: [Vec<u8>; 4] = [
            complete("BEGIN"),
            [one_row(7), complete("SELECT 1")].concat(),
            [message(b'n', &[]), complete("INSERT 0 1")].concat(),
            complete("COMMIT"),
        ];
        let mut out = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            out.extend_from_slice(&PARSED_AND_BOUND);
            if fail == Some(index) {
                out.extend(error("23505"));
                break;
            }
            out.extend_from_slice(step);
        }
        out.extend(message(b'Z', b"I"));
        out
    }

    fn collector() -> Collector {
        Collector::new(1, 2, 0, Some("COMMIT"))
    }

    /// Feeds `bytes` in chunks of `chunk` bytes, as reads would deliver them; returns the
    /// collector and whether the unit's `ReadyForQuery` arrived.
    fn feed(bytes: &[u8], chunk: usize) -> (Collector, bool) {
        let mut collector = collector();
        let mut buffer = BytesMut::new();
        for piece in bytes.chunks(chunk.max(1)) {
            buffer.extend_from_slice(piece);
            while let Some(message) = Message::parse(&mut buffer).expect("a well-formed stream") {
                if collector.take(message).expect("an expected message") {
                    return (collector, true);
                }
            }
        }
        (collector, false)
    }

    #[test]
    fn a_failure_before_its_steps_bind_complete_is_told_apart_from_one_while_it_ran() {
        // The INSERT's error after its `BindComplete`: it ran.
        let (ran, _) = feed(&stream(Some(2)), 64);
        assert!(!ran.finish().failed_before_running);
        // The INSERT's `Parse` answered, its `Bind` failed (a cached plan gone stale).
        let before_bind = [
            PARSED_AND_BOUND.to_vec(),
            complete("BEGIN"),
            PARSED_AND_BOUND.to_vec(),
            one_row(7),
            complete("SELECT 1"),
            message(b'1', &[]),
            error("0A000"),
            message(b'Z', b"E"),
        ]
        .concat();
        let (collector, done) = feed(&before_bind, 64);
        assert!(done);
        let answers = collector.finish();
        assert!(answers.failed_before_running);
        assert!(matches!(answers.ending, Ending::Failed { at: Position::Statement(1), .. }), "{:?}", answers.ending);
    }

    #[test]
    fn a_whole_stream_in_any_chunking_is_done_with_every_output() {
        let bytes = stream(None);
        for chunk in [1, 2, 3, 5, 7, 64, bytes.len()] {
            let (collector, ready) = feed(&bytes, chunk);
            assert!(ready);
            let answers = collector.finish();
            assert!(matches!(answers.ending, Ending::Done), "chunks of {chunk}: {:?}", answers.ending);
            assert_eq!(answers.outputs.len(), 2);
            assert_eq!(answers.outputs[0].rows[0].value(0), Some(&7i32.to_be_bytes()[..]));
            assert_eq!((answers.outputs[0].affected, answers.outputs[1].affected), (1, 1));
        }
    }

    #[test]
    fn an_error_at_each_step_is_that_steps_failure() {
        let expected = [Position::Begin, Position::Statement(0), Position::Statement(1), Position::End];
        for (fail, step) in expected.into_iter().enumerate() {
            let (collector, ready) = feed(&stream(Some(fail)), 3);
            assert!(ready);
            let answers = collector.finish();
            match answers.ending {
                Ending::Failed { at: failed, error } => {
                    assert_eq!(failed, step);
                    assert_eq!(*error.code(), SqlState::UNIQUE_VIOLATION);
                }
                other => panic!("step {fail}: {other:?}"),
            }
            assert_eq!(answers.outputs.len(), fail.saturating_sub(1).min(2), "outputs before step {fail}");
        }
    }

    /// A connection cut after every byte of the answers: the verdict is done only when
    /// `COMMIT`'s own answer arrived whole, failed when an error did, and lost otherwise,
    /// with whether `COMMIT` had been written passed through.
    #[test]
    fn a_cut_after_any_byte_is_judged_by_what_arrived() {
        for fail in [None, Some(1), Some(3)] {
            let bytes = stream(fail);
            let commit_answered = fail.is_none().then(|| {
                let end = complete("COMMIT");
                bytes.windows(end.len()).position(|w| w == end).unwrap() + end.len()
            });
            let error_at = fail.map(|_| bytes.iter().position(|&b| b == b'E').unwrap());
            for cut in 0..bytes.len() {
                for end_sent in [false, true] {
                    let (collector, ready) = feed(&bytes[..cut], 1);
                    assert!(!ready, "no ReadyForQuery before the last message");
                    let answers = collector.lost(WireError::Closed, end_sent);
                    match answers.ending {
                        Ending::Done => assert!(commit_answered.is_some_and(|at| cut >= at), "{fail:?} cut at {cut}"),
                        Ending::Failed { .. } => assert!(error_at.is_some_and(|at| cut > at), "{fail:?} cut at {cut}"),
                        Ending::Lost { end_sent: passed, .. } => {
                            assert_eq!(passed, end_sent);
                            assert!(commit_answered.is_none_or(|at| cut < at), "{fail:?} cut at {cut}");
                        }
                    }
                }
            }
        }
    }

    /// A cancel or timeout the server acts on after `COMMIT` answered, before the `Sync`,
    /// cannot undo the commit.
    #[test]
    fn an_error_after_commit_answered_leaves_it_done() {
        let mut bytes = stream(None);
        let ready = bytes.len() - 6;
        bytes.splice(ready..ready, error("57014"));
        let (collector, ready) = feed(&bytes, 4);
        assert!(ready);
        assert!(matches!(collector.finish().ending, Ending::Done));
    }

    /// `COMMIT` of a transaction the server had already aborted answers with the tag
    /// `ROLLBACK`: nothing committed.
    #[test]
    fn a_commit_answered_rollback_is_a_failure_at_the_end() {
        let bytes = stream(None);
        let commit = complete("COMMIT");
        let at = bytes.windows(commit.len()).position(|w| w == commit).unwrap();
        let mut rolled_back = bytes[..at].to_vec();
        rolled_back.extend(complete("ROLLBACK"));
        rolled_back.extend(message(b'Z', b"I"));
        let answers = feed(&rolled_back, 5).0.finish();
        assert!(
            matches!(&answers.ending, Ending::Failed { at: Position::End, error } if *error.code() == SqlState::IN_FAILED_SQL_TRANSACTION),
            "{:?}",
            answers.ending
        );
    }

    #[test]
    fn a_sub_protocol_or_a_row_without_description_is_a_protocol_error() {
        for bad in [message(b'G', &[0, 0, 0]), message(b'D', &[0, 0])] {
            let mut buffer = BytesMut::from(&bad[..]);
            let message = Message::parse(&mut buffer).unwrap().unwrap();
            assert!(matches!(collector().take(message), Err(WireError::Protocol(_))));
        }
    }
}

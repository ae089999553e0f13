//! The verdict on one run of a batch, derived from every answer: never from `COMMIT`'s
//! answer alone, and never a success or a failure where the answers leave it open.

use std::sync::Arc;
use std::time::SystemTime;

use crate::connection::End;
use crate::error::{
    AlreadyCommitted, BeginFailure, BuildError, Cause, CommitFailure, Error, OutcomeUnknown, ResetFailure, SqlState,
    StatementFailure, UnknownReason,
};
use crate::plan::{Entry, Fragment, IdempotencyKey, MarkerRow, Results};
use crate::protocol::{Answers, BatchNotSent, Ending, NotSent, Position, PreludeOutcome};

/// SQLSTATEs with which a server says it cannot tell whether a commit applied:
/// `40003` (`statement_completion_unknown`, CockroachDB's "result is ambiguous") and
/// `08007` (`transaction_resolution_unknown`).
const OUTCOME_UNKNOWN_CODES: [SqlState; 2] =
    [SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN, SqlState::TRANSACTION_RESOLUTION_UNKNOWN];

/// What one run of a batch is judged against: its statements as sent (the idempotency
/// marker, when there is a key, is statement 0 of the wire), how it ended, and which
/// attempt it was.
pub(crate) struct Verdict<'b, E> {
    pub(crate) body: &'b Fragment<E>,
    pub(crate) key: Option<&'b IdempotencyKey>,
    pub(crate) end: End,
    pub(crate) attempts: u32,
}

impl<E> Verdict<'_, E> {
    /// Statements the wire carries before the batch's own.
    fn offset(&self) -> usize {
        usize::from(self.key.is_some())
    }

    /// The results of a run whose answers all came back, or its error.
    pub(crate) fn judge(&self, answers: Answers) -> Result<Results, Error<E>> {
        let Answers { mut outputs, ending, prelude: answers_prelude, .. } = answers;
        match ending {
            Ending::Done => {
                outputs.drain(..self.offset().min(outputs.len()));
                let labels = self.body.entries.iter().map(|e| e.label.clone()).collect();
                Ok(Results::new(outputs, labels, self.body.scopes.clone()))
            }
            Ending::Failed { at: Position::Prelude, error } => {
                // The wire reports a failed prelude as not sent; should one come here, the
                // batch did not run either.
                let cleared = matches!(answers_prelude, PreludeOutcome::Failed { cleared: true });
                Err(Error::SessionReset(Box::new(ResetFailure::new(
                    Cause::from_server(*error),
                    cleared,
                    self.attempts,
                ))))
            }
            Ending::Failed { at: Position::Begin, error } => {
                Err(Error::Begin(Box::new(BeginFailure::new(Cause::from_server(*error), self.attempts))))
            }
            Ending::Failed { at: Position::Statement(index), error } => Err(self.statement_failed(index, *error)),
            ending => Err(self.end_verdict().judge(self.end, ending).expect_err("the other endings fail")),
        }
    }

    /// How this batch's end step is judged.
    pub(crate) fn end_verdict(&self) -> EndVerdict {
        EndVerdict {
            statement_count: self.body.len(),
            key: self.key.map(|k| k.key().to_owned()),
            attempts: self.attempts,
        }
    }

    /// The error of a run that was not sent at all.
    pub(crate) fn not_sent(&self, reason: BatchNotSent) -> Error<E> {
        let statement = |index: usize| index.checked_sub(self.offset()).map(|index| self.body.statement_ref(index));
        not_sent(reason, statement, self.attempts)
    }

    fn statement_failed(&self, wire_index: usize, error: crate::error::ServerError) -> Error<E> {
        let Some(index) = wire_index.checked_sub(self.offset()) else {
            let key = self.key.expect("an offset means a key");
            // Taken by a commit or a fence: the run reads the marker to say which.
            if crate::plan::key_taken(&error) {
                return Error::AlreadyCommitted(already_committed(key.key(), None));
            }
            return Error::IdempotencyMarker { cause: Cause::from_server(error), attempts: self.attempts };
        };
        let entry: &Entry = &self.body.entries[index];
        let guard_failure = entry.guard.as_ref().and_then(|guard| guard.failure(&error, entry.label.as_deref()));
        let cause = guard_failure.map_or_else(|| Cause::from_server(error), Cause::GuardFailed);
        let failure =
            Box::new(StatementFailure::new(self.body.statement_ref(index), self.body.len(), cause, self.attempts));
        match self.body.map(&failure) {
            Some(domain) => Error::Domain { error: domain, failure },
            None => Error::Statement(failure),
        }
    }
}

/// How the end step of a batch (`COMMIT`, or the `ROLLBACK` of a read) is judged: what a
/// two-phase batch's second round trip needs of its batch, without the batch.
#[derive(Debug, Clone)]
pub(crate) struct EndVerdict {
    statement_count: usize,
    key: Option<String>,
    attempts: u32,
}

impl EndVerdict {
    /// `Ok` when a unit that ends with `end` ended as asked; otherwise the error its
    /// ending means.
    pub(crate) fn judge<E>(&self, end: End, ending: Ending) -> Result<(), Error<E>> {
        match ending {
            Ending::Done => Ok(()),
            Ending::Failed { at: Position::End, error } => {
                let unknown =
                    end == End::Commit && (error.ended_session() || OUTCOME_UNKNOWN_CODES.contains(error.code()));
                if unknown {
                    return Err(self.unknown(UnknownReason::Ambiguous(error)));
                }
                Err(commit_failed(self.statement_count, *error, self.attempts))
            }
            Ending::Failed { at, error } => {
                // A step before the end failed where none was expected (a second round
                // trip has none): nothing committed.
                tracing::debug!(position = ?at, "a step failed before the end of a transaction");
                Err(commit_failed(self.statement_count, *error, self.attempts))
            }
            Ending::Lost { error, end_sent } if end_sent && end == End::Commit => {
                Err(self.unknown(UnknownReason::ConnectionLost(error)))
            }
            // COMMIT never left the client whole (or there was none): nothing committed.
            Ending::Lost { error, .. } => Err(Error::Connection(error)),
        }
    }

    fn unknown<E>(&self, reason: UnknownReason) -> Error<E> {
        Error::OutcomeUnknown(Box::new(OutcomeUnknown::new(reason, self.key.clone(), self.attempts)))
    }
}

/// The error of a run that ended at `COMMIT` with `error`: rolled back.
fn commit_failed<E>(statement_count: usize, error: crate::error::ServerError, attempts: u32) -> Error<E> {
    Error::Commit(Box::new(CommitFailure::new(statement_count, Cause::from_server(error), attempts)))
}

/// What a run whose key was taken (its marker collided, or its fence was gone) means once
/// the key's marker is read: an earlier commit, with its time, or a fence.
pub(crate) fn key_taken<E>(key: &str, marker: Option<&MarkerRow>, attempts: u32) -> Error<E> {
    match marker {
        Some(marker) if marker.is_fence() => Error::KeyFenced { key: key.to_owned(), attempts },
        // A commit, or a marker purged between the collision and the read.
        marker => Error::AlreadyCommitted(already_committed(key, marker.map(MarkerRow::committed_at))),
    }
}

/// The verdict on a run whose unknown outcome a pool settled as committed (`at`).
pub(crate) fn settled_as_committed(key: &IdempotencyKey, at: SystemTime) -> AlreadyCommitted {
    already_committed(key.key(), Some(at)).by_this_call()
}

/// An earlier run with `key` committed, at `at` when it is known.
fn already_committed(key: &str, at: Option<SystemTime>) -> AlreadyCommitted {
    AlreadyCommitted::new(key.to_owned(), at)
}

/// The error of a batch that was not sent (or that the server skipped because its prelude
/// failed); `statement` names a wire index's statement.
pub(crate) fn not_sent<E>(
    reason: BatchNotSent,
    statement: impl FnOnce(usize) -> Option<crate::error::StatementRef>,
    attempts: u32,
) -> Error<E> {
    match reason {
        BatchNotSent::Unit(NotSent::Prelude { error, cleared }) => {
            Error::SessionReset(Box::new(ResetFailure::new(Cause::from_server(*error), cleared, attempts)))
        }
        BatchNotSent::Unit(NotSent::Closed) | BatchNotSent::NoTransaction => Error::ConnectionClosed,
        BatchNotSent::InCallerTransaction => Error::InEnclosingTransaction {
            reason: "a two-phase batch, or pgbatch's own maintenance, needs a transaction of its own",
        },
        BatchNotSent::Unit(NotSent::Wire(error)) => Error::Connection(error),
        BatchNotSent::Pool(error) => Error::Pool(error),
        BatchNotSent::Unit(NotSent::UnknownType(error)) => Error::invalid(None, error),
        BatchNotSent::Unit(NotSent::Encode { index, error }) => {
            Error::invalid(statement(index), Arc::new(BuildError::Encode { bind: 0, source: Box::new(error) }))
        }
    }
}

/// The error of a run whose unknown outcome settled as "not committed" and that may not be
/// replayed: what it means once the outcome is known.
pub(crate) fn not_committed<E>(error: Error<E>, statement_count: usize) -> Error<E> {
    match error {
        Error::OutcomeUnknown(unknown) => {
            let attempts = unknown.attempts();
            match OutcomeUnknown::into_reason(*unknown) {
                UnknownReason::ConnectionLost(error) => Error::Connection(error),
                UnknownReason::Ambiguous(error) => commit_failed(statement_count, *error, attempts),
            }
        }
        other => other,
    }
}

/// The verdict over every kind of answers, without a server: answers are plain values.
#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::codec::StepOutput;
    use crate::error::{ServerError, StatementOutcome, WireError};

    /// Three labelled statements.
    fn body() -> Fragment<Infallible> {
        let mut body = Fragment::new();
        for label in ["first", "second", "third"] {
            body.push(diesel::sql_query("SELECT 1")).label(label);
        }
        body
    }

    fn server(code: &str, severity: &str, message: &str) -> Box<ServerError> {
        Box::new(ServerError::from_fields([(b'S', severity), (b'C', code), (b'M', message)]))
    }

    fn failed(at: Position, code: &str) -> Ending {
        Ending::Failed { at, error: server(code, "ERROR", "it failed") }
    }

    fn answers(completed: usize, ending: Ending) -> Answers {
        Answers {
            outputs: (0..completed).map(|_| StepOutput::default()).collect(),
            ending,
            prelude: PreludeOutcome::Done,
            failed_before_running: false,
        }
    }

    fn judge(key: Option<&IdempotencyKey>, end: End, answers: Answers) -> Result<Results, Error> {
        let body = body();
        Verdict { body: &body, key, end, attempts: 2 }.judge(answers)
    }

    #[test]
    fn done_is_the_results_of_the_batchs_own_statements() {
        let mut body = Fragment::<Infallible>::new();
        let handles: Vec<_> = (0..3).map(|_| body.push(diesel::sql_query("SELECT 1")).affected()).collect();
        let key = IdempotencyKey::new("k");
        for (key, affected) in [(None, vec![1, 2, 3]), (Some(&key), vec![99, 1, 2, 3])] {
            // With a key, the marker's output (wire statement 0) is not the batch's.
            let outputs = affected.into_iter().map(|affected| StepOutput { affected, ..StepOutput::default() });
            let answers = Answers {
                outputs: outputs.collect(),
                ending: Ending::Done,
                prelude: PreludeOutcome::Done,
                failed_before_running: false,
            };
            let results = Verdict { body: &body, key, end: End::Commit, attempts: 1 }.judge(answers).unwrap();
            let read: Vec<u64> = handles.iter().map(|handle| results.get(handle).unwrap()).collect();
            assert_eq!(read, [1, 2, 3]);
        }
    }

    #[test]
    fn a_failed_begin_is_a_begin_failure_with_its_cause() {
        let error = judge(None, End::Commit, answers(0, failed(Position::Begin, "57014"))).unwrap_err();
        let Error::Begin(failure) = &error else { panic!("{error:?}") };
        assert_eq!(failure.cause().code(), Some(&SqlState::QUERY_CANCELED));
        assert_eq!(error.attempts(), 2);
        assert!(!error.may_have_committed());
    }

    #[test]
    fn a_failed_statement_names_itself_and_what_became_of_the_others() {
        use StatementOutcome::*;
        let expected = [[Failed, Skipped, Skipped], [RolledBack, Failed, Skipped], [RolledBack, RolledBack, Failed]];
        for (index, outcomes) in expected.into_iter().enumerate() {
            let error =
                judge(None, End::Commit, answers(index, failed(Position::Statement(index), "23505"))).unwrap_err();
            let failure = error.statement_failure().unwrap_or_else(|| panic!("{error:?}"));
            assert_eq!((failure.index(), failure.label()), (index, Some(["first", "second", "third"][index])));
            assert!(matches!(failure.cause(), Cause::UniqueViolation(_)));
            assert_eq!(failure.outcomes().collect::<Vec<_>>(), outcomes);
        }
        let transient = judge(None, End::Commit, answers(1, failed(Position::Statement(1), "40001"))).unwrap_err();
        assert!(transient.is_transient(), "a serialization failure can be replayed");
    }

    #[test]
    fn the_end_steps_failures_are_commit_failures_or_unknown() {
        let error = judge(None, End::Commit, answers(3, failed(Position::End, "23503"))).unwrap_err();
        assert!(matches!(&error, Error::Commit(f) if matches!(f.cause(), Cause::ForeignKeyViolation(_))), "{error:?}");
        for code in ["40003", "08007"] {
            let error = judge(None, End::Commit, answers(3, failed(Position::End, code))).unwrap_err();
            assert!(matches!(&error, Error::OutcomeUnknown(u) if matches!(u.reason(), UnknownReason::Ambiguous(_))));
        }
        // The session ended while COMMIT ran: it may have committed.
        let ended = Ending::Failed { at: Position::End, error: server("57P01", "FATAL", "terminating") };
        assert!(judge(None, End::Commit, answers(3, ended)).unwrap_err().may_have_committed());
        // A ROLLBACK that fails cannot have committed anything.
        let ended = Ending::Failed { at: Position::End, error: server("57P01", "FATAL", "terminating") };
        assert!(matches!(judge(None, End::Rollback, answers(3, ended)), Err(Error::Commit(_))));
    }

    #[test]
    fn a_lost_connection_is_unknown_only_once_commit_was_written() {
        let lost = |end_sent| Ending::Lost { error: WireError::Closed, end_sent };
        let before = judge(None, End::Commit, answers(1, lost(false))).unwrap_err();
        assert!(matches!(before, Error::Connection(_)), "{before:?}");
        let key = IdempotencyKey::new("k");
        let after = judge(Some(&key), End::Commit, answers(3, lost(true))).unwrap_err();
        let Error::OutcomeUnknown(unknown) = &after else { panic!("{after:?}") };
        assert!(matches!(unknown.reason(), UnknownReason::ConnectionLost(WireError::Closed)));
        assert_eq!(unknown.idempotency_key(), Some("k"));
        // Without a COMMIT (a read, a rollback) a lost connection committed nothing.
        assert!(matches!(judge(None, End::Rollback, answers(3, lost(true))), Err(Error::Connection(_))));
    }

    #[test]
    fn the_markers_failures_say_the_key_is_taken_or_the_table_is_wrong() {
        let key = IdempotencyKey::new("k");
        let collided = judge(Some(&key), End::Commit, answers(0, failed(Position::Statement(0), "23505"))).unwrap_err();
        assert!(matches!(&collided, Error::AlreadyCommitted(a) if a.key() == "k"), "{collided:?}");
        let fence_lost = Ending::Failed {
            at: Position::Statement(0),
            error: server("22P02", "ERROR", "invalid input syntax for type boolean: \"pgbatch fence lost\""),
        };
        assert!(matches!(judge(Some(&key), End::Commit, answers(0, fence_lost)), Err(Error::AlreadyCommitted(_))));
        let missing = judge(Some(&key), End::Commit, answers(0, failed(Position::Statement(0), "42P01"))).unwrap_err();
        assert!(matches!(missing, Error::IdempotencyMarker { .. }), "{missing:?}");
        // The batch's own statement 0 is wire statement 1.
        let own = judge(Some(&key), End::Commit, answers(1, failed(Position::Statement(1), "23505"))).unwrap_err();
        assert_eq!(own.statement_failure().map(StatementFailure::index), Some(0));
    }

    #[test]
    fn a_taken_key_is_a_commit_or_a_fence_once_read() {
        let commit: MarkerRow = MarkerRow::for_tests(1_000.0, None);
        let fence = MarkerRow::for_tests(1_000.0, Some("token"));
        assert!(
            matches!(key_taken::<Infallible>("k", Some(&commit), 1), Error::AlreadyCommitted(a) if a.committed_at().is_some())
        );
        assert!(matches!(key_taken::<Infallible>("k", Some(&fence), 1), Error::KeyFenced { .. }));
        assert!(
            matches!(key_taken::<Infallible>("k", None, 1), Error::AlreadyCommitted(a) if a.committed_at().is_none())
        );
    }

    #[test]
    fn an_unknown_outcome_settled_as_not_committed_says_how_it_failed() {
        let unknown = |reason| Error::<Infallible>::OutcomeUnknown(Box::new(OutcomeUnknown::new(reason, None, 3)));
        let lost = not_committed(unknown(UnknownReason::ConnectionLost(WireError::Closed)), 3);
        assert!(matches!(lost, Error::Connection(WireError::Closed)), "{lost:?}");
        let ambiguous = not_committed(unknown(UnknownReason::Ambiguous(server("40003", "ERROR", "ambiguous"))), 3);
        assert!(matches!(&ambiguous, Error::Commit(_)) && ambiguous.attempts() == 3, "{ambiguous:?}");
    }

    #[test]
    fn a_batch_not_sent_is_never_a_commit() {
        for reason in [NotSent::Closed.into(), BatchNotSent::NoTransaction] {
            assert!(matches!(not_sent::<Infallible>(reason, |_| None, 1), Error::ConnectionClosed));
        }
        let wire = not_sent::<Infallible>(NotSent::Wire(WireError::Closed).into(), |_| None, 1);
        assert!(matches!(wire, Error::Connection(_)));
        let encode = NotSent::Encode { index: 1, error: std::io::Error::other("too long") };
        assert!(matches!(not_sent::<Infallible>(encode.into(), |_| None, 1), Error::Invalid { .. }));
    }
}

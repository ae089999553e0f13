//! The verdict on one run of a batch, derived from every answer: never from `COMMIT`'s
//! answer alone, and never a success or a failure where the answers leave it open.

use std::sync::Arc;

use crate::error::{
    AlreadyCommitted, BeginFailure, BuildError, Cause, CommitFailure, Error, OutcomeUnknown, SqlState,
    StatementFailure, UnknownReason,
};
use crate::plan::{Entry, Fragment, IdempotencyKey, Results};
use crate::wire::{Answers, End, Ending, NotSent, Step};

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
        let Answers { mut outputs, ending } = answers;
        match ending {
            Ending::Done => {
                outputs.drain(..self.offset().min(outputs.len()));
                let labels = self.body.entries.iter().map(|e| e.label.clone()).collect();
                Ok(Results::new(outputs, labels, self.body.scopes.clone()))
            }
            Ending::Failed { step: Step::Begin, error } => {
                Err(Error::Begin(Box::new(BeginFailure::new(Cause::from_server(*error), self.attempts))))
            }
            Ending::Failed { step: Step::Statement(index), error } => Err(self.statement_failed(index, *error)),
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
    pub(crate) fn not_sent(&self, reason: NotSent) -> Error<E> {
        not_sent(reason, |index| index.checked_sub(self.offset()).map(|index| self.body.statement_ref(index)))
    }

    fn statement_failed(&self, wire_index: usize, error: crate::error::ServerError) -> Error<E> {
        let Some(index) = wire_index.checked_sub(self.offset()) else {
            let key = self.key.expect("an offset means a key");
            return match Cause::from_server(error) {
                Cause::UniqueViolation(_) => Error::AlreadyCommitted(AlreadyCommitted::new(key.key().to_owned(), None)),
                cause => Error::IdempotencyMarker { cause, attempts: self.attempts },
            };
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
            Ending::Failed { step: Step::End, error } => {
                let unknown =
                    end == End::Commit && (error.ended_session() || OUTCOME_UNKNOWN_CODES.contains(error.code()));
                if unknown {
                    return Err(self.unknown(UnknownReason::Ambiguous(error)));
                }
                let cause = Cause::from_server(*error);
                Err(Error::Commit(Box::new(CommitFailure::new(self.statement_count, cause, self.attempts))))
            }
            Ending::Failed { step, error } => {
                // A step before the end failed where none was expected (a second round
                // trip has none): nothing committed.
                tracing::debug!(?step, "a step failed before the end of a transaction");
                let cause = Cause::from_server(*error);
                Err(Error::Commit(Box::new(CommitFailure::new(self.statement_count, cause, self.attempts))))
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

/// The error of a batch that was not sent; `statement` names a wire index's statement.
pub(crate) fn not_sent<E>(
    reason: NotSent,
    statement: impl FnOnce(usize) -> Option<crate::error::StatementRef>,
) -> Error<E> {
    match reason {
        NotSent::Closed | NotSent::NoTransaction => Error::ConnectionClosed,
        NotSent::Wire(error) => Error::Connection(error),
        NotSent::UnknownType(error) => Error::invalid(None, error),
        NotSent::Encode { index, error } => {
            Error::invalid(statement(index), Arc::new(BuildError::Encode { bind: 0, source: Box::new(error) }))
        }
    }
}

//! Failures at one step of a batch's transaction: `BEGIN`, a statement, or `COMMIT`.

use std::borrow::Cow;
use std::fmt;

use super::cause::Cause;

/// A statement's position in its batch and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRef {
    index: usize,
    label: Option<Cow<'static, str>>,
}

impl StatementRef {
    pub(crate) fn new(index: usize, label: Option<Cow<'static, str>>) -> Self {
        StatementRef { index, label }
    }

    /// The statement's zero-based position in the batch, counting only the caller's
    /// statements (not the `BEGIN`/`COMMIT` pgbatch adds).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The label given with [`StatementBuilder::label`](crate::StatementBuilder::label).
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(label) => write!(f, "statement {} ({label:?})", self.index),
            None => write!(f, "statement {}", self.index),
        }
    }
}

/// What became of one statement of a failed batch. (In a committed batch every statement
/// ran and committed.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementOutcome {
    /// The statement ran, then the transaction was rolled back.
    RolledBack,
    /// The statement is the one that failed.
    Failed,
    /// The statement was never executed: an earlier one had already failed.
    Skipped,
}

/// A statement that failed on the server, and the state of every statement of the batch.
#[derive(Debug)]
pub struct StatementFailure {
    statement: StatementRef,
    statement_count: usize,
    cause: Cause,
    attempts: u32,
}

impl StatementFailure {
    pub(crate) fn new(statement: StatementRef, statement_count: usize, cause: Cause, attempts: u32) -> Self {
        StatementFailure { statement, statement_count, cause, attempts }
    }

    /// The failed statement's position in the batch.
    pub fn index(&self) -> usize {
        self.statement.index
    }
    /// The failed statement's label.
    pub fn label(&self) -> Option<&str> {
        self.statement.label()
    }
    /// The failed statement.
    pub fn statement(&self) -> &StatementRef {
        &self.statement
    }
    /// Why it failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// How many statements the batch had.
    pub fn statement_count(&self) -> usize {
        self.statement_count
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// What became of statement `index`: the ones before the failure ran and were rolled
    /// back, the ones after it were skipped. `None` when `index` is out of range.
    pub fn outcome(&self, index: usize) -> Option<StatementOutcome> {
        use std::cmp::Ordering::*;
        (index < self.statement_count).then(|| match index.cmp(&self.statement.index) {
            Less => StatementOutcome::RolledBack,
            Equal => StatementOutcome::Failed,
            Greater => StatementOutcome::Skipped,
        })
    }
    /// The outcome of every statement, in order.
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = StatementOutcome> + '_ {
        (0..self.statement_count).map(|i| self.outcome(i).expect("index in range"))
    }
}

impl fmt::Display for StatementFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} failed: {}; ", self.statement, self.statement_count, self.cause)?;
        let index = self.statement.index;
        let after = self.statement_count - index - 1;
        match (index, after) {
            (0, 0) => f.write_str("nothing committed")?,
            (0, _) => write!(f, "{after} later skipped, nothing committed")?,
            (_, 0) => write!(f, "{index} earlier rolled back, nothing committed")?,
            _ => write!(f, "{index} earlier rolled back, {after} later skipped, nothing committed")?,
        }
        write_attempts(f, self.attempts)
    }
}

impl std::error::Error for StatementFailure {}

/// Every statement succeeded but `COMMIT` failed; all of them were rolled back.
#[derive(Debug)]
pub struct CommitFailure {
    statement_count: usize,
    cause: Cause,
    attempts: u32,
}

impl CommitFailure {
    pub(crate) fn new(statement_count: usize, cause: Cause, attempts: u32) -> Self {
        CommitFailure { statement_count, cause, attempts }
    }

    /// Why `COMMIT` failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// How many statements ran and were rolled back.
    pub fn statement_count(&self) -> usize {
        self.statement_count
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commit failed: {}; all {} statements rolled back", self.cause, self.statement_count)?;
        write_attempts(f, self.attempts)
    }
}

impl std::error::Error for CommitFailure {}

/// `BEGIN` itself failed (a cancel request or `statement_timeout` landed on it, or the
/// server cannot start the transaction the batch asked for): no statement ran.
#[derive(Debug)]
pub struct BeginFailure {
    cause: Cause,
    attempts: u32,
}

impl BeginFailure {
    pub(crate) fn new(cause: Cause, attempts: u32) -> Self {
        BeginFailure { cause, attempts }
    }

    /// Why `BEGIN` failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for BeginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BEGIN failed: {}; no statement ran, nothing committed", self.cause)?;
        write_attempts(f, self.attempts)
    }
}

impl std::error::Error for BeginFailure {}

/// The session could not be made clean before the batch, so the server skipped it: no
/// statement ran. What failed is the prelude pgbatch writes before the batch's `BEGIN`, in
/// the same unit: the session reset (`DISCARD ALL`, then the session setup) that clears what
/// an earlier holder of the connection left, or the `ROLLBACK` of a transaction an earlier
/// unit left open. A cancel request, a `statement_timeout` or a lock can stop it.
#[derive(Debug)]
pub struct ResetFailure {
    cause: Cause,
    cleared: bool,
    attempts: u32,
}

impl ResetFailure {
    pub(crate) fn new(cause: Cause, cleared: bool, attempts: u32) -> Self {
        ResetFailure { cause, cleared, attempts }
    }

    /// Why the prelude failed.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }
    /// Whether the session had been cleared (`DISCARD ALL` completed) before the failure:
    /// then only the session setup failed, or a cancel that reached the server while the
    /// reset ran was delivered late, to the step after it (PostgreSQL holds a cancel over
    /// until the reset can be interrupted). The connection was kept and resets again before
    /// its next unit. Otherwise it was closed, and its server session with it.
    pub fn session_cleared(&self) -> bool {
        self.cleared
    }
    /// How many times the batch was run, retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for ResetFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the session reset before the batch failed: {}; the batch did not run, nothing committed",
            self.cause
        )?;
        if self.cleared {
            f.write_str(" (the session was cleared, the connection kept)")?;
        } else {
            f.write_str(" (the connection was closed, its session with it)")?;
        }
        write_attempts(f, self.attempts)
    }
}

impl std::error::Error for ResetFailure {}

fn write_attempts(f: &mut fmt::Formatter<'_>, attempts: u32) -> fmt::Result {
    if attempts > 1 {
        write!(f, " (after {attempts} attempts)")?;
    }
    Ok(())
}

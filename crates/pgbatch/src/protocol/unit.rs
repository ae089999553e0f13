//! What became of a unit: the answers it brought back and how it ended, or why it was not
//! sent at all.

use crate::codec::StepOutput;
use crate::error::{BuildError, ServerError, WireError};

use super::prelude::PreludeOutcome;

/// Where in a unit a step stands: in the prelude, `BEGIN`, one of the statements, or the
/// end step. (A step itself, the messages that run one statement, is written by
/// [`step`](super::step).)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// A step of the [`Prelude`]: the `ROLLBACK` of an earlier transaction or the session
    /// reset. Nothing of the unit itself ran.
    Prelude,
    Begin,
    Statement(usize),
    /// `COMMIT` or `ROLLBACK`.
    End,
}

/// A `Parse` into a named statement, written in a unit: its place among the unit's `Parse`
/// messages (from 0), and the name. The server confirms it with its `ParseComplete`; a
/// `Parse` it skipped (a step before it failed) prepared nothing.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) ordinal: usize,
    pub(crate) name: std::sync::Arc<str>,
}

/// How a batch's unit ended, read from its answers.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Every step answered: the end step as asked (`COMMIT` committed, `ROLLBACK` rolled
    /// back), or, without an end step, every statement ran and the transaction is open.
    Done,
    /// A step failed; the server skipped every step after it.
    Failed { at: Position, error: Box<ServerError> },
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
    /// What became of the prelude written before the unit.
    pub(crate) prelude: PreludeOutcome,
    /// Whether the step that failed failed at its `Parse` or `Bind` (no `BindComplete` came
    /// for it): before it ran. Only there can a statement of the statement cache's miss.
    pub(crate) failed_before_running: bool,
}

/// Why a unit (a batch, a caller's request, a read of pgbatch's own) was not sent at all,
/// or was skipped by the server before any of it ran.
#[derive(Debug)]
pub(crate) enum NotSent {
    /// The connection was already closed or broken, or failed while the answers of an
    /// earlier exchange were read.
    Closed,
    /// The connection failed while looking up custom types.
    Wire(WireError),
    /// A custom type does not exist.
    UnknownType(BuildError),
    /// The protocol encoder refused statement `index` (the checks at push should have).
    Encode { index: usize, error: std::io::Error },
    /// The prelude written before the unit in the same segment (the `ROLLBACK` of an earlier
    /// transaction, the session reset) failed, so the server skipped the unit: nothing of it
    /// ran. `cleared` says whether `DISCARD ALL` had completed (only the setup failed, or a
    /// cancel the reset drew was delivered late): the connection is then kept, its reset
    /// still due; otherwise it was given up with its session.
    Prelude { error: Box<ServerError>, cleared: bool },
}

/// Why a batch was not sent: what any unit may meet, or a reason of a batch's own. A
/// caller's request never meets the latter, so its path returns [`NotSent`] alone.
#[derive(Debug)]
pub(crate) enum BatchNotSent {
    /// What any unit may meet.
    Unit(NotSent),
    /// A two-phase batch's second round trip found no open transaction.
    NoTransaction,
    /// The connection is inside a transaction the caller opened, which this exchange would
    /// have to end: it is refused, never rolled back.
    InCallerTransaction,
    /// No connection to send it on: none could be opened, or none was free in time (a
    /// multiplexed client).
    Pool(crate::error::PoolError),
}

impl From<NotSent> for BatchNotSent {
    fn from(reason: NotSent) -> Self {
        BatchNotSent::Unit(reason)
    }
}

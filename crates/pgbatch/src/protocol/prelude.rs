//! What a unit runs first, in its own `Sync` segment, so that it starts on a session known
//! to be clean: `ROLLBACK` of a transaction an earlier unit left, and the session reset.
//!
//! ```text
//! client                                                     server
//!   |-- [ROLLBACK]                                        -->|  a transaction left behind
//!   |-- [DISCARD ALL, [<start-up parameters>],           -->|  the reset, when due
//!        <session setup>..., COMMIT | ""]
//!   |-- BEGIN, s1 ... sN, COMMIT, Sync                    -->|  the unit itself
//!   |<-- ... every step answered, or an error, Ready --------|
//! ```
//!
//! Because the prelude and the unit share one `Sync`, a prelude step that fails (a
//! `statement_timeout`, a cancel request, a lock) makes the server skip everything after it
//! up to the `Sync`: the unit never runs on a session the reset did not clear. Nothing else
//! is trusted: not the reset after the previous unit, not a pooler's.
//!
//! `DISCARD ALL` must be the first statement of its transaction; as the first of the
//! segment (or after `ROLLBACK`) it is, and it commits at once, so a unit that fails later
//! cannot undo it. The session setup that follows is committed by the closing `COMMIT`
//! before the unit's `BEGIN`, for the same reason. Behind a pooler the reset first gives
//! back the `application_name` the connection started with, which `DISCARD ALL` would
//! otherwise take to the pooler's server connection's own.
//!
//! PostgreSQL holds over a `statement_timeout` or cancel that arrives while `DISCARD ALL`
//! cannot be interrupted, and delivers it to the next statement. The reset therefore always
//! ends with a step of its own (`COMMIT` after a setup, otherwise an empty query), which
//! absorbs such a cancel: it is reported as the reset's, never as a failure of the unit.

/// What runs before a unit's own steps, in the same segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Prelude {
    /// `ROLLBACK`: a transaction an earlier unit of pgbatch's left open (its closing
    /// `ROLLBACK` was cancelled, or its answers are not known yet).
    pub(crate) rollback: bool,
    /// The session reset: `DISCARD ALL` (or, keeping the connection's prepared statements,
    /// [`RESET_KEEPING_STATEMENTS`](super::sql::RESET_KEEPING_STATEMENTS)), the session
    /// setup, and the closing step.
    pub(crate) reset: bool,
    /// Whether the reset keeps the connection's prepared statements.
    pub(crate) keep_statements: bool,
    /// How many statements the reset runs after `DISCARD ALL`: behind a pooler, the one
    /// that gives back the connection's start-up parameters; then the session setup.
    pub(crate) setup: usize,
    /// Whether the reset ends with `COMMIT`, so that the session setup stays when the unit
    /// fails and rolls back; otherwise it ends with an empty query. Without a session setup
    /// there is nothing to keep: the start-up parameters are given back by every unit's
    /// reset behind a pooler, the only place they are set.
    pub(crate) commit: bool,
}

impl Prelude {
    /// Nothing before the unit.
    pub(crate) const NONE: Prelude =
        Prelude { rollback: false, reset: false, keep_statements: false, setup: 0, commit: false };

    /// How many steps the prelude sends.
    pub(crate) fn steps(self) -> usize {
        usize::from(self.rollback) + if self.reset { self.clearing_steps() + self.setup + 1 } else { 0 }
    }

    /// How many steps clear the session: `DISCARD ALL`, or the steps that keep prepared
    /// statements, their `COMMIT` included.
    pub(crate) fn clearing_steps(self) -> usize {
        if self.keep_statements { super::sql::RESET_KEEPING_STATEMENTS.len() } else { 1 }
    }

    /// The index of the last step that clears the session, when there is one: once it has
    /// answered, the session holds nothing of an earlier holder.
    pub(crate) fn discard_step(self) -> Option<usize> {
        self.reset.then_some(usize::from(self.rollback) + self.clearing_steps() - 1)
    }
}

/// What became of a prelude, read from the unit's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreludeOutcome {
    /// There was none, or every step of it answered: the unit started on a clean session.
    Done,
    /// A step failed, so the server skipped the unit. `cleared` says whether `DISCARD ALL`
    /// had completed before (only the setup failed, or a cancel the reset drew was
    /// delivered late): the session then holds nothing of an earlier holder, but the reset
    /// is still due.
    Failed { cleared: bool },
    /// The connection failed before the prelude had answered.
    Unknown,
}

//! A connection's session between its holders: a holder (a pool checkout, a bare
//! connection, one multiplexed batch) keeps what its statements leave; when the connection
//! changes hands after being used, the next unit's [prelude](super::prelude) resets the
//! session first, and a session the reset could not clear is given up with the connection.

use std::sync::Arc;
use std::time::Duration;

use postgres_protocol::message::frontend;

use super::state::{Connection, TxStatus};
use crate::connect::SessionReset;
use crate::protocol::sql::BEGIN;
use crate::protocol::{Answers, Ending, NotSent, Position};
use crate::protocol::{Prelude, PreludeOutcome};

/// How long giving up a session behind a pooler waits for its `BEGIN` to be answered.
const END_SESSION_TIMEOUT: Duration = Duration::from_secs(5);

impl Connection {
    /// Makes the session reset give the session back the parameters this connection asked
    /// for at start-up, when a pooler is in between. `DISCARD ALL` resets every parameter
    /// to its value at the *server* session's start; directly connected that is this
    /// connection's own start-up, but behind a pooler it is whatever the pooler's server
    /// connection started with, and the pooler had set this client's `application_name` on
    /// top. Without this, the unit behind the reset would run under another client's name
    /// (or none). pgbatch's `client_encoding` is UTF8 on every connection, so the pooler's
    /// server connections start with it.
    pub(crate) fn restore_startup_parameters(&mut self, application_name: Option<&str>) {
        if !self.shares_server_session() {
            return;
        }
        let Some(name) = application_name else { return };
        // A string literal: standard_conforming_strings is always on (PostgreSQL 9.1 on) and
        // start-up parameters hold no NUL byte.
        let restore = format!("SELECT set_config('application_name', '{}', false)", name.replace('\'', "''"));
        self.reset_setup = std::iter::once(restore).chain(self.session.setup.iter().cloned()).collect();
    }

    /// What the session reset runs after `DISCARD ALL`.
    pub(crate) fn reset_setup(&self) -> Arc<[String]> {
        Arc::clone(&self.reset_setup)
    }

    /// Whether the server session behind the connection may be handed to other clients
    /// between its transactions: no backend of its own (a pooler in between), unless the
    /// server is CockroachDB, which shows no backend either but gives each connection a
    /// session of its own.
    pub(super) fn shares_server_session(&self) -> bool {
        !self.has_own_backend() && self.parameter("crdb_version").is_none()
    }

    /// Ends the current holder's time with the connection (a pool takes it back, a
    /// multiplexed batch has been written): when the holder used the session, the next unit
    /// resets it first.
    pub(crate) fn hand_over(&mut self) {
        self.reset_due |= self.used;
        self.used = false;
    }

    /// Records that a unit of the holder's is queued: `touches_session` when pgbatch
    /// recognises one of its statements as changing the session.
    pub(crate) fn note_use(&mut self, touches_session: bool) {
        self.used |= touches_session || self.resets_after_any_use();
    }

    /// What a unit must run first, in its own segment, so that it starts on a session known
    /// clean; `outside` says whether it starts outside any transaction (it begins one, or is
    /// a caller's request on an idle connection). Behind a pooler every such unit may land on
    /// a server session another client just left, so each is reset.
    ///
    /// The reset keeps the connection's prepared statements when it caches them, except on
    /// CockroachDB, whose reset stays `DISCARD ALL`: the cache then starts again empty.
    pub(crate) fn prelude(&mut self, outside: bool) -> Prelude {
        // Every unit that may use the statement cache starts here.
        self.statements.begin_unit();
        if !outside || self.in_caller_transaction() {
            return Prelude::NONE;
        }
        let reset = self.reset_due || (self.shares_server_session() && self.resets_after_any_use());
        // With answers still due (units pipelined ahead), the state they leave is not known.
        let rollback = self.status != TxStatus::Idle || self.pending > 0;
        let keep_statements = self.statements.is_on() && self.parameter("crdb_version").is_none();
        if reset && !keep_statements {
            self.statements.discarded();
        }
        // Keeping statements, the clearing steps end with a COMMIT of their own; without a
        // setup after it, the reset still ends with a step that can absorb a held-over cancel.
        let commit = reset && !self.session.setup.is_empty();
        Prelude { rollback, reset, keep_statements, setup: if reset { self.reset_setup.len() } else { 0 }, commit }
    }

    /// Takes in what became of a unit's prelude (see [`prelude_landed`](Self::prelude_landed))
    /// and gives the session up when the prelude could not clear it; a unit the server
    /// skipped because its prelude failed is [`NotSent::Prelude`]: nothing of it ran.
    pub(crate) async fn after_prelude(&mut self, prelude: Prelude, answers: Answers) -> Result<Answers, NotSent> {
        if self.prelude_landed(prelude, answers.prelude) {
            self.end_session().await;
        }
        match answers.ending {
            Ending::Failed { at: Position::Prelude, error } => {
                let cleared = matches!(answers.prelude, PreludeOutcome::Failed { cleared: true });
                Err(NotSent::Prelude { error, cleared })
            }
            ending => Ok(Answers { ending, ..answers }),
        }
    }

    /// Takes in what became of a unit's prelude; true when the session can no longer be
    /// trusted (the reset failed before `DISCARD ALL` completed): the connection must then
    /// be given up, its session with it.
    pub(crate) fn prelude_landed(&mut self, prelude: Prelude, outcome: PreludeOutcome) -> bool {
        match outcome {
            PreludeOutcome::Done if prelude.reset => {
                self.reset_due = false;
                false
            }
            PreludeOutcome::Done | PreludeOutcome::Unknown => false,
            PreludeOutcome::Failed { cleared } => {
                // Nothing of the unit ran; the setup may be missing even when the session was
                // cleared, so the reset stays due.
                self.reset_due |= prelude.reset;
                !cleared
            }
        }
    }

    /// Gives up on the connection and on its server session, which may hold what an earlier
    /// holder left. Directly connected, closing the socket ends the session. Behind a
    /// pooler the server session would go back to the pooler's pool: it is first left inside
    /// a transaction (`BEGIN`, waited for), so that the pooler closes it when the client
    /// goes ("client disconnect while server was not ready").
    pub(crate) async fn end_session(&mut self) {
        if !self.broken
            && self.shares_server_session()
            && self.drain().await.is_ok()
            && frontend::query(BEGIN, self.io().queue()).is_ok()
        {
            self.expect_units(1);
            let _ = tokio::time::timeout(END_SESSION_TIMEOUT, self.drain()).await;
        }
        self.abandon();
    }

    /// Whether statements that run on this connection make its session need a reset, when
    /// pgbatch does not recognise them as changing it.
    pub(crate) fn resets_after_any_use(&self) -> bool {
        self.session.reset == SessionReset::BetweenHolders
    }
}

//! One batch on the wire: `BEGIN`, every statement and `COMMIT` as one unit ending in one
//! `Sync`, followed in the same write by a `ROLLBACK` of its own and the session reset.
//!
//! ```text
//! client                                                     server
//!   |-- Parse/Bind/Execute BEGIN                          -->|
//!   |-- Parse/Bind/Describe/Execute s1 ... sN             -->|  one unit: an error anywhere
//!   |-- Parse/Bind/Execute COMMIT, Sync                   -->|  skips the rest of it
//!   |-- Query ROLLBACK                                    -->|  ends any aborted block
//!   |-- Query DISCARD ALL, Query <session setup>...       -->|  no session state survives
//!   |<-- BEGIN, rows and tags of s1..sN, COMMIT, Ready(I) ---|
//!   |<-- (warning: no transaction) ROLLBACK, Ready(I) -------|
//!   |<-- DISCARD ALL, Ready(I), <setup>, Ready(I)... --------|
//! ```
//!
//! Because the whole transaction is one unit, a failure at any step, `BEGIN` included
//! (a cancel request, `statement_timeout`), makes the server skip every later step up to
//! the `Sync`: nothing after the failure runs, so nothing commits. The `ROLLBACK` after it
//! ends the block the failure left aborted, or merely warns when the batch committed, and
//! the reset (`DISCARD ALL`, then the session setup again) clears whatever the statements
//! did to the session, so that every batch leaves the connection idle and its session as
//! new — in the same round trip. A reset that does not complete (a cancel landed on it) is
//! tried again in a round trip of its own; a connection whose session could not be reset
//! is closed.
//!
//! Inside a transaction the caller opened ([`End::Release`]), the unit is `SAVEPOINT
//! pgbatch_nested`, the statements, `RELEASE SAVEPOINT pgbatch_nested` and `SAVEPOINT
//! pgbatch_nested` again, ending in one `Sync`, followed by one query, `ROLLBACK TO SAVEPOINT
//! pgbatch_nested; RELEASE SAVEPOINT pgbatch_nested`: after a failure it undoes the batch and
//! leaves the caller's transaction usable, after success it undoes nothing. No `ROLLBACK` and
//! no reset follow (`DISCARD ALL` cannot run inside a transaction block); the session is reset
//! once the caller's transaction ends.

use postgres_protocol::message::frontend;

use super::collect::{Answers, Collector, Ending, NotSent};
use super::connection::{Connection, TxStatus};
use super::flight::{Flight, Unit};
use super::sql::{COMMIT, NESTED_RELEASE, NESTED_SAVEPOINT, NESTED_UNDO, RELEASE, ROLLBACK, ROLLBACK_TO, SAVEPOINT};
use super::step::step;
use super::types::WireBinds;
use crate::codec::Statement;
use crate::error::WireError;

/// How a batch's unit ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// With `COMMIT`.
    Commit,
    /// With `ROLLBACK`: the statements run, their results are read, nothing stays.
    Rollback,
    /// Without an end: the transaction stays open for a second round trip (a two-phase
    /// batch). A failure rolls it back at once.
    Open,
    /// Inside a transaction the caller opened (a diesel-async transaction): the statements
    /// run under a savepoint of the batch's own, released into the enclosing transaction,
    /// which commits or rolls back with the caller. A failure undoes the batch only, in the
    /// same write, and leaves the enclosing transaction usable.
    Release,
}

/// CockroachDB's client-side retry protocol: the statements run under a savepoint, and a
/// retry rolls back to it, so that the transaction keeps its place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// An ordinary unit.
    No,
    /// The first attempt: `BEGIN`, `SAVEPOINT cockroach_restart`, the statements,
    /// `RELEASE SAVEPOINT cockroach_restart`, `COMMIT`.
    First,
    /// A retry inside the same transaction: `ROLLBACK TO SAVEPOINT cockroach_restart`, the
    /// statements, `RELEASE SAVEPOINT cockroach_restart`, `COMMIT`.
    Again,
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange<'a> {
    /// `BEGIN` with the batch's options, or `None` to continue the open transaction of a
    /// two-phase batch.
    begin: Option<&'a str>,
    statements: &'a [&'a Statement],
    end: End,
    /// Reset the session after the unit (`DISCARD ALL`, then the session setup again):
    /// a statement may have left state in it.
    reset_session: bool,
    restart: Restart,
    /// Queued behind exchanges still in flight (multiplexing): the connection is taken to
    /// be as each of them leaves it, idle and reset, not as its last answer says.
    pipelined: bool,
}

impl<'a> Exchange<'a> {
    /// `BEGIN` (or none, to continue an open transaction), the statements, and how to end.
    pub(crate) fn new(begin: Option<&'a str>, statements: &'a [&'a Statement], end: End) -> Self {
        Exchange { begin, statements, end, reset_session: false, restart: Restart::No, pipelined: false }
    }

    /// Resets the session after the unit.
    pub(crate) fn reset_session(mut self, reset: bool) -> Self {
        self.reset_session = reset;
        self
    }

    /// Queues the unit behind exchanges still in flight; see [`Connection::queue_pipelined`].
    pub(crate) fn pipelined(mut self) -> Self {
        self.pipelined = true;
        self
    }

    /// Runs the unit under CockroachDB's restart savepoint. A failed unit then leaves its
    /// transaction open, for a retry or for [`Connection::end_transaction`].
    pub(crate) fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }
}

impl Connection {
    /// Sends a batch as one unit and reads its answers; see the module docs.
    pub(crate) async fn exchange(&mut self, request: &Exchange<'_>) -> Result<Answers, NotSent> {
        self.ready().await?;
        if self.in_caller_transaction() && request.end != End::Release {
            // Never end, or roll back, a transaction the caller opened.
            return Err(NotSent::InCallerTransaction);
        }
        super::types::resolve(self, request.statements).await?;
        let transaction = match (request.end, request.restart) {
            (End::Release, _) => self.in_caller_transaction() && self.status() == TxStatus::InTransaction,
            // A retry rolls back to the savepoint of a transaction a failure left aborted.
            (_, Restart::Again) => self.status() != TxStatus::Idle,
            _ => request.begin.is_some() || self.status() == TxStatus::InTransaction,
        };
        if !transaction {
            return Err(NotSent::NoTransaction);
        }
        self.forget_replication_warning();
        let flight = self.queue(request)?;
        let mut landed = flight.land(self).await;
        let answers = landed.answers.pop().expect("the batch's unit is collected");
        if landed.reset_done {
            self.set_dirty(false);
        }
        if request.end == End::Release {
            // The enclosing transaction stays the caller's; the undo after a failure must
            // have completed.
            self.undo_nested_failure().await;
            return Ok(answers);
        }
        let stays_open = match request.restart {
            // Open after a failure, for the caller to retry or end (which resets).
            Restart::First | Restart::Again => true,
            Restart::No => request.end == End::Open && matches!(answers.ending, Ending::Done),
        };
        if !stays_open && self.status() != TxStatus::Idle {
            // A cancel or timeout landed on the closing ROLLBACK itself.
            self.end_transaction().await;
        }
        if !stays_open && self.is_dirty() {
            // The reset did not complete (a cancel or a timeout landed on it): again, in a
            // round trip of its own; the connection is closed if that fails too.
            self.reset().await;
        }
        Ok(answers)
    }

    /// Reads what is still due from earlier requests (already on its way: no round trip);
    /// fails with nothing written when the connection is, or turns out, closed.
    pub(crate) async fn ready(&mut self) -> Result<(), NotSent> {
        if self.is_closed() {
            return Err(NotSent::Closed);
        }
        if let Err(error) = self.drain().await {
            tracing::debug!(%error, "connection unusable before anything was sent");
            return Err(NotSent::Closed);
        }
        Ok(())
    }

    /// Undoes a failed batch inside the caller's transaction when the undo written after it
    /// did not complete (a cancel landed on it), in a round trip of its own (a few tries);
    /// gives up on the connection, which rolls the caller's transaction back on the server,
    /// when that fails: the caller's next request then fails, never commits half a batch.
    async fn undo_nested_failure(&mut self) {
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            if self.is_closed() || self.status() != TxStatus::Failed {
                return;
            }
            if frontend::query(NESTED_UNDO, self.io().queue()).is_err() {
                break;
            }
            let mut flight = Flight::new();
            flight.push(self, Unit::Discard);
            flight.land(self).await;
        }
        if !self.is_closed() && self.status() == TxStatus::Failed {
            tracing::warn!("could not undo a failed batch inside the caller's transaction: closing the connection");
            self.abandon();
        }
    }

    /// Resets the session (`DISCARD ALL`, then the session setup again), in a round trip of
    /// its own (a few tries, only on this rare path); gives up on the connection, which ends
    /// its session on the server, when that fails.
    pub(crate) async fn reset(&mut self) {
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            if self.is_closed() {
                return;
            }
            let mut flight = Flight::new();
            match self.queue_reset() {
                Ok(units) => (0..units).for_each(|_| flight.push(self, Unit::Reset)),
                Err(_) => break,
            }
            if flight.land(self).await.reset_done {
                self.set_dirty(false);
                return;
            }
        }
        tracing::warn!("could not reset the session a batch ran in: closing the connection");
        self.abandon();
    }

    /// Ends whatever transaction the server still reports, with `ROLLBACK` followed in the
    /// same write by the session reset when the session is dirty (one round trip each, only
    /// on this rare path); gives up on the connection after a few tries, which ends its
    /// session on the server.
    ///
    /// The reset travels with the `ROLLBACK` because behind a transaction-pooling proxy
    /// (PgBouncer) the server session is handed to another client as soon as it reports
    /// idle: a reset sent in a later round trip could land on some other session and leave
    /// this one's state behind. Written together, both reach the session the batch ran in.
    pub(crate) async fn end_transaction(&mut self) {
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            if self.is_closed() || self.status() == TxStatus::Idle {
                break;
            }
            let start = self.io().queue().len();
            let reset_units = match self.queue_rollback_and_reset() {
                Ok(units) => units,
                Err(_) => {
                    self.io().queue().truncate(start);
                    break;
                }
            };
            let mut flight = Flight::new();
            flight.push(self, Unit::Discard);
            (0..reset_units).for_each(|_| flight.push(self, Unit::Reset));
            if flight.land(self).await.reset_done {
                self.set_dirty(false);
            }
        }
        if !self.is_closed() && self.status() != TxStatus::Idle {
            tracing::warn!("could not end a transaction left by a batch: closing the connection");
            self.abandon();
        }
        if self.is_dirty() {
            self.reset().await;
        }
    }

    /// Queues `ROLLBACK`, then the session reset when the session is dirty; returns how
    /// many reset units were queued.
    fn queue_rollback_and_reset(&mut self) -> std::io::Result<usize> {
        frontend::query(ROLLBACK, self.io().queue())?;
        if self.is_dirty() { self.queue_reset() } else { Ok(0) }
    }

    /// Encodes a committing exchange into the write buffer behind the exchanges still in
    /// flight, without waiting for them, and returns its flight, for a
    /// [`Pipeline`](super::pipeline::Pipeline) to land in turn. Each exchange leaves the
    /// connection idle and its session reset before the next one runs on the server; its
    /// custom types must have been looked up already.
    pub(crate) fn queue_pipelined(&mut self, request: &Exchange<'_>) -> Result<Flight, NotSent> {
        debug_assert!(request.pipelined && request.end == End::Commit && request.restart == Restart::No);
        self.queue(request)
    }

    /// Encodes the exchange into the write buffer, all of it or nothing.
    fn queue(&mut self, request: &Exchange<'_>) -> Result<Flight, NotSent> {
        let binds: Vec<WireBinds<'_>> =
            request.statements.iter().map(|statement| WireBinds::new(self, statement)).collect();
        // An earlier exchange of pgbatch's own left a transaction behind (never the
        // caller's: `exchange` refuses to begin inside one).
        let recover = !request.pipelined && request.begin.is_some() && self.status() != TxStatus::Idle;
        let restart = request.restart != Restart::No;
        let nested = request.end == End::Release;
        // A session an earlier batch left unreset (a two-phase batch dropped undecided on a
        // bare connection) is reset before this batch begins, in the same write.
        let reset_first = !request.pipelined && request.begin.is_some() && self.is_dirty();
        let runs_statements = request.begin.is_some() || !request.statements.is_empty();
        let dirties = request.reset_session || (runs_statements && self.resets_after_every_batch());
        // DISCARD ALL cannot run inside a transaction block: a session a nested batch
        // dirtied is reset once the caller's transaction ends.
        let reset_after = (dirties || self.is_dirty()) && !matches!(request.end, End::Open | End::Release);
        let start = self.io().queue().len();
        let mut reset_units = (0, 0);
        let mut flight = Flight::new();
        let mut failing = None;
        let queued = (|| {
            let buf = self.io().queue();
            if recover {
                // An earlier exchange left a transaction behind (its ROLLBACK was
                // cancelled): end it first, in this same write.
                frontend::query(ROLLBACK, buf)?;
            }
            if reset_first {
                reset_units.0 = self.queue_reset()?;
            }
            let buf = self.io().queue();
            let mut prefix = 0;
            if let Some(begin) = request.begin {
                step(buf, begin, &[], &[], false)?;
                prefix += 1;
            }
            match request.restart {
                Restart::No => {}
                Restart::First => step(buf, SAVEPOINT, &[], &[], false)?,
                Restart::Again => step(buf, ROLLBACK_TO, &[], &[], false)?,
            }
            if nested {
                step(buf, NESTED_SAVEPOINT, &[], &[], false)?;
            }
            prefix += usize::from(restart) + usize::from(nested);
            for (index, (statement, binds)) in request.statements.iter().zip(&binds).enumerate() {
                let (oids, values) = binds.get();
                failing = Some(index);
                step(buf, &statement.sql.text, oids, values, true)?;
                failing = None;
            }
            if restart {
                step(buf, RELEASE, &[], &[], false)?;
            }
            if nested {
                step(buf, NESTED_RELEASE, &[], &[], false)?;
            }
            let end = match request.end {
                End::Commit => Some(COMMIT),
                End::Rollback => Some(ROLLBACK),
                // Taken again, so that the undo after the unit finds it either way.
                End::Release => Some(NESTED_SAVEPOINT),
                End::Open => None,
            };
            if let Some(end) = end {
                step(buf, end, &[], &[], false)?;
            }
            let end_offset = buf.len();
            frontend::sync(buf);
            if nested {
                frontend::query(NESTED_UNDO, buf)?;
            } else if end.is_some() && !restart {
                frontend::query(ROLLBACK, buf)?;
            }
            if reset_after {
                reset_units.1 = self.queue_reset()?;
            }
            Ok::<_, std::io::Error>((end.map(|_| end_offset), end, prefix))
        })();
        let (end_offset, end, prefix) = match queued {
            Ok(done) => done,
            Err(error) => {
                self.io().queue().truncate(start);
                return Err(match failing {
                    Some(index) => NotSent::Encode { index, error },
                    None => NotSent::Wire(WireError::Protocol(error.to_string())),
                });
            }
        };
        if let Some(offset) = end_offset {
            let base = self.io().queued() - self.io().queue().len() as u64;
            flight.set_end_offset(base + offset as u64);
        }
        if recover {
            flight.push(self, Unit::Discard);
        }
        (0..reset_units.0).for_each(|_| flight.push(self, Unit::Reset));
        if dirties {
            self.set_dirty(true);
        }
        let suffix = usize::from(restart) + usize::from(nested);
        let end_tag = end.map(|end| if nested { "SAVEPOINT" } else { end });
        let collector = Collector::new(prefix, request.statements.len(), suffix, end_tag);
        flight.push(self, Unit::Collect(collector));
        if request.end == End::Open {
            flight.roll_back_open_failure();
        } else if !restart {
            flight.push(self, Unit::Discard);
        }
        (0..reset_units.1).for_each(|_| flight.push(self, Unit::Reset));
        Ok(flight)
    }
}

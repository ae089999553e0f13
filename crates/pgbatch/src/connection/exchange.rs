//! One batch on the wire: `BEGIN`, every statement and `COMMIT` as one unit ending in one
//! `Sync`, after the [prelude](super::prelude) that makes the session clean when it must be,
//! and followed in the same write by a `ROLLBACK` of its own.
//!
//! ```text
//! client                                                     server
//!   |-- [ROLLBACK], [DISCARD ALL, <setup>..., COMMIT | ""] -->|  the prelude, when due
//!   |-- Parse/Bind/Execute BEGIN                          -->|
//!   |-- Parse/Bind/Describe/Execute s1 ... sN             -->|  one unit: an error anywhere
//!   |-- Parse/Bind/Execute COMMIT, Sync                   -->|  skips the rest of it
//!   |-- Query ROLLBACK                                    -->|  ends any aborted block
//!   |<-- prelude, BEGIN, rows and tags of s1..sN, COMMIT, Ready(I)
//!   |<-- (warning: no transaction) ROLLBACK, Ready(I) -------|
//! ```
//!
//! Because the whole transaction is one unit, a failure at any step, `BEGIN` included
//! (a cancel request, `statement_timeout`), makes the server skip every later step up to
//! the `Sync`: nothing after the failure runs, so nothing commits. The `ROLLBACK` after it
//! ends the block the failure left aborted, or merely warns when the batch committed.
//!
//! The session is the holder's: a batch leaves it as its statements left it, for the same
//! holder's next request. When the connection changes hands (a pool takes it back), the
//! next unit resets it first, in its own segment: a reset that fails makes the server skip
//! the unit, which is then reported as not run, and the connection is given up when the
//! reset could not clear the session.
//!
//! Inside a transaction the caller opened ([`End::Release`]), the unit is `SAVEPOINT
//! pgbatch_nested`, the statements, `RELEASE SAVEPOINT pgbatch_nested` and `SAVEPOINT
//! pgbatch_nested` again, ending in one `Sync`, followed by one query, `ROLLBACK TO SAVEPOINT
//! pgbatch_nested; RELEASE SAVEPOINT pgbatch_nested`: after a failure it undoes the batch and
//! leaves the caller's transaction usable, after success it undoes nothing. No prelude and no
//! `ROLLBACK`: the transaction, and the session, are the caller's.

use postgres_protocol::message::frontend;

use super::flight::{Flight, Unit};
use super::state::{Connection, TxStatus};
use super::statements::{CacheMiss, Target, prepared_in};
use super::step::{queue_unit, step, step_as};
use super::types::WireBinds;
use crate::codec::Statement;
use crate::error::WireError;
use crate::protocol::Collector;
use crate::protocol::Prelude;
use crate::protocol::sql::{
    COMMIT, NESTED_RELEASE, NESTED_SAVEPOINT, NESTED_UNDO, RELEASE, ROLLBACK, ROLLBACK_TO, SAVEPOINT,
};
use crate::protocol::{Answers, BatchNotSent, Ending, NotSent, Prepared};

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
    restart: Restart,
    /// Every statement sent unnamed, past the statement cache.
    unnamed: bool,
}

impl<'a> Exchange<'a> {
    /// `BEGIN` (or none, to continue an open transaction), the statements, and how to end.
    pub(crate) fn new(begin: Option<&'a str>, statements: &'a [&'a Statement], end: End) -> Self {
        Exchange { begin, statements, end, restart: Restart::No, unnamed: false }
    }

    /// Sends every statement unnamed: a unit sent again after a [`CacheMiss`] must not meet
    /// another (a caller's `PREPARE` may hold the names it would be prepared under next).
    pub(crate) fn unnamed(mut self) -> Self {
        self.unnamed = true;
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
    ///
    /// A statement the statement cache sent by name that the server could no longer run
    /// as prepared ([`CacheMiss`]) makes the connection forget its cache and send the unit
    /// once more, its statements unnamed: the failure rolled the unit back, so nothing of it
    /// stayed, and unnamed statements cannot miss again.
    pub(crate) async fn exchange(&mut self, request: &Exchange<'_>) -> Result<Answers, BatchNotSent> {
        let (answers, cached) = self.exchange_once(request).await?;
        if !CacheMiss::in_answers(&answers, &cached) {
            return Ok(answers);
        }
        self.after_cache_miss();
        if request.restart != Restart::No {
            // The transaction stays open for CockroachDB's own retry, which prepares anew.
            return Ok(answers);
        }
        Ok(self.exchange_once(&request.unnamed()).await?.0)
    }

    /// [`exchange`](Self::exchange) without its second try; also says which statements
    /// were sent by a name of the statement cache's.
    async fn exchange_once(&mut self, request: &Exchange<'_>) -> Result<(Answers, Vec<bool>), BatchNotSent> {
        self.ready().await?;
        if self.in_caller_transaction() && request.end != End::Release {
            // Never end, or roll back, a transaction the caller opened.
            return Err(BatchNotSent::InCallerTransaction);
        }
        super::types::resolve(self, request.statements).await?;
        let transaction = match (request.end, request.restart) {
            (End::Release, _) => self.in_caller_transaction() && self.status() == TxStatus::InTransaction,
            // A retry rolls back to the savepoint of a transaction a failure left aborted.
            (_, Restart::Again) => self.status() != TxStatus::Idle,
            _ => request.begin.is_some() || self.status() == TxStatus::InTransaction,
        };
        if !transaction {
            return Err(BatchNotSent::NoTransaction);
        }
        self.forget_replication_warning();
        let Queued { flight, prelude, cached } = self.queue(request)?;
        let mut landed = flight.land(self).await;
        let answers = landed.answers.pop().expect("the batch's unit is collected");
        // A failed prelude: nothing of the batch ran.
        let answers = self.after_prelude(prelude, answers).await?;
        if request.end == End::Release {
            // The enclosing transaction stays the caller's; the undo after a failure must
            // have completed.
            self.undo_nested_failure().await;
            return Ok((answers, cached));
        }
        let stays_open = match request.restart {
            // Open after a failure, for the caller to retry or end.
            Restart::First | Restart::Again => true,
            Restart::No => request.end == End::Open && matches!(answers.ending, Ending::Done),
        };
        if !stays_open && self.status() != TxStatus::Idle {
            // A cancel or timeout landed on the closing ROLLBACK itself.
            self.end_transaction().await;
        }
        Ok((answers, cached))
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

    /// Ends whatever transaction the server still reports with `ROLLBACK` (one round trip,
    /// only on this rare path); gives up on the connection after a few tries, which ends its
    /// session on the server.
    pub(crate) async fn end_transaction(&mut self) {
        const TRIES: usize = 3;
        for _ in 0..TRIES {
            if self.is_closed() || self.status() == TxStatus::Idle {
                return;
            }
            if frontend::query(ROLLBACK, self.io().queue()).is_err() {
                break;
            }
            let mut flight = Flight::new();
            flight.push(self, Unit::Discard);
            flight.land(self).await;
        }
        if !self.is_closed() && self.status() != TxStatus::Idle {
            tracing::warn!("could not end a transaction left by a batch: closing the connection");
            self.abandon();
        }
    }

    /// Encodes a committing exchange into the write buffer behind the exchanges still in
    /// flight, without waiting for them, and returns its flight and prelude, for a
    /// [`Pipeline`](super::pipeline::Pipeline) to land in turn. The state the flights ahead
    /// leave is not known yet, so the unit's prelude rolls back whatever transaction one of
    /// them may leave; its custom types must have been looked up already.
    pub(crate) fn queue_pipelined(&mut self, request: &Exchange<'_>) -> Result<Queued, NotSent> {
        debug_assert!(request.end == End::Commit && request.restart == Restart::No && request.begin.is_some());
        self.queue(request)
    }

    /// Encodes the exchange into the write buffer, all of it or nothing.
    fn queue(&mut self, request: &Exchange<'_>) -> Result<Queued, NotSent> {
        let binds: Vec<WireBinds<'_>> =
            request.statements.iter().map(|statement| WireBinds::new(self, statement)).collect();
        // A unit that begins a transaction starts outside one: its prelude makes the session
        // ready (never inside the caller's transaction: `exchange` refuses to begin there).
        // Before the statements' targets: a reset that is `DISCARD ALL` empties the cache.
        let prelude = self.prelude(request.begin.is_some());
        let targets: Vec<Target> =
            request
                .statements
                .iter()
                .zip(&binds)
                .map(|(statement, binds)| {
                    if request.unnamed { Target::Unnamed } else { self.statements.target_for(statement, binds.get().0) }
                })
                .collect();
        let touches_session = request.statements.iter().any(|statement| statement.sql.touches_session);
        let runs_statements = request.begin.is_some() || !request.statements.is_empty();
        let mut failing = None;
        let steps = Steps { request, binds: &binds, targets: &targets };
        let queued = queue_unit(self, prelude, |buf, parses| queue_steps(buf, &steps, parses, &mut failing));
        let (framed, mut prepared) = match queued {
            Ok(queued) => queued,
            Err(error) => {
                // Nothing was written: the misses' entries are dropped.
                self.statements.unwritten(&targets);
                return Err(match failing {
                    Some(index) => NotSent::Encode { index, error },
                    None => NotSent::Wire(WireError::Protocol(error.to_string())),
                });
            }
        };
        let mut flight = Flight::new();
        if let Some(offset) = framed.end_offset {
            let base = self.io().queued() - self.io().queue().len() as u64;
            flight.set_end_offset(base + offset as u64);
        }
        if runs_statements {
            self.note_use(touches_session);
        }
        prepared.extend(framed.prepared);
        let collector = Collector::new(framed.prefix, request.statements.len(), framed.suffix, framed.end_tag)
            .after(prelude)
            .preparing(prepared);
        flight.push(self, Unit::Collect(collector));
        if request.end == End::Open {
            flight.roll_back_open_failure();
        } else if request.restart == Restart::No {
            flight.push(self, Unit::Discard);
        }
        let cached = targets.iter().map(|target| *target != Target::Unnamed).collect();
        Ok(Queued { flight, prelude, cached })
    }
}

/// A unit written and waiting for its answers.
pub(crate) struct Queued {
    pub(crate) flight: Flight,
    pub(crate) prelude: Prelude,
    /// For each statement, whether it was sent by a name of the statement cache's.
    pub(crate) cached: Vec<bool>,
}

/// What [`queue_steps`] writes: the request, and its statements' binds and targets.
struct Steps<'r, 'a> {
    request: &'r Exchange<'a>,
    binds: &'r [WireBinds<'r>],
    targets: &'r [Target],
}

/// Where a unit's own steps lie, as [`queue_steps`] wrote them.
struct Framed {
    /// Steps before the statements (`BEGIN`, savepoints).
    prefix: usize,
    /// Steps after the statements, before the end step (releases).
    suffix: usize,
    /// The tag the end step answers with, when there is one.
    end_tag: Option<&'static str>,
    /// Where the end step ends in the write buffer.
    end_offset: Option<usize>,
    /// The statements' `Parse`s into named statements.
    prepared: Vec<Prepared>,
}

/// Writes the unit's own steps (after its prelude): `BEGIN`, the restart or nested
/// savepoint, the statements, their releases, the end step, the `Sync`, and the query that
/// follows it. `failing` names the statement being written, for an encoding error.
/// `parses_before`: how many `Parse`s the segment holds before the unit's own steps (the
/// prelude's).
fn queue_steps(
    buf: &mut bytes::BytesMut,
    steps: &Steps<'_, '_>,
    parses_before: usize,
    failing: &mut Option<usize>,
) -> std::io::Result<Framed> {
    let request = steps.request;
    let restart = request.restart != Restart::No;
    let nested = request.end == End::Release;
    if let Some(begin) = request.begin {
        step(buf, begin, &[], &[], false)?;
    }
    match request.restart {
        Restart::No => {}
        Restart::First => step(buf, SAVEPOINT, &[], &[], false)?,
        Restart::Again => step(buf, ROLLBACK_TO, &[], &[], false)?,
    }
    if nested {
        step(buf, NESTED_SAVEPOINT, &[], &[], false)?;
    }
    let prefix = usize::from(request.begin.is_some()) + usize::from(restart) + usize::from(nested);
    for (index, ((statement, binds), target)) in
        request.statements.iter().zip(steps.binds).zip(steps.targets).enumerate()
    {
        let (oids, values) = binds.get();
        *failing = Some(index);
        step_as(buf, target, &statement.sql.text, oids, values, true)?;
        *failing = None;
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
    let end_offset = end.map(|_| buf.len());
    frontend::sync(buf);
    if nested {
        frontend::query(NESTED_UNDO, buf)?;
    } else if end.is_some() && !restart {
        frontend::query(ROLLBACK, buf)?;
    }
    Ok(Framed {
        prefix,
        suffix: usize::from(restart) + usize::from(nested),
        end_tag: end.map(|end| if nested { "SAVEPOINT" } else { end }),
        end_offset,
        prepared: prepared_in(steps.targets, parses_before + prefix).0,
    })
}

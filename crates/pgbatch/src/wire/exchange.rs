//! One batch on the wire: `BEGIN`, every statement and `COMMIT` as one unit ending in one
//! `Sync`, followed in the same write by a `ROLLBACK` of its own.
//!
//! ```text
//! client                                                     server
//!   |-- Parse/Bind/Execute BEGIN                          -->|
//!   |-- Parse/Bind/Describe/Execute s1 ... sN             -->|  one unit: an error anywhere
//!   |-- Parse/Bind/Execute COMMIT, Sync                   -->|  skips the rest of it
//!   |-- Query ROLLBACK                                    -->|  ends any aborted block
//!   |<-- BEGIN, rows and tags of s1..sN, COMMIT, Ready(I) ---|
//!   |<-- (warning: no transaction) ROLLBACK, Ready(I) -------|
//! ```
//!
//! Because the whole transaction is one unit, a failure at any step, `BEGIN` included
//! (a cancel request, `statement_timeout`), makes the server skip every later step up to
//! the `Sync`: nothing after the failure runs, so nothing commits. The `ROLLBACK` after it
//! ends the block the failure left aborted, or merely warns when the batch committed, so
//! that every batch leaves the connection idle — in the same round trip.

use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

use super::collect::{Answers, Collector, Ending};
use super::connection::{Connection, TxStatus};
use super::flight::{Flight, Unit};
use crate::codec::Statement;
use crate::error::{BuildError, ServerError, WireError};

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

/// The end of every batch, and what makes sure of it.
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";
/// The session reset after a batch that may have changed it.
pub(crate) const DISCARD: &str = "DISCARD ALL";

/// The SQL of the restart protocol; CockroachDB gives this savepoint name its meaning.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT cockroach_restart";
pub(crate) const RELEASE: &str = "RELEASE SAVEPOINT cockroach_restart";
pub(crate) const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT cockroach_restart";

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
}

impl<'a> Exchange<'a> {
    /// `BEGIN` (or none, to continue an open transaction), the statements, and how to end.
    pub(crate) fn new(begin: Option<&'a str>, statements: &'a [&'a Statement], end: End) -> Self {
        Exchange { begin, statements, end, reset_session: false, restart: Restart::No }
    }

    /// Resets the session after the unit.
    pub(crate) fn reset_session(mut self, reset: bool) -> Self {
        self.reset_session = reset;
        self
    }

    /// Runs the unit under CockroachDB's restart savepoint. A failed unit then leaves its
    /// transaction open, for a retry or for [`Connection::end_transaction`].
    pub(crate) fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }
}

/// Why a batch was not sent at all.
#[derive(Debug)]
pub(crate) enum NotSent {
    /// The connection was already closed or broken, or failed while the answers of an
    /// earlier exchange were read.
    Closed,
    /// The connection failed while looking up custom types.
    Wire(WireError),
    /// A custom type does not exist.
    UnknownType(BuildError),
    /// A two-phase batch's second round trip found no open transaction.
    NoTransaction,
    /// The protocol encoder refused statement `index` (the checks at push should have).
    Encode { index: usize, error: std::io::Error },
}

impl Connection {
    /// Sends a batch as one unit and reads its answers; see the module docs.
    pub(crate) async fn exchange(&mut self, request: &Exchange<'_>) -> Result<Answers, NotSent> {
        if self.is_closed() {
            return Err(NotSent::Closed);
        }
        if let Err(error) = self.settle().await {
            // Found closed (or failing) before anything of this batch was written.
            tracing::debug!(%error, "connection unusable before the batch was sent");
            return Err(NotSent::Closed);
        }
        super::types::resolve(self, request.statements).await?;
        let transaction = match request.restart {
            // A retry rolls back to the savepoint of a transaction a failure left aborted.
            Restart::Again => self.status() != TxStatus::Idle,
            _ => request.begin.is_some() || self.status() == TxStatus::InTransaction,
        };
        if !transaction {
            return Err(NotSent::NoTransaction);
        }
        let flight = self.queue(request)?;
        let (mut answers, discarded_error) = flight.land(self).await;
        let answers = answers.pop().expect("the batch's unit is collected");
        if request.reset_session && discarded_error.is_some() {
            // The session may not have been reset: never reuse it.
            self.abandon();
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
        Ok(answers)
    }

    /// Resets the session (`DISCARD ALL`, then the session setup again), in a round trip of
    /// its own; gives up on the connection when that fails.
    pub(crate) async fn reset(&mut self) {
        if self.is_closed() {
            return;
        }
        let statements: Vec<String> =
            std::iter::once(DISCARD.to_owned()).chain(self.session().setup.iter().cloned()).collect();
        if run_setup(self, &statements).await.is_err() {
            self.abandon();
        }
    }

    /// Ends whatever transaction the server still reports, with `ROLLBACK` (one round trip
    /// each, only on this rare path); gives up on the connection after a few tries, which
    /// ends its session on the server.
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

    /// Encodes the exchange into the write buffer, all of it or nothing.
    fn queue(&mut self, request: &Exchange<'_>) -> Result<Flight, NotSent> {
        // Custom types get this connection's OIDs; the rest is sent as rendered.
        let resolved: Vec<_> = request
            .statements
            .iter()
            .map(|statement| {
                (!statement.binds.is_portable()).then(|| {
                    statement.binds.resolved(|name| self.custom_type(name).expect("custom types are resolved first"))
                })
            })
            .collect();
        let recover = request.begin.is_some() && self.status() != TxStatus::Idle;
        let restart = request.restart != Restart::No;
        let reset: Vec<String> = if request.reset_session && !restart {
            std::iter::once(DISCARD.to_owned()).chain(self.session().setup.iter().cloned()).collect()
        } else {
            Vec::new()
        };
        let start = self.io().queue().len();
        let mut flight = Flight::new();
        let mut failing = None;
        let queued = (|| {
            let buf = self.io().queue();
            if recover {
                // An earlier exchange left a transaction behind (its ROLLBACK was
                // cancelled): end it first, in this same write.
                frontend::query(ROLLBACK, buf)?;
            }
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
            prefix += usize::from(restart);
            for (index, (statement, resolved)) in request.statements.iter().zip(&resolved).enumerate() {
                let (oids, values) = match resolved {
                    Some((oids, values)) => (oids.as_slice(), values.as_slice()),
                    None => (statement.binds.oids.as_slice(), statement.binds.values.as_slice()),
                };
                failing = Some(index);
                step(buf, &statement.sql.text, oids, values, true)?;
                failing = None;
            }
            if restart {
                step(buf, RELEASE, &[], &[], false)?;
            }
            let end = match request.end {
                End::Commit => Some(COMMIT),
                End::Rollback => Some(ROLLBACK),
                End::Open => None,
            };
            if let Some(end) = end {
                step(buf, end, &[], &[], false)?;
            }
            let end_offset = buf.len();
            frontend::sync(buf);
            if end.is_some() && !restart {
                frontend::query(ROLLBACK, buf)?;
            }
            for sql in &reset {
                frontend::query(sql, buf)?;
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
        let collector = Collector::new(prefix, request.statements.len(), usize::from(restart), end);
        flight.push(self, Unit::Collect(collector));
        if request.end == End::Open {
            flight.roll_back_open_failure();
        } else if !restart {
            flight.push(self, Unit::Discard);
        }
        for _ in &reset {
            flight.push(self, Unit::Discard);
        }
        Ok(flight)
    }
}

/// Queues one extended-protocol step: an unnamed statement with binary binds and binary
/// results, described when it may return rows.
fn step(
    buf: &mut bytes::BytesMut,
    sql: &str,
    oids: &[u32],
    values: &[Option<Vec<u8>>],
    describe: bool,
) -> std::io::Result<()> {
    // Parse, Bind, Describe and Execute hold about 60 bytes besides the SQL and the values.
    buf.reserve(
        sql.len() + 4 * oids.len() + values.iter().map(|v| 4 + v.as_ref().map_or(0, Vec::len)).sum::<usize>() + 64,
    );
    frontend::parse("", sql, oids.iter().copied(), buf)?;
    let bound = frontend::bind(
        "",
        "",
        Some(1),
        values,
        |value, buf| match value {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        Some(1),
        buf,
    );
    if let Err(error) = bound {
        return Err(match error {
            frontend::BindError::Conversion(error) => std::io::Error::other(error),
            frontend::BindError::Serialization(error) => error,
        });
    }
    if describe {
        frontend::describe(b'P', "", buf)?;
    }
    frontend::execute("", 0, buf)
}

/// Why the session setup failed.
#[derive(Debug)]
pub(crate) enum SetupError {
    Wire(WireError),
    Server(Box<ServerError>),
}

/// Runs the session setup statements, each a unit of its own, in one round trip.
pub(crate) async fn run_setup(connection: &mut Connection, statements: &[String]) -> Result<(), SetupError> {
    if statements.is_empty() {
        return Ok(());
    }
    let mut flight = Flight::new();
    for sql in statements {
        frontend::query(sql, connection.io().queue())
            .map_err(|e| SetupError::Wire(WireError::Protocol(e.to_string())))?;
        flight.push(connection, Unit::Discard);
    }
    let (_, error) = flight.land(connection).await;
    if connection.is_closed() {
        return Err(SetupError::Wire(WireError::Closed));
    }
    error.map_or(Ok(()), |error| Err(SetupError::Server(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_around_a_batch_uses_listed_constructs_only() {
        for sql in [COMMIT, ROLLBACK, DISCARD, SAVEPOINT, RELEASE, ROLLBACK_TO] {
            crate::codec::constructs::assert_allowed(sql, &[]);
        }
    }
}

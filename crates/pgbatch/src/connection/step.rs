//! One step of the extended protocol as pgbatch sends it: a statement (`Parse`, unnamed or
//! into the statement cache, or none for a cached one; `Bind`, `Describe`, `Execute`) with
//! binary results, and a read of its own that ends in a `Sync`. Batches, type lookups,
//! start-up and ending an orphan all queue their statements here.

use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

use super::flight::{Flight, Unit};
use super::state::Connection;
use super::statements::{Target, prepared_in};
use crate::protocol::Collector;
use crate::protocol::Prelude;
use crate::protocol::Prepared;
use crate::protocol::sql::{COMMIT, DISCARD, RESET_KEEPING_STATEMENTS, ROLLBACK};

/// Queues one extended-protocol step: an unnamed statement with binary binds and binary
/// results, described when it may return rows.
pub(crate) fn step(
    buf: &mut bytes::BytesMut,
    sql: &str,
    oids: &[u32],
    values: &[Option<Vec<u8>>],
    describe: bool,
) -> std::io::Result<()> {
    step_as(buf, &Target::Unnamed, sql, oids, values, describe)
}

/// Queues one extended-protocol step whose statement `target` says how to send: parsed
/// unnamed, parsed under a name of the statement cache's, or only bound by that name.
pub(crate) fn step_as(
    buf: &mut bytes::BytesMut,
    target: &Target,
    sql: &str,
    oids: &[u32],
    values: &[Option<Vec<u8>>],
    describe: bool,
) -> std::io::Result<()> {
    // Parse, Bind, Describe and Execute hold about 60 bytes besides the SQL and the values.
    buf.reserve(
        sql.len() + 4 * oids.len() + values.iter().map(|v| 4 + v.as_ref().map_or(0, Vec::len)).sum::<usize>() + 64,
    );
    let statement = match target {
        Target::Unnamed => {
            frontend::parse("", sql, oids.iter().copied(), buf)?;
            ""
        }
        Target::Prepare(name) => {
            frontend::parse(name, sql, oids.iter().copied(), buf)?;
            name
        }
        Target::Cached(name) => name,
    };
    let bound = frontend::bind(
        "",
        statement,
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

/// The empty query that ends a reset without a setup: the cheapest statement that takes a
/// cancel PostgreSQL held over from `DISCARD ALL`.
const ABSORB: &str = "";

/// Queues one unit on `connection`: `prelude`, then what `body` writes (the unit's own
/// steps and its `Sync`), in one segment. All of it or nothing: on an error (a bind that
/// cannot be encoded) the write buffer is left as it was, and the connection with it.
///
/// `body` is told how many `Parse` messages the segment holds before it; the prelude's
/// named `Parse`s (the reset's steps, kept in the statement cache) are returned with what
/// `body` returns.
pub(crate) fn queue_unit<T>(
    connection: &mut Connection,
    prelude: Prelude,
    body: impl FnOnce(&mut bytes::BytesMut, usize) -> std::io::Result<T>,
) -> std::io::Result<(T, Vec<Prepared>)> {
    let reset_setup = connection.reset_setup();
    let closing = connection.statements.take_closing();
    // The reset that keeps the cache keeps its own steps there too: bound by name after the
    // first reset. A caller that deallocates them makes the next reset fail, and the
    // connection is given up, as after any failed reset.
    let reset: Vec<Target> = if prelude.reset && prelude.keep_statements {
        RESET_KEEPING_STATEMENTS.iter().map(|sql| connection.statements.target(sql, &[])).collect()
    } else {
        Vec::new()
    };
    let (prepared, reset_parses) = prepared_in(&reset, usize::from(prelude.rollback));
    let parses = prelude.steps() - reset.len() + reset_parses;
    let buf = connection.io().queue();
    let start = buf.len();
    let queued = queue_closes(buf, &closing)
        .and_then(|()| queue_prelude(prelude, buf, &reset_setup, &reset))
        .and_then(|()| body(buf, parses));
    match queued {
        Ok(value) => Ok((value, prepared)),
        Err(error) => {
            buf.truncate(start);
            connection.statements.restore_closing(closing);
            connection.statements.unwritten(&reset);
            Err(error)
        }
    }
}

/// Queues a `Close` of each statement the cache let go. First in the segment, so that no
/// failure can make the server skip them; each answers `CloseComplete`, whether or not the
/// server had the statement.
fn queue_closes(buf: &mut bytes::BytesMut, names: &[std::sync::Arc<str>]) -> std::io::Result<()> {
    names.iter().try_for_each(|name| frontend::close(b'S', name, buf))
}

/// Queues `prelude`'s steps into `buf`, with the statements the reset runs after `DISCARD
/// ALL` (see [`prelude`](super::prelude)); `reset`: how each step of the reset that keeps
/// the statement cache is sent.
fn queue_prelude(
    prelude: Prelude,
    buf: &mut bytes::BytesMut,
    setup: &[String],
    reset: &[Target],
) -> std::io::Result<()> {
    debug_assert!(!prelude.reset || setup.len() == prelude.setup);
    if prelude.rollback {
        step(buf, ROLLBACK, &[], &[], false)?;
    }
    if prelude.reset && prelude.keep_statements {
        for (sql, target) in RESET_KEEPING_STATEMENTS.iter().zip(reset) {
            // Described: `SELECT pg_advisory_unlock_all()` returns a row.
            step_as(buf, target, sql, &[], &[], true)?;
        }
    } else if prelude.reset {
        step(buf, DISCARD, &[], &[], false)?;
    }
    if prelude.reset {
        for sql in setup {
            // Described: a setup statement may return a row (`SELECT set_config(..)`).
            step(buf, sql, &[], &[], true)?;
        }
        let close = if prelude.commit { COMMIT } else { ABSORB };
        step(buf, close, &[], &[], false)?;
    }
    Ok(())
}

/// `text`: the OID of [`queue_read`]'s binds.
const TEXT_OID: u32 = 25;

/// Queues a read of its own: an unnamed statement with text binds and binary results, and
/// a `Sync`, one unit whose answers `flight` collects. Nothing is queued on an error (a
/// bind with a NUL byte).
pub(crate) fn queue_read(
    connection: &mut Connection,
    flight: &mut Flight,
    sql: &str,
    binds: &[&str],
) -> std::io::Result<()> {
    queue_read_after(connection, flight, Prelude::NONE, sql, binds)
}

/// [`queue_read`] after `prelude`, in the same segment.
pub(crate) fn queue_read_after(
    connection: &mut Connection,
    flight: &mut Flight,
    prelude: Prelude,
    sql: &str,
    binds: &[&str],
) -> std::io::Result<()> {
    let oids = vec![TEXT_OID; binds.len()];
    let values: Vec<Option<Vec<u8>>> = binds.iter().map(|bind| Some(bind.as_bytes().to_vec())).collect();
    let ((), prepared) = queue_unit(connection, prelude, |buf, _| {
        step(buf, sql, &oids, &values, true)?;
        frontend::sync(buf);
        Ok(())
    })?;
    let collector = Collector::new(0, 1, 0, None).after(prelude).preparing(prepared);
    flight.push(connection, Unit::Collect(collector));
    Ok(())
}

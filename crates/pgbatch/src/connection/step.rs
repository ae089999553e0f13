//! One step of the extended protocol as pgbatch sends it: an unnamed statement (`Parse`,
//! `Bind`, `Describe`, `Execute`) with binary results, and a read of its own that ends in a
//! `Sync`. Batches, type lookups, start-up and ending an orphan all queue their statements
//! here.

use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

use super::flight::{Flight, Unit};
use super::state::Connection;
use crate::protocol::Collector;
use crate::protocol::Prelude;
use crate::protocol::sql::{COMMIT, DISCARD, ROLLBACK};

/// Queues one extended-protocol step: an unnamed statement with binary binds and binary
/// results, described when it may return rows.
pub(crate) fn step(
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

/// The empty query that ends a reset without a setup: the cheapest statement that takes a
/// cancel PostgreSQL held over from `DISCARD ALL`.
const ABSORB: &str = "";

/// Queues one unit on `connection`: `prelude`, then what `body` writes (the unit's own
/// steps and its `Sync`), in one segment. All of it or nothing: on an error (a bind that
/// cannot be encoded) the write buffer is left as it was, and the connection with it.
pub(crate) fn queue_unit<T>(
    connection: &mut Connection,
    prelude: Prelude,
    body: impl FnOnce(&mut bytes::BytesMut) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let reset_setup = connection.reset_setup();
    let buf = connection.io().queue();
    let start = buf.len();
    let queued = queue_prelude(prelude, buf, &reset_setup).and_then(|()| body(buf));
    if queued.is_err() {
        buf.truncate(start);
    }
    queued
}

/// Queues `prelude`'s steps into `buf`, with the statements the reset runs after `DISCARD
/// ALL` (see [`prelude`](super::prelude)).
fn queue_prelude(prelude: Prelude, buf: &mut bytes::BytesMut, setup: &[String]) -> std::io::Result<()> {
    debug_assert!(!prelude.reset || setup.len() == prelude.setup);
    if prelude.rollback {
        step(buf, ROLLBACK, &[], &[], false)?;
    }
    if prelude.reset {
        step(buf, DISCARD, &[], &[], false)?;
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
    queue_unit(connection, prelude, |buf| {
        step(buf, sql, &oids, &values, true)?;
        frontend::sync(buf);
        Ok(())
    })?;
    flight.push(connection, Unit::Collect(Collector::new(0, 1, 0, None).after(prelude)));
    Ok(())
}

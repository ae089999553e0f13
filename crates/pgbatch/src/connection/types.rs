//! Custom types' OIDs, looked up once per connection before anything of a batch is sent.
//!
//! Each unknown type is one unit of its own (an unnamed statement and a `Sync`), all of
//! them in one write: one round trip for any number of types, no named statements (so a
//! transaction-pooling PgBouncer cannot split them), and a missing type fails only its own
//! lookup. Each lookup runs after the connection's [prelude](super::prelude) when one is
//! due: a type an earlier holder created in its temporary schema must not be taken for the
//! one the batch means. Result columns of custom types need no lookup: rows arrive in binary with their
//! OIDs, and Diesel decodes them from the bytes.

use super::flight::Flight;
use super::state::Connection;
use super::step::queue_read_after;
use crate::codec::{Statement, TypeName};
use crate::error::{BuildError, WireError};
use crate::protocol::{Ending, NotSent};

/// A type visible on the search path, by name.
const VISIBLE: &str = "SELECT t.oid, t.typarray FROM pg_catalog.pg_type t \
                       WHERE t.typname = $1 AND pg_catalog.pg_type_is_visible(t.oid)";
/// A type in a given schema.
const QUALIFIED: &str = "SELECT t.oid, t.typarray FROM pg_catalog.pg_type t \
                         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                         WHERE t.typname = $1 AND n.nspname = $2";

/// Looks up the custom types of `statements` this connection has not met yet.
pub(crate) async fn resolve(connection: &mut Connection, statements: &[&Statement]) -> Result<(), NotSent> {
    let mut unknown: Vec<&TypeName> = Vec::new();
    for name in statements.iter().flat_map(|s| s.binds.custom_types()) {
        if connection.custom_type(name).is_none() && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let prelude = connection.prelude(true);
    let mut flight = Flight::new();
    for name in &unknown {
        let (sql, binds): (&str, Vec<&str>) = match &name.schema {
            Some(schema) => (QUALIFIED, vec![&name.name, schema]),
            None => (VISIBLE, vec![&name.name]),
        };
        queue_read_after(connection, &mut flight, prelude, sql, &binds)
            .map_err(|error| NotSent::Wire(WireError::Protocol(format!("looking up type {name}: {error}"))))?;
    }
    let answers = flight.land(connection).await.answers;
    for (name, answer) in unknown.into_iter().zip(answers) {
        let answer = connection.after_prelude(prelude, answer).await?;
        match answer.ending {
            Ending::Done => {}
            Ending::Failed { error, .. } => {
                return Err(NotSent::Wire(WireError::Protocol(format!("looking up type {name} failed: {error}"))));
            }
            Ending::Lost { error, .. } => return Err(NotSent::Wire(error)),
        }
        let oids = answer.outputs.first().and_then(|output| output.rows.first()).and_then(|row| {
            let oid = |index| row.value(index).and_then(|v| <[u8; 4]>::try_from(v).ok()).map(u32::from_be_bytes);
            Some((oid(0)?, oid(1)?))
        });
        let Some(oids) = oids else {
            return Err(NotSent::UnknownType(BuildError::UnknownType { name: name.to_string() }));
        };
        tracing::debug!(%name, oid = oids.0, "resolved custom type");
        connection.remember_type(name.clone(), oids);
    }
    Ok(())
}

/// A statement's binds as this connection sends them: custom types get the connection's
/// OIDs (call [`resolve`] first); the rest is sent as rendered.
pub(crate) struct WireBinds<'s> {
    statement: &'s Statement,
    /// The OIDs and values with the custom types' OIDs put in, when there are custom types.
    resolved: Option<Resolved>,
}

type Resolved = (Vec<u32>, Vec<Option<Vec<u8>>>);

impl<'s> WireBinds<'s> {
    pub(crate) fn new(connection: &Connection, statement: &'s Statement) -> Self {
        let resolved = (!statement.binds.is_portable()).then(|| {
            statement.binds.resolved(|name| connection.custom_type(name).expect("custom types are resolved first"))
        });
        WireBinds { statement, resolved }
    }

    /// The OIDs and values to send.
    pub(crate) fn get(&self) -> (&[u32], &[Option<Vec<u8>>]) {
        match &self.resolved {
            Some((oids, values)) => (oids, values),
            None => (&self.statement.binds.oids, &self.statement.binds.values),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_lookups_use_listed_constructs_only() {
        for sql in [super::VISIBLE, super::QUALIFIED] {
            crate::codec::constructs::assert_allowed(sql, &[]);
        }
    }
}

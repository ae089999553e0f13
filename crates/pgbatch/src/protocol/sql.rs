//! The SQL pgbatch itself sends around a batch: how a unit ends, the session reset, and
//! CockroachDB's restart savepoint. Kept in one place so that every file of the layer
//! sends the same words, and one test checks them against `docs/generated-sql.md`.

/// The end of every batch, and what makes sure of it.
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";
/// Leaves a session a pooler would hand on inside a transaction, so that the pooler closes
/// it when the client goes.
pub(crate) const BEGIN: &str = "BEGIN";
/// The session reset before a unit that needs one; the session setup runs again after it.
pub(crate) const DISCARD: &str = "DISCARD ALL";

/// The SQL of the restart protocol; CockroachDB gives this savepoint name its meaning.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT cockroach_restart";
pub(crate) const RELEASE: &str = "RELEASE SAVEPOINT cockroach_restart";
pub(crate) const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT cockroach_restart";

/// A batch run inside a transaction the caller opened: a savepoint of its own around the
/// statements, released into the enclosing transaction, then taken again, so that the one
/// query after the unit (`ROLLBACK TO` it and `RELEASE` it) undoes a failed unit and is a
/// no-op after a successful one.
pub(crate) const NESTED_SAVEPOINT: &str = "SAVEPOINT pgbatch_nested";
pub(crate) const NESTED_RELEASE: &str = "RELEASE SAVEPOINT pgbatch_nested";
pub(crate) const NESTED_UNDO: &str = "ROLLBACK TO SAVEPOINT pgbatch_nested; RELEASE SAVEPOINT pgbatch_nested";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_around_a_batch_uses_listed_constructs_only() {
        for sql in [
            COMMIT,
            ROLLBACK,
            BEGIN,
            DISCARD,
            SAVEPOINT,
            RELEASE,
            ROLLBACK_TO,
            NESTED_SAVEPOINT,
            NESTED_RELEASE,
            NESTED_UNDO,
        ] {
            crate::codec::constructs::assert_allowed(sql, &[]);
        }
    }
}

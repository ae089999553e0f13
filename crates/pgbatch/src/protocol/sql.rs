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

/// The session reset of a connection that keeps its statements prepared (see
/// [`StatementCache`](crate::StatementCache)): what `DISCARD ALL` stands for minus
/// `DEALLOCATE ALL`, as Npgsql resets its pooled connections, and minus `DISCARD PLANS`
/// (a plan holds nothing of a session's state, and the server re-plans when the role or
/// the `search_path` it was made under changes); every statement prepared with SQL
/// `PREPARE` is deallocated, pgbatch's own (prepared through the protocol) are kept. The
/// steps run in one implicit transaction, which the closing `COMMIT` commits: a step that
/// fails rolls all of them back, and the session counts as not cleared. `DISCARD TEMP`, the
/// step that can take long, runs before `RESET ALL`, under the settings the holder left (a
/// `statement_timeout`, say), as it does inside `DISCARD ALL`.
pub(crate) const RESET_KEEPING_STATEMENTS: [&str; 9] = [
    "CLOSE ALL",
    "DISCARD TEMP",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL",
    "UNLISTEN *",
    "SELECT pg_advisory_unlock_all()",
    "DISCARD SEQUENCES",
    DEALLOCATE_PREPARED_WITH_SQL,
    COMMIT,
];

/// Deallocates every statement prepared with SQL `PREPARE` (`from_sql`), whichever route
/// it took (a `DO` block, a function): only the protocol's own survive.
const DEALLOCATE_PREPARED_WITH_SQL: &str = "DO $pgbatch$DECLARE statement text; BEGIN \
    FOR statement IN SELECT p.name FROM pg_catalog.pg_prepared_statements p WHERE p.from_sql LOOP \
    EXECUTE pg_catalog.format('DEALLOCATE %I', statement); END LOOP; END$pgbatch$";

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
        ]
        .into_iter()
        .chain(RESET_KEEPING_STATEMENTS)
        {
            crate::codec::constructs::assert_allowed(sql, &[]);
        }
    }
}

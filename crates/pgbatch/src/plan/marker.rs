//! Idempotency keys as a batch carries them: the key, its marker table, and the statements
//! that write and read the marker. Running batches to install, resolve or purge markers is
//! the [`idempotency`](crate::idempotency) extension's business.

use std::borrow::Cow;

use diesel::sql_types::Text;

use crate::codec::Statement;
use crate::error::BuildError;

/// The marker table's default name.
pub const DEFAULT_TABLE: &str = "pgbatch_idempotency";

/// An idempotency key and the table its marker goes to.
///
/// A batch with a key ([`Batch::idempotency_key`](crate::Batch::idempotency_key)) writes
/// a marker row for the key as its first statement, inside its own transaction: the marker
/// exists exactly when the batch committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    table: Cow<'static, str>,
}

impl IdempotencyKey {
    /// A key (for example an API request's `Idempotency-Key` header, or a UUID) whose
    /// marker goes to [`DEFAULT_TABLE`].
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey { key: key.into(), table: Cow::Borrowed(DEFAULT_TABLE) }
    }

    /// Puts the marker in another table (optionally schema-qualified: `ops.batch_keys`),
    /// created with [`create_table_sql`](crate::idempotency::create_table_sql).
    #[must_use]
    pub fn table(mut self, table: impl Into<Cow<'static, str>>) -> Self {
        self.table = table.into();
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The marker table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The statement that writes the marker: the batch's statement 0.
    pub(crate) fn marker(&self) -> Result<Statement, BuildError> {
        let sql = format!("INSERT INTO {} (key) VALUES ($1)", quote_table(&self.table)?);
        Statement::render(&diesel::sql_query(sql).bind::<Text, _>(&self.key))
    }
}

/// The marker table's DDL, one statement each: the table, keyed by the key, and an index on
/// the commit time so that purging old markers reads the index only (CockroachDB services
/// that set `disallow_full_table_scans` can run it).
pub(crate) fn ddl(table: &str) -> Result<[String; 2], BuildError> {
    let name = table.rsplit('.').next().unwrap_or(table);
    let table = quote_table(table)?;
    Ok([
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n    key text PRIMARY KEY,\n    committed_at timestamptz NOT NULL DEFAULT now()\n)"
        ),
        format!("CREATE INDEX IF NOT EXISTS \"{name}_committed_at\" ON {table} (committed_at)"),
    ])
}

/// Deletes the markers older than `$1` seconds, through the commit-time index.
pub(crate) fn purge_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!("DELETE FROM {} WHERE committed_at < now() - $1 * INTERVAL '1 second'", quote_table(table)?))
}

/// Inserts the key's marker unless it is there, waiting for a transaction still writing
/// it: inserts a row exactly when the key had not committed. Run it in a transaction that
/// rolls back.
pub(crate) fn probe_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!("INSERT INTO {} (key) VALUES ($1) ON CONFLICT (key) DO NOTHING", quote_table(table)?))
}

/// When a key committed, as seconds since the Unix epoch (a plain `float8`, read the same
/// by every client).
pub(crate) fn lookup_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!(
        "SELECT EXTRACT(EPOCH FROM committed_at)::float8 AS committed_at FROM {} WHERE key = $1",
        quote_table(table)?
    ))
}

/// Quotes `name` or `schema.name`, accepting plain identifier characters only.
pub(crate) fn quote_table(table: &str) -> Result<String, BuildError> {
    let parts: Vec<&str> = table.split('.').collect();
    let valid = |part: &&str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !part.starts_with(|c: char| c.is_ascii_digit())
    };
    if parts.len() > 2 || !parts.iter().all(valid) {
        return Err(BuildError::InvalidSql { reason: "an idempotency table name must be `name` or `schema.name`" });
    }
    Ok(parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_statements_use_listed_constructs_only() {
        let [table, index] = ddl("ops.keys").unwrap();
        let marker = IdempotencyKey::new("k").table("ops.keys").marker().unwrap().sql.text.to_string();
        for sql in [
            table,
            index,
            marker,
            probe_sql("ops.keys").unwrap(),
            lookup_sql("ops.keys").unwrap(),
            purge_sql("ops.keys").unwrap(),
        ] {
            crate::codec::constructs::assert_allowed(&sql, &[]);
        }
    }

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(quote_table("ops.keys").unwrap(), "\"ops\".\"keys\"");
        assert!(quote_table("keys; DROP TABLE x").is_err());
        assert!(quote_table("a.b.c").is_err());
        assert!(quote_table("1abc").is_err());
    }
}

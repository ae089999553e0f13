//! Idempotency keys: run a batch at most once, and learn afterwards whether it committed.
//!
//! A batch with a key ([`Batch::idempotency_key`](crate::Batch::idempotency_key)) first
//! inserts a marker row for the key, in its own transaction. So the marker exists exactly
//! when the batch committed:
//!
//! - running the batch again finds the marker and applies nothing: the run fails with
//!   [`Error::AlreadyCommitted`], carrying when it
//!   committed. Concurrent duplicates wait on the first one's marker and commit at most once.
//! - after [`Error::OutcomeUnknown`], [`resolve`] tells
//!   whether the batch committed.
//!
//! The marker table's DDL is [`create_table_sql`]; run it once with [`install`], or put it
//! in a Diesel migration's `up.sql`. Old markers are removed with [`purge_older_than`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use diesel::sql_types::{Double, Text};

use crate::batch::Batch;
use crate::error::{BuildError, Error};
use crate::pool::Acquire;
use crate::statement::Statement;

/// The marker table's default name.
pub const DEFAULT_TABLE: &str = "pgbatch_idempotency";

/// An idempotency key and the table its marker goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub(crate) key: String,
    pub(crate) table: Cow<'static, str>,
}

impl IdempotencyKey {
    /// A key (for example an API request's `Idempotency-Key` header, or a UUID) whose
    /// marker goes to [`DEFAULT_TABLE`].
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey { key: key.into(), table: Cow::Borrowed(DEFAULT_TABLE) }
    }

    /// Puts the marker in another table (optionally schema-qualified: `ops.batch_keys`),
    /// created with [`create_table_sql`].
    #[must_use]
    pub fn table(mut self, table: impl Into<Cow<'static, str>>) -> Self {
        self.table = table.into();
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The statement that writes the marker.
    pub(crate) fn marker(&self) -> Result<Statement, BuildError> {
        let sql = format!("INSERT INTO {} (key) VALUES ($1)", quote_table(&self.table)?);
        Statement::render(&diesel::sql_query(sql).bind::<Text, _>(&self.key))
    }
}

/// The batch with this key committed earlier; this run applied nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch with idempotency key {key:?} already committed{}", committed_at.map(|_| "").unwrap_or(" (its marker has just been purged)"))]
pub struct AlreadyCommitted {
    pub(crate) key: String,
    pub(crate) committed_at: Option<SystemTime>,
}

impl AlreadyCommitted {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// When the earlier run committed, by the server's clock. `None` only when the marker
    /// was purged between the conflict and the lookup.
    pub fn committed_at(&self) -> Option<SystemTime> {
        self.committed_at
    }
}

/// Whether the batch with a given key committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// It committed, at this time by the server's clock.
    Committed {
        /// The commit time.
        at: SystemTime,
    },
    /// It did not commit (or its marker was purged).
    NotCommitted,
}

/// The DDL of a marker table named `table`.
///
/// # Errors
///
/// [`BuildError::InvalidSql`] when the name is not `name` or `schema.name` of plain
/// identifier characters.
pub fn create_table_sql(table: &str) -> Result<String, BuildError> {
    let table = quote_table(table)?;
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    key text PRIMARY KEY,\n    committed_at timestamptz NOT NULL DEFAULT now()\n)"
    ))
}

/// Creates the marker table `table` if it does not exist.
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run), and [`Error::Invalid`] for a bad name.
pub async fn install<A: Acquire>(target: A, table: &str) -> Result<(), Error> {
    let mut batch = Batch::new();
    batch.push(diesel::sql_query(create_table_sql(table).map_err(invalid)?));
    batch.run(target).await.map(drop)
}

/// Tells whether the batch with `key` committed: run it on a fresh connection after
/// [`Error::OutcomeUnknown`].
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run); it may itself end in `OutcomeUnknown`, which
/// for this read-only query just means "ask again".
pub async fn resolve<A: Acquire>(target: A, key: &IdempotencyKey) -> Result<Resolution, Error> {
    let sql = marker_lookup_sql(&key.table).map_err(invalid)?;
    let mut batch = Batch::new();
    let found = batch.push(diesel::sql_query(sql).bind::<Text, _>(&key.key)).optional::<CommittedAt>();
    let committed = batch.run(target).await?;
    Ok(match committed.get(&found).expect("the marker query returns at most one row of one float") {
        Some(CommittedAt { committed_at }) => Resolution::Committed { at: epoch_seconds(committed_at) },
        None => Resolution::NotCommitted,
    })
}

/// Deletes the markers in `table` older than `age`; returns how many. Keys older than that
/// can no longer be recognised, so keep `age` longer than any client retries.
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run).
pub async fn purge_older_than<A: Acquire>(target: A, table: &str, age: Duration) -> Result<u64, Error> {
    let sql = format!(
        "DELETE FROM {} WHERE committed_at < now() - make_interval(secs => $1)",
        quote_table(table).map_err(invalid)?
    );
    let mut batch = Batch::new();
    let deleted = batch.push(diesel::sql_query(sql).bind::<Double, _>(age.as_secs_f64())).affected();
    let committed = batch.run(target).await?;
    Ok(committed.get(&deleted).expect("a row count"))
}

/// When the batch with a key committed, if it did: the lookup behind
/// [`Error::AlreadyCommitted`], on the connection that met the conflict. A plain query, not
/// a batch, so that a batch's error path does not run batches.
pub(crate) async fn committed_at(
    connection: &crate::Connection,
    key: &IdempotencyKey,
) -> Result<Option<SystemTime>, tokio_postgres::Error> {
    // The marker was just written through this table name, so it is valid.
    let Ok(sql) = marker_lookup_sql(&key.table) else { return Ok(None) };
    let rows = connection.client().query_typed(&sql, &[(&key.key, tokio_postgres::types::Type::TEXT)]).await?;
    Ok(rows.first().map(|row| epoch_seconds(row.get(0))))
}

/// When a key committed, as seconds since the Unix epoch (so that both readers, Diesel and
/// tokio-postgres, decode a plain `float8`).
fn marker_lookup_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!(
        "SELECT EXTRACT(EPOCH FROM committed_at)::float8 AS committed_at FROM {} WHERE key = $1",
        quote_table(table)?
    ))
}

fn epoch_seconds(seconds: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds)
}

#[derive(diesel::QueryableByName)]
struct CommittedAt {
    #[diesel(sql_type = Double)]
    committed_at: f64,
}

fn invalid(source: BuildError) -> Error {
    Error::Invalid { statement: None, source: std::sync::Arc::new(source) }
}

/// Quotes `name` or `schema.name`, accepting plain identifier characters only.
fn quote_table(table: &str) -> Result<String, BuildError> {
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
    fn table_names_are_checked_and_quoted() {
        assert_eq!(quote_table("ops.keys").unwrap(), "\"ops\".\"keys\"");
        assert!(quote_table("keys; DROP TABLE x").is_err());
        assert!(quote_table("a.b.c").is_err());
        assert!(quote_table("1abc").is_err());
        assert!(create_table_sql(DEFAULT_TABLE).unwrap().contains("key text PRIMARY KEY"));
    }
}

//! Idempotency keys as a batch carries them: the key, its marker table, and the statements
//! that write, fence and read the marker. Running batches to install, resolve or purge
//! markers is the [`idempotency`](crate::idempotency) extension's business.
//!
//! A marker row is either a *commit* (`fence IS NULL`: the batch with the key committed) or
//! a *fence* (`fence` holds a token: a resolution found the key not committed and wrote the
//! row, so that a run still on its way, whose marker insert would collide, can never
//! commit). A replay that the resolution allowed carries its token and turns the fence into
//! a commit; nothing else can.

use std::borrow::Cow;

use std::time::{Duration, SystemTime};

use diesel::sql_types::{Double, Nullable, Text};

use crate::codec::Statement;
use crate::error::BuildError;

/// The marker table's default name.
pub const DEFAULT_TABLE: &str = "pgbatch_idempotency";

/// What a replay's marker statement raises when its fence is gone (another resolution
/// fenced the key again, or a replay already committed it): read as a collision.
const FENCE_LOST: &str = "pgbatch fence lost";

/// An idempotency key and the table its marker goes to.
///
/// A batch with a key ([`Batch::idempotency_key`](crate::Batch::idempotency_key)) writes
/// a marker row for the key as its first statement, inside its own transaction: the marker
/// exists exactly when the batch committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    table: Cow<'static, str>,
    /// The fence token of the resolution that allowed this replay.
    fence: Option<String>,
}

impl IdempotencyKey {
    /// A key (for example an API request's `Idempotency-Key` header, or a UUID) whose
    /// marker goes to [`DEFAULT_TABLE`].
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey { key: key.into(), table: Cow::Borrowed(DEFAULT_TABLE), fence: None }
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

    /// Whether this key carries a resolution's permission to replay a fenced key.
    pub fn is_replay(&self) -> bool {
        self.fence.is_some()
    }

    /// The same key, allowed to replay over the fence `token`.
    pub(crate) fn replaying(&self, token: String) -> Self {
        IdempotencyKey { fence: Some(token), ..self.clone() }
    }

    /// The statement that writes the marker: the batch's statement 0. A plain run inserts
    /// it, and collides with any marker (commit or fence) already there; a replay turns its
    /// own fence into a commit, and fails with [`FENCE_LOST`] when that fence is gone.
    pub(crate) fn marker(&self) -> Result<Statement, BuildError> {
        let table = quote_table(&self.table)?;
        match &self.fence {
            None => {
                let sql = format!("INSERT INTO {table} (key) VALUES ($1)");
                Statement::render(&diesel::sql_query(sql).bind::<Text, _>(&self.key))
            }
            Some(token) => {
                let sql = format!(
                    "WITH reclaimed AS (UPDATE {table} SET committed_at = now(), fence = NULL \
                     WHERE key = $1 AND fence = $2 RETURNING key) \
                     SELECT CAST(CASE WHEN count(*) = 1 THEN 'true' ELSE '{FENCE_LOST}' END AS BOOL) FROM reclaimed"
                );
                Statement::render(&diesel::sql_query(sql).bind::<Text, _>(&self.key).bind::<Text, _>(token))
            }
        }
    }
}

/// A key's state once it is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Marker {
    /// The batch with the key committed, at this time.
    Committed(SystemTime),
    /// It had not committed, and now never will: the key is fenced with this token, which a
    /// replay must carry.
    Fenced(String),
}

/// The marker lookup's columns.
#[derive(Debug, diesel::QueryableByName)]
pub(crate) struct MarkerRow {
    #[diesel(sql_type = Double)]
    committed_at: f64,
    #[diesel(sql_type = Nullable<Text>)]
    fence: Option<String>,
}

impl MarkerRow {
    /// When the marker was written: the commit time, or the fence's.
    pub(crate) fn committed_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(self.committed_at)
    }

    /// A marker row as the lookup would read it.
    #[cfg(test)]
    pub(crate) fn for_tests(committed_at: f64, fence: Option<&str>) -> Self {
        MarkerRow { committed_at, fence: fence.map(str::to_owned) }
    }

    /// Whether the marker is a fence, not a commit.
    pub(crate) fn is_fence(&self) -> bool {
        self.fence.is_some()
    }
}

/// Whether a marker statement's error says that the key is taken: a collision with a commit
/// or a fence, or a replay whose fence is gone.
pub(crate) fn key_taken(error: &crate::error::ServerError) -> bool {
    *error.code() == crate::error::SqlState::UNIQUE_VIOLATION || error.message().contains(FENCE_LOST)
}

/// The marker table's DDL, one statement each: the table, keyed by the key, and an index on
/// the commit time so that purging old markers reads the index only (CockroachDB services
/// that set `disallow_full_table_scans` can run it). The last statement adds the `fence`
/// column to a table made before fences existed.
pub(crate) fn ddl(table: &str) -> Result<[String; 3], BuildError> {
    let name = table.rsplit('.').next().unwrap_or(table);
    let table = quote_table(table)?;
    Ok([
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n    key text PRIMARY KEY,\n    committed_at timestamptz NOT NULL DEFAULT now(),\n    fence text\n)"
        ),
        format!("CREATE INDEX IF NOT EXISTS \"{name}_committed_at\" ON {table} (committed_at)"),
        format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS fence text"),
    ])
}

/// Deletes the markers older than `$1` seconds, through the commit-time index.
pub(crate) fn purge_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!("DELETE FROM {} WHERE committed_at < now() - $1 * INTERVAL '1 second'", quote_table(table)?))
}

/// Fences the key unless it committed: inserts a fence with a fresh token, or replaces the
/// token of a fence already there, and returns the new token; returns no row when the key
/// committed. Waits for a transaction still writing the key. Run it in a transaction that
/// commits: the fence is what keeps a late run from committing afterwards.
pub(crate) fn fence_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!(
        "INSERT INTO {} AS marker (key, fence) VALUES ($1, CAST(gen_random_uuid() AS text)) \
         ON CONFLICT (key) DO UPDATE SET fence = EXCLUDED.fence, committed_at = now() \
         WHERE marker.fence IS NOT NULL RETURNING marker.fence",
        quote_table(table)?
    ))
}

/// The key's marker: when it was written, as seconds since the Unix epoch (a plain
/// `float8`, read the same by every client), and its fence token (`NULL` for a commit).
pub(crate) fn lookup_sql(table: &str) -> Result<String, BuildError> {
    Ok(format!(
        "SELECT EXTRACT(EPOCH FROM committed_at)::float8 AS committed_at, fence FROM {} WHERE key = $1",
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
        let [table, index, fence_column] = ddl("ops.keys").unwrap();
        let key = IdempotencyKey::new("k").table("ops.keys");
        let marker = key.marker().unwrap().sql.text.to_string();
        let replay = key.replaying("token".into()).marker().unwrap().sql.text.to_string();
        for sql in [
            table,
            index,
            fence_column,
            marker,
            replay,
            fence_sql("ops.keys").unwrap(),
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

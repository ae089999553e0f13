//! Idempotency keys: run a batch at most once, and learn afterwards whether it committed.
//!
//! A batch with a key ([`Batch::idempotency_key`](crate::Batch::idempotency_key)) first
//! inserts a marker row for the key, in its own transaction. So the marker exists exactly
//! when the batch committed:
//!
//! - running the batch again finds the marker and applies nothing: the run fails with
//!   [`Error::AlreadyCommitted`], carrying when it
//!   committed. Concurrent duplicates wait on the first one's marker and commit at most once.
//! - after [`Error::OutcomeUnknown`], [`resolve`] tells whether the batch committed. A batch
//!   run on a pool does this by itself: it resolves its key on another connection and, when
//!   the lost run did not commit, replays it (see [`Batch::run`](crate::Batch::run)).
//!
//! The marker table's DDL is [`create_table_sql`]; run it once with [`install`], or put it
//! in a Diesel migration's `up.sql`. Old markers are removed with [`purge_older_than`].

use std::time::{Duration, SystemTime};

pub use crate::error::AlreadyCommitted;
use crate::error::{BuildError, Error};
use crate::plan::Marker;
pub use crate::plan::{DEFAULT_TABLE, IdempotencyKey};
use crate::plan::{ddl, purge_sql};
use crate::pool::Acquire;
use crate::run::{fence_or_read, maintenance};

/// Whether the batch with a given key committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolution {
    /// It committed, at this time by the server's clock.
    Committed {
        /// The commit time.
        at: SystemTime,
    },
    /// It did not commit, and now never will: the key is *fenced*, so a run of it still on
    /// its way (its bytes held by a proxy or a stalled network path) fails when it
    /// arrives. To run the batch again, give it the key in `replay`
    /// ([`Batch::idempotency_key`](crate::Batch::idempotency_key)): only that key can turn
    /// the fence into a commit, once. A run with the plain key fails with
    /// [`Error::KeyFenced`].
    NotCommitted {
        /// The key to replay the batch with.
        replay: IdempotencyKey,
    },
}

/// The DDL of a marker table named `table`, for a migration: the table, keyed by the key,
/// and an index on its commit time (so that [`purge_older_than`] reads the index only).
///
/// # Errors
///
/// [`BuildError::InvalidSql`] when the name is not `name` or `schema.name` of plain
/// identifier characters.
pub fn create_table_sql(table: &str) -> Result<String, BuildError> {
    Ok(ddl(table)?.join(";\n") + ";")
}

/// Creates the marker table `table` and its index if they do not exist.
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run), and [`Error::Invalid`] for a bad name.
pub async fn install<A: Acquire>(target: A, table: &str) -> Result<(), Error> {
    maintenance::run_ddl(target, ddl(table).map_err(invalid)?).await
}

/// Tells whether the batch with `key` committed: run it on a fresh connection after
/// [`Error::OutcomeUnknown`].
///
/// The answer is final. The key's marker is the batch's first statement, so a batch the
/// server has started to run holds the marker's lock until it ends, and `resolve` waits
/// for it. And when the key has not committed, `resolve` commits a *fence* in the marker's
/// place before it answers: a run whose bytes had not reached the server yet (a connection
/// that stalled rather than closed, a proxy or PgBouncer still holding them) collides with
/// the fence when it arrives, and rolls back. So "not committed" can never be overturned;
/// [`Resolution::NotCommitted`] carries the key a replay must use.
///
/// Resolving a fenced key again fences it anew: a replay made with the earlier answer's key
/// then fails with [`Error::KeyFenced`], as a late copy of it would.
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run); it may itself end in `OutcomeUnknown`, which
/// just means "ask again".
pub async fn resolve<A: Acquire>(target: A, key: &IdempotencyKey) -> Result<Resolution, Error> {
    let mut connection = target.acquire().await.map_err(Error::Pool)?;
    Ok(match fence_or_read(&mut connection, key).await? {
        Marker::Committed(at) => Resolution::Committed { at },
        Marker::Fenced(token) => Resolution::NotCommitted { replay: key.replaying(token) },
    })
}

/// Deletes the markers in `table` older than `age`; returns how many. Keys older than that
/// can no longer be recognised, so keep `age` longer than any client retries.
///
/// # Errors
///
/// As for [`Batch::run`](crate::Batch::run).
pub async fn purge_older_than<A: Acquire>(target: A, table: &str, age: Duration) -> Result<u64, Error> {
    maintenance::delete_older_than(target, purge_sql(table).map_err(invalid)?, age).await
}

fn invalid(source: BuildError) -> Error {
    Error::invalid(None, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With sequential scans disabled (as CockroachDB's `disallow_full_table_scans` would
    /// refuse them), every statement pgbatch runs on the marker table plans an index scan.
    #[tokio::test]
    async fn marker_statements_read_indexes_only() {
        let db = pgbatch_testing::TestDatabase::create().await.expect("a test database");
        let mut connection = crate::Connection::connect_with(db.config()).await.unwrap();
        install(&mut connection, "ops_keys").await.unwrap();
        db.execute(
            "INSERT INTO ops_keys (key, committed_at) \
             SELECT 'k' || g, now() - g * interval '1 second' FROM generate_series(1, 10000) g; ANALYZE ops_keys",
        )
        .await
        .unwrap();
        let client = db.connect().await.unwrap();
        client.batch_execute("SET enable_seqscan = off").await.unwrap();
        let statements = [
            (purge_sql("ops_keys").unwrap(), "3600"),
            (crate::plan::lookup_sql("ops_keys").unwrap(), "'k42'"),
            (crate::plan::fence_sql("ops_keys").unwrap(), "'k42'"),
        ];
        for (index, (sql, argument)) in statements.iter().enumerate() {
            client.batch_execute(&format!("PREPARE p{index} AS {sql}")).await.unwrap();
            let plan: Vec<String> = client
                .simple_query(&format!("EXPLAIN EXECUTE p{index}({argument})"))
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("Seq Scan"), "{sql}\n{plan}");
            assert!(plan.contains("Index") || plan.contains("Insert"), "{sql}\n{plan}");
        }
    }

    #[test]
    fn the_marker_table_has_a_primary_key() {
        let ddl = create_table_sql(DEFAULT_TABLE).unwrap();
        assert!(ddl.contains("key text PRIMARY KEY") && ddl.contains("(committed_at)"), "{ddl}");
        assert!(ddl.contains("fence text"), "{ddl}");
        assert!(create_table_sql("keys; DROP TABLE x").is_err());
    }
}

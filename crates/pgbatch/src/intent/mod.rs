//! Intents: keeping effects outside the database (an upload to an object store, a call to
//! another service) consistent with the rows that describe them.
//!
//! No transaction spans a database and an object store. The intent protocol makes the pair
//! safe anyway:
//!
//! 1. **record** the intent (kind, key, payload) in a batch, with whatever the request writes
//!    up front ([`Intents::record`] is a [`Fragment`]);
//! 2. **do** the effect, idempotently (a deterministic object key: doing it twice is doing it
//!    once);
//! 3. **complete** the intent in a batch together with the rows the effect implies
//!    ([`Intents::complete`] is a fragment guarded on the intent still being pending, so the
//!    rows are written once however often completion runs).
//!
//! A crash between the steps leaves a pending intent. A recovery [`sweep`](Intents::sweep)
//! finds intents pending for longer than a threshold, claims them so that concurrent sweeps
//! never handle the same one, and asks user code to decide: roll forward (the effect
//! happened: complete it) or compensate (undo what may have happened, and cancel it). Until
//! an intent completes, what it describes is not visible to users (a file is visible only
//! through its committed row), so partial state exists but is never observed. See
//! `docs/external-effects.md`.
//!
//! ```no_run
//! # use pgbatch::intent::Intents;
//! # async fn example(pool: &pgbatch::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! let intents = Intents::new();
//! intents.install(pool).await?;
//! let mut batch = pgbatch::Batch::<pgbatch::intent::IntentError>::default();
//! let (record, _recorded) = intents.record("upload", "uploads/42", r#"{"bytes": 1024}"#);
//! batch.append(record);
//! batch.run(pool).await?;
//! // ... upload to the object store ...
//! let mut batch = pgbatch::Batch::<pgbatch::intent::IntentError>::default();
//! batch.append(intents.complete("upload", "uploads/42"));
//! // batch.push(insert the file row); batch.push(bill the customer);
//! batch.run(pool).await?;
//! # Ok(()) }
//! ```

mod sql;
mod sweep;

use std::time::{Duration, SystemTime};

use diesel::sql_types::Text;
use uuid::Uuid;

use crate::error::{BuildError, Cause, Error, SqlState, StatementFailure};
use crate::plan::{Fragment, One};
use crate::pool::Acquire;
use crate::run::maintenance;
use sql::{Finish, IntentSql};
pub use sweep::{Decision, SweepOptions, SweepReport};

/// The intent table's default name.
pub const DEFAULT_TABLE: &str = "pgbatch_intent";

/// Why an intent statement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    /// An intent of this kind and key was already recorded (a request replayed): look it
    /// up, or complete it.
    #[error("an intent {kind}/{key} is already recorded")]
    Duplicate {
        /// The intent's kind.
        kind: String,
        /// Its key.
        key: String,
    },
    /// The payload is not valid JSON.
    #[error("the intent's payload is not valid JSON")]
    InvalidPayload,
    /// No intent of this kind and key exists (never recorded, or purged).
    #[error("no intent {kind}/{key}")]
    NotFound {
        /// The intent's kind.
        kind: String,
        /// Its key.
        key: String,
    },
    /// The intent was completed already: this completion applied nothing, the first one's
    /// changes stand.
    #[error("the intent {kind}/{key} was already completed")]
    AlreadyCompleted {
        /// The intent's kind.
        kind: String,
        /// Its key.
        key: String,
    },
    /// The intent was cancelled (a recovery sweep compensated it): it cannot complete.
    #[error("the intent {kind}/{key} was cancelled")]
    Cancelled {
        /// The intent's kind.
        kind: String,
        /// Its key.
        key: String,
    },
}

/// Lets fragments that map no failures join a batch whose domain error is [`IntentError`].
impl From<std::convert::Infallible> for IntentError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A pending intent, as a recovery sweep hands it over.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Intent {
    /// Its id.
    pub id: Uuid,
    /// What kind of effect it describes (`"upload"`).
    pub kind: String,
    /// Its key, unique within its kind (an object key).
    pub key: String,
    /// Its payload, as JSON text.
    pub payload: String,
    /// How many sweeps have claimed it, this one included.
    pub attempts: i32,
    /// When it was recorded, by the server's clock.
    pub created_at: SystemTime,
}

/// The intents of one table.
#[derive(Debug, Clone)]
pub struct Intents {
    sql: IntentSql,
}

impl Default for Intents {
    fn default() -> Self {
        Intents { sql: IntentSql::new(DEFAULT_TABLE).expect("the default name is valid") }
    }
}

impl Intents {
    /// The intents of [`DEFAULT_TABLE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The intents of another table (optionally schema-qualified: `ops.intents`).
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidSql`] when the name is not `name` or `schema.name` of plain
    /// identifier characters.
    pub fn in_table(table: &str) -> Result<Self, BuildError> {
        Ok(Intents { sql: IntentSql::new(table)? })
    }

    /// The table's DDL, for a migration: the table, unique on `(kind, key)`, and partial
    /// indexes on pending and on finished intents (sweeps and purges read those only).
    pub fn create_table_sql(&self) -> String {
        self.sql.ddl().join(";\n") + ";"
    }

    /// Creates the table and its indexes if they do not exist.
    ///
    /// # Errors
    ///
    /// As for [`Batch::run`](crate::Batch::run).
    pub async fn install<A: Acquire>(&self, target: A) -> Result<(), Error> {
        maintenance::run_ddl(target, self.sql.ddl()).await
    }

    /// Records an intent, pending: a fragment to append to the batch of the request that
    /// is about to do the effect. The handle reads the new intent's id.
    ///
    /// `payload` is JSON text, stored as `jsonb`: what a sweep needs to decide (sizes,
    /// owners). The fragment fails with [`IntentError::Duplicate`] when the kind and key
    /// were recorded already, [`IntentError::InvalidPayload`] for bad JSON.
    pub fn record(&self, kind: &str, key: &str, payload: &str) -> (Fragment<IntentError>, One<Recorded>) {
        let mut fragment = Fragment::new();
        let id = fragment
            .push(
                diesel::sql_query(self.sql.record())
                    .bind::<Text, _>(kind)
                    .bind::<Text, _>(key)
                    .bind::<Text, _>(payload),
            )
            .label("record intent")
            .one::<Recorded>();
        let unique = self.sql.unique_constraint();
        let (kind, key) = (kind.to_owned(), key.to_owned());
        let fragment = fragment.map_failure(move |failure| match failure.cause() {
            Cause::UniqueViolation(v) if v.constraint() == Some(unique.as_str()) => {
                Some(IntentError::Duplicate { kind: kind.clone(), key: key.clone() })
            }
            Cause::Server(e) if *e.code() == SqlState::INVALID_TEXT_REPRESENTATION => Some(IntentError::InvalidPayload),
            _ => None,
        });
        (fragment, id)
    }

    /// Completes a pending intent: a fragment to append to the batch that writes the rows
    /// the effect implies, so that they are written exactly once. Completing an intent
    /// that is done already applies nothing and fails with
    /// [`IntentError::AlreadyCompleted`]; a cancelled one fails with
    /// [`IntentError::Cancelled`], an unknown one with [`IntentError::NotFound`].
    pub fn complete(&self, kind: &str, key: &str) -> Fragment<IntentError> {
        self.finish(kind, key, Finish::Done)
    }

    /// Cancels a pending intent (its effect was undone, or never happened): a fragment.
    /// Fails as [`complete`](Self::complete) does.
    pub fn cancel(&self, kind: &str, key: &str) -> Fragment<IntentError> {
        self.finish(kind, key, Finish::Cancelled)
    }

    fn finish(&self, kind: &str, key: &str, finish: Finish) -> Fragment<IntentError> {
        let bound = |statement: String| {
            diesel::sql_query(statement).bind::<Text, _>(kind.to_owned()).bind::<Text, _>(key.to_owned())
        };
        let mut fragment = Fragment::new();
        fragment.guard_exists(bound(self.sql.exists())).label(labels::EXISTS);
        fragment.guard_not_exists(bound(self.sql.cancelled())).label(labels::NOT_CANCELLED);
        fragment.push(bound(self.sql.finish(finish))).label(labels::PENDING).expect_rows(1);
        let (kind, key) = (kind.to_owned(), key.to_owned());
        fragment.map_failure(move |failure| map_finish(failure, &kind, &key))
    }

    /// Deletes the done and cancelled intents older than `age`; returns how many.
    ///
    /// # Errors
    ///
    /// As for [`Batch::run`](crate::Batch::run).
    pub async fn purge_older_than<A: Acquire>(&self, target: A, age: Duration) -> Result<u64, Error> {
        maintenance::delete_older_than(target, self.sql.purge(), age).await
    }
}

/// The labels of a completion's statements, whose failures map to [`IntentError`].
pub mod labels {
    /// The guard that the intent exists.
    pub const EXISTS: &str = "intent exists";
    /// The guard that the intent was not cancelled.
    pub const NOT_CANCELLED: &str = "intent not cancelled";
    /// The update that finishes a pending intent, guarded to touch exactly one row.
    pub const PENDING: &str = "intent pending";
}

fn map_finish(failure: &StatementFailure, kind: &str, key: &str) -> Option<IntentError> {
    let Cause::GuardFailed(guard) = failure.cause() else { return None };
    let (kind, key) = (kind.to_owned(), key.to_owned());
    match guard.label()? {
        labels::EXISTS => Some(IntentError::NotFound { kind, key }),
        labels::NOT_CANCELLED => Some(IntentError::Cancelled { kind, key }),
        labels::PENDING => Some(IntentError::AlreadyCompleted { kind, key }),
        _ => None,
    }
}

/// What recording an intent returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel::QueryableByName)]
#[non_exhaustive]
pub struct Recorded {
    /// The new intent's id.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
}

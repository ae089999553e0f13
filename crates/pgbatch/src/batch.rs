//! The batch: statements that commit together, in one round trip.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use diesel::expression::Expression;
use diesel::pg::Pg;
use diesel::query_builder::{Query, QueryFragment};
use diesel::sql_types::BoolOrNullableBool;
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{BuildError, CommitFailure, Error, OutcomeUnknown, StatementFailure};
use crate::fragment::{Fragment, GuardBuilder, StatementBuilder};
use crate::guard;
use crate::idempotency::{self, AlreadyCommitted, IdempotencyKey};
use crate::options::{IsolationLevel, TransactionOptions};
use crate::pipeline::{self, End, PipelineError, StepOutput};
use crate::pool::Acquire;
use crate::results::Committed;
use crate::retry::RetryPolicy;
use crate::statement::Statement;
use crate::two_phase::Prepared;
use crate::{Cause, Connection};

/// Statements that commit together or not at all, sent to PostgreSQL in one round trip.
///
/// Build it with [`push`](Batch::push) (Diesel statements), guards and
/// [`append`](Batch::append) (fragments from other modules), then [`run`](Batch::run) it on
/// a connection or a pool. A batch is a value: running it does not consume it, so the same
/// statements can be replayed.
///
/// `E` is the domain error of the fragments it holds (see [`Fragment`]); `Batch::new()`
/// makes a batch without one.
///
/// ```no_run
/// # use diesel::prelude::*;
/// # diesel::table! { project (id) { id -> Int8, name -> Text } }
/// # async fn example(pool: &bb8::Pool<pgbatch::ConnectionManager>) -> Result<(), Box<dyn std::error::Error>> {
/// let mut batch = pgbatch::Batch::new();
/// let id = batch
///     .push(diesel::insert_into(project::table).values(project::name.eq("apollo")).returning(project::id))
///     .label("insert project")
///     .one::<i64>();
/// batch.push(diesel::update(project::table.find(0)).set(project::name.eq("zero"))).expect_rows(1);
/// let committed = batch.run(pool).await?;
/// println!("created project {}", committed.get(&id)?);
/// # Ok(()) }
/// ```
pub struct Batch<E = Infallible> {
    body: Fragment<E>,
    options: TransactionOptions,
    retry: Option<RetryPolicy>,
    key: Option<IdempotencyKey>,
    /// The key's marker statement, rendered on first use.
    marker: OnceLock<Result<Statement, Arc<BuildError>>>,
}

impl Batch<Infallible> {
    /// An empty batch without a domain error type. Use `Batch::<E>::default()` for a batch
    /// whose fragments map failures to `E`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<E> Default for Batch<E> {
    fn default() -> Self {
        Batch {
            body: Fragment::new(),
            options: TransactionOptions::default(),
            retry: None,
            key: None,
            marker: OnceLock::new(),
        }
    }
}

impl<E> Batch<E> {
    /// Adds a Diesel statement; see [`Fragment::push`].
    pub fn push<Q>(&mut self, query: Q) -> StatementBuilder<'_, Q>
    where
        Q: QueryFragment<Pg>,
    {
        self.body.push(query)
    }

    /// Adds a guard that `query` returns a row; see [`Fragment::guard_exists`].
    pub fn guard_exists<Q>(&mut self, query: Q) -> GuardBuilder<'_>
    where
        Q: Query + QueryFragment<Pg>,
    {
        self.body.guard_exists(query)
    }

    /// Adds a guard that `query` returns no row; see [`Fragment::guard_not_exists`].
    pub fn guard_not_exists<Q>(&mut self, query: Q) -> GuardBuilder<'_>
    where
        Q: Query + QueryFragment<Pg>,
    {
        self.body.guard_not_exists(query)
    }

    /// Adds a guard on a boolean expression; see [`Fragment::guard`].
    pub fn guard<X>(&mut self, condition: X) -> GuardBuilder<'_>
    where
        X: Expression,
        X::SqlType: BoolOrNullableBool,
        diesel::helper_types::select<X>: diesel::query_builder::AsQuery + QueryFragment<Pg>,
    {
        self.body.guard(condition)
    }

    /// Appends a fragment; see [`Fragment::append`].
    pub fn append<F>(&mut self, fragment: Fragment<F>)
    where
        F: Into<E> + 'static,
    {
        self.body.append(fragment);
    }

    /// Runs the batch at this isolation level instead of the server's default.
    pub fn isolation(&mut self, level: IsolationLevel) -> &mut Self {
        self.options.isolation = Some(level);
        self
    }

    /// Runs the batch as a read-only transaction: any write fails it.
    pub fn read_only(&mut self) -> &mut Self {
        self.options.read_only = true;
        self
    }

    /// Makes a serializable read-only batch deferrable: it may wait for a safe snapshot,
    /// then cannot fail with a serialization failure.
    pub fn deferrable(&mut self) -> &mut Self {
        self.options.deferrable = true;
        self
    }

    /// Replays the batch after serialization failures and deadlocks as `policy` says,
    /// instead of as its connection's pool says (see [`RetryPolicy`]).
    pub fn retry(&mut self, policy: RetryPolicy) -> &mut Self {
        self.retry = Some(policy);
        self
    }

    /// Makes the batch run at most once per key: it writes a marker row for the key in its
    /// own transaction, and a batch whose key already committed applies nothing and fails
    /// with [`Error::AlreadyCommitted`]. See [`idempotency`](crate::idempotency), whose
    /// marker table must exist.
    pub fn idempotency_key(&mut self, key: IdempotencyKey) -> &mut Self {
        self.key = Some(key);
        self.marker = OnceLock::new();
        self
    }

    /// The batch's idempotency key, if it has one.
    pub fn idempotency(&self) -> Option<&IdempotencyKey> {
        self.key.as_ref()
    }

    /// How many statements the batch holds, guards included.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the batch holds no statement.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Runs the batch: `BEGIN`, every statement and `COMMIT`, in one round trip.
    ///
    /// Nothing is sent until the returned future is first polled. Once the batch starts
    /// sending, it sends all of it in one go: dropping the future afterwards still lets the
    /// whole transaction run (or roll back) on the server, and the connection goes back to
    /// its pool outside any transaction. The one extra round trip is the first use of a
    /// custom type on a connection, which is looked up before anything is sent.
    ///
    /// A serialization failure or deadlock replays the batch on the same connection as
    /// its [`RetryPolicy`] allows; [`Committed::attempts`] and [`Error::attempts`] tell how
    /// many runs it took.
    ///
    /// # Errors
    ///
    /// Every [`Error`] variant says whether anything was committed; only
    /// [`Error::OutcomeUnknown`] leaves it open. Invalid statements fail with
    /// [`Error::Invalid`] before anything is sent; a statement or guard that fails on the
    /// server fails the whole batch with [`Error::Statement`] (or [`Error::Domain`] when a
    /// fragment maps it), naming the statement.
    pub async fn run<A: Acquire>(&self, target: A) -> Result<Committed, Error<E>> {
        let statements = self.statements()?;
        let span = tracing::debug_span!(
            "pgbatch.run",
            statements = self.len(),
            labels = %self.label_summary(),
            attempt = Empty,
            round_trip_ms = Empty,
            outcome = Empty,
        );
        async move {
            let mut connection = target.acquire().await.map_err(Error::Pool)?;
            let policy = self.retry.unwrap_or_else(|| connection.retry_policy());
            let begin = self.options.begin_sql();
            let mut attempt = 1;
            loop {
                let started = Instant::now();
                let result = pipeline::run(&mut connection, &begin, &statements, End::Commit).await;
                let span = tracing::Span::current();
                span.record("attempt", attempt);
                span.record("round_trip_ms", started.elapsed().as_secs_f64() * 1e3);
                let error = match result {
                    Ok(outputs) => {
                        span.record("outcome", "committed");
                        return Ok(self.committed(outputs, attempt));
                    }
                    Err(error) => self.error(error, attempt, &mut connection).await,
                };
                if !(error.is_transient() && attempt < policy.attempts()) {
                    span.record("outcome", tracing::field::display(error.log_summary()));
                    return Err(error);
                }
                let delay = policy.delay(attempt);
                tracing::info!(attempt, delay_ms = delay.as_secs_f64() * 1e3, cause = %error.log_summary(), "retrying batch");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
        .instrument(span)
        .await
    }

    /// Runs the statements in a first round trip and leaves the transaction open, so that
    /// the caller can inspect their results in Rust before deciding: then
    /// [`Prepared::commit`] or [`Prepared::rollback`] is the second round trip.
    ///
    /// Dropping the [`Prepared`] (or this future) without deciding rolls back: `ROLLBACK` is
    /// queued on the connection at once, so it never returns to a pool inside the
    /// transaction. Two-phase batches are not retried: a serialization failure at commit is
    /// returned as [`Error::Commit`], and the caller decides again.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run); a failure in the first round trip rolls back.
    pub async fn prepare<A: Acquire>(&self, target: A) -> Result<Prepared<'_, A::Lease, E>, Error<E>> {
        let statements = self.statements()?;
        let lease = target.acquire().await.map_err(Error::Pool)?;
        let mut prepared = Prepared::new(self, lease);
        let begin = self.options.begin_sql();
        match pipeline::run(prepared.connection(), &begin, &statements, End::Open).await {
            Ok(outputs) => {
                prepared.opened(self.committed(outputs, 1));
                Ok(prepared)
            }
            Err(error) => {
                prepared.abandon();
                Err(self.error(error, 1, prepared.connection()).await)
            }
        }
    }

    /// Every statement as sent: the idempotency marker first when there is a key, then
    /// the batch's own; or the first that could not be built.
    fn statements(&self) -> Result<Vec<&Statement>, Error<E>> {
        let mut statements = Vec::with_capacity(self.len() + 1);
        if let Some(key) = &self.key {
            statements.push(
                self.marker
                    .get_or_init(|| key.marker().map_err(Arc::new))
                    .as_ref()
                    .map_err(|source| Error::Invalid { statement: None, source: Arc::clone(source) })?,
            );
        }
        for (index, entry) in self.body.entries.iter().enumerate() {
            statements.push(entry.statement.as_ref().map_err(|source| Error::Invalid {
                statement: Some(self.body.statement_ref(index)),
                source: Arc::clone(source),
            })?);
        }
        Ok(statements)
    }

    /// The first labels, for logs.
    fn label_summary(&self) -> String {
        const SHOWN: usize = 8;
        let labels: Vec<&str> = self.body.entries.iter().filter_map(|e| e.label.as_deref()).take(SHOWN + 1).collect();
        let mut summary = labels.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
        if labels.len() > SHOWN {
            summary.push_str(", ...");
        }
        summary
    }

    fn committed(&self, mut outputs: Vec<StepOutput>, attempts: u32) -> Committed {
        if self.key.is_some() {
            outputs.remove(0); // the marker's
        }
        Committed {
            outputs,
            labels: self.body.entries.iter().map(|e| e.label.clone()).collect(),
            scopes: self.body.scopes.clone(),
            attempts,
        }
    }

    async fn error(&self, error: PipelineError, attempts: u32, connection: &mut Connection) -> Error<E> {
        let mut error = self.classify_error(error, attempts);
        if let (Error::AlreadyCommitted(already), Some(key)) = (&mut error, &self.key) {
            match idempotency::committed_at(connection, key).await {
                Ok(at) => already.committed_at = at,
                Err(lookup) => tracing::warn!(error = %lookup, "could not read when the idempotency key committed"),
            }
        }
        error
    }

    fn classify_error(&self, error: PipelineError, attempts: u32) -> Error<E> {
        let statement_count = self.body.len();
        // With a key, the marker is statement 0 of the pipeline.
        let offset = usize::from(self.key.is_some());
        let error = match (error, &self.key) {
            (PipelineError::Statement { index: 0, error }, Some(key)) => {
                let cause = Cause::from_db_error(&error);
                return match cause {
                    Cause::UniqueViolation(_) => {
                        Error::AlreadyCommitted(AlreadyCommitted { key: key.key.clone(), committed_at: None })
                    }
                    cause => Error::IdempotencyMarker { cause, attempts },
                };
            }
            (PipelineError::Statement { index, error }, _) => PipelineError::Statement { index: index - offset, error },
            (PipelineError::Send { index: 0, source }, Some(_)) => return Error::Connection(source),
            (PipelineError::Send { index, source }, _) => PipelineError::Send { index: index - offset, source },
            (error, _) => error,
        };
        match error {
            PipelineError::Build(source) => Error::Invalid { statement: None, source: Arc::new(source) },
            PipelineError::Connection(source) => Error::Connection(source),
            PipelineError::Closed => Error::ConnectionClosed,
            PipelineError::Statement { index, error } => {
                let entry = &self.body.entries[index];
                let guard_failure = entry
                    .guard
                    .as_ref()
                    .and_then(|guard| guard::failure_from(&error, guard.expectation, entry.label.as_deref()));
                let cause = guard_failure.map_or_else(|| Cause::from_db_error(&error), Cause::GuardFailed);
                let failure = Box::new(StatementFailure {
                    statement: self.body.statement_ref(index),
                    statement_count,
                    cause,
                    attempts,
                });
                match self.body.map(&failure) {
                    Some(domain) => Error::Domain { error: domain, failure },
                    None => Error::Statement(failure),
                }
            }
            PipelineError::Commit(error) => Error::Commit(Box::new(CommitFailure {
                statement_count,
                cause: Cause::from_db_error(&error),
                attempts,
            })),
            PipelineError::Unknown(source) => Error::OutcomeUnknown(Box::new(OutcomeUnknown {
                source,
                idempotency_key: self.key.as_ref().map(|k| k.key.clone()),
                attempts,
            })),
            PipelineError::Send { index, source } => Error::Send { statement: self.body.statement_ref(index), source },
        }
    }
}

impl<E> fmt::Debug for Batch<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").field("body", &self.body).field("options", &self.options).finish()
    }
}

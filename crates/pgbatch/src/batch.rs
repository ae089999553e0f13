//! The batch: statements that commit together, in one round trip.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use diesel::expression::Expression;
use diesel::pg::Pg;
use diesel::query_builder::{Query, QueryFragment};
use diesel::sql_types::BoolOrNullableBool;
use tracing::Instrument;

use crate::error::{CommitFailure, Error, OutcomeUnknown, StatementFailure};
use crate::fragment::{Fragment, GuardBuilder, StatementBuilder};
use crate::guard;
use crate::options::{IsolationLevel, TransactionOptions};
use crate::pipeline::{self, PipelineError, StepOutput};
use crate::pool::Acquire;
use crate::results::Committed;
use crate::statement::Statement;
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
        Batch { body: Fragment::new(), options: TransactionOptions::default() }
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
    /// # Errors
    ///
    /// Every [`Error`] variant says whether anything was committed; only
    /// [`Error::OutcomeUnknown`] leaves it open. Invalid statements fail with
    /// [`Error::Invalid`] before anything is sent; a statement or guard that fails on the
    /// server fails the whole batch with [`Error::Statement`] (or [`Error::Domain`] when a
    /// fragment maps it), naming the statement.
    pub async fn run<A: Acquire>(&self, target: A) -> Result<Committed, Error<E>> {
        let statements = self.statements()?;
        let span = tracing::debug_span!("pgbatch.run", statements = statements.len());
        async move {
            let mut connection = target.acquire().await.map_err(Error::Pool)?;
            let result = self.run_once(&mut connection, &statements).await;
            match &result {
                Ok(_) => tracing::debug!("committed"),
                Err(error) => tracing::debug!(error = %error.without_domain(), "failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn run_once(&self, connection: &mut Connection, statements: &[&Statement]) -> Result<Committed, Error<E>> {
        let begin = self.options.begin_sql();
        match pipeline::run(connection, &begin, statements).await {
            Ok(outputs) => Ok(self.committed(outputs, 1)),
            Err(error) => Err(self.error(error, 1)),
        }
    }

    /// Every statement, or the first that could not be built.
    fn statements(&self) -> Result<Vec<&Statement>, Error<E>> {
        self.body
            .entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                entry.statement.as_ref().map_err(|source| Error::Invalid {
                    statement: Some(self.body.statement_ref(index)),
                    source: Arc::clone(source),
                })
            })
            .collect()
    }

    fn committed(&self, outputs: Vec<StepOutput>, attempts: u32) -> Committed {
        Committed {
            outputs,
            labels: self.body.entries.iter().map(|e| e.label.clone()).collect(),
            scopes: self.body.scopes.clone(),
            attempts,
        }
    }

    fn error(&self, error: PipelineError, attempts: u32) -> Error<E> {
        let statement_count = self.body.len();
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
                let failure = Box::new(StatementFailure { statement: self.body.statement_ref(index), statement_count, cause, attempts });
                match self.body.map(&failure) {
                    Some(domain) => Error::Domain { error: domain, failure },
                    None => Error::Statement(failure),
                }
            }
            PipelineError::Commit(error) => {
                Error::Commit(Box::new(CommitFailure { statement_count, cause: Cause::from_db_error(&error), attempts }))
            }
            PipelineError::Unknown(source) => {
                Error::OutcomeUnknown(Box::new(OutcomeUnknown { source, idempotency_key: None, attempts }))
            }
            PipelineError::Send { index, source } => Error::Send { statement: self.body.statement_ref(index), source },
        }
    }
}

impl<E> fmt::Debug for Batch<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").field("body", &self.body).field("options", &self.options).finish()
    }
}

//! The batch: statements that commit together, in one round trip.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, OnceLock};

use diesel::expression::Expression;
use diesel::pg::Pg;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::sql_types::BoolOrNullableBool;

use crate::codec::Statement;
use crate::connection::End;
use crate::error::{BuildError, Error};
use crate::outcome::Verdict;
use crate::plan::{
    Fragment, GuardBuilder, IdempotencyKey, IsolationLevel, RetryPolicy, StatementBuilder, TransactionOptions,
};

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
/// # async fn example(pool: &pgbatch::Pool) -> Result<(), Box<dyn std::error::Error>> {
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
    marker: OnceLock<Result<Arc<Statement>, Arc<BuildError>>>,
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
        Q: QueryFragment<Pg> + QueryId,
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

    /// Every statement as sent: the idempotency marker first when there is a key, then
    /// the batch's own; or the first that could not be built.
    pub(crate) fn wire_statements(&self) -> Result<Vec<&Statement>, Error<E>> {
        self.collect_statements(|statement| &**statement)
    }

    /// [`wire_statements`](Self::wire_statements), shared: what a multiplexed
    /// connection's driver takes, a reference count per statement.
    pub(crate) fn shared_statements(&self) -> Result<Vec<Arc<Statement>>, Error<E>> {
        self.collect_statements(Arc::clone)
    }

    /// Every statement as sent, each as `as_sent` makes it, in one allocation.
    fn collect_statements<'a, T>(&'a self, as_sent: impl Fn(&'a Arc<Statement>) -> T) -> Result<Vec<T>, Error<E>> {
        let mut statements = Vec::with_capacity(self.len() + 1);
        if let Some(key) = &self.key {
            let marker = self.marker.get_or_init(|| key.marker().map(Arc::new).map_err(Arc::new));
            statements.push(as_sent(marker.as_ref().map_err(|source| Error::invalid(None, Arc::clone(source)))?));
        }
        for (index, entry) in self.body.entries.iter().enumerate() {
            let statement = entry
                .statement
                .as_ref()
                .map_err(|source| Error::invalid(Some(self.body.statement_ref(index)), Arc::clone(source)))?;
            statements.push(as_sent(statement));
        }
        Ok(statements)
    }

    /// How the batch's answers are judged, for attempt `attempts`.
    pub(crate) fn verdict(&self, end: End, attempts: u32) -> Verdict<'_, E> {
        Verdict { body: &self.body, key: self.key.as_ref(), end, attempts }
    }

    /// The `BEGIN` statement of the batch's options.
    pub(crate) fn begin_sql(&self) -> std::borrow::Cow<'static, str> {
        self.options.begin_sql()
    }

    /// The retry policy the batch set, if any.
    pub(crate) fn retry_policy(&self) -> Option<RetryPolicy> {
        self.retry
    }

    /// Every statement's label, in order.
    pub(crate) fn labels(&self) -> impl Iterator<Item = Option<&str>> {
        self.body.entries.iter().map(|entry| entry.label.as_deref())
    }

    /// The first labels, for logs.
    pub(crate) fn label_summary(&self) -> String {
        const SHOWN: usize = 8;
        let labels: Vec<&str> = self.labels().flatten().take(SHOWN + 1).collect();
        let mut summary = labels.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
        if labels.len() > SHOWN {
            summary.push_str(", ...");
        }
        summary
    }
}

impl<E> fmt::Debug for Batch<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").field("body", &self.body).field("options", &self.options).finish()
    }
}

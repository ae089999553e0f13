//! Fragments: reusable groups of statements that carry their own error mapping.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::pg::Pg;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::query_dsl::CompatibleType;
use diesel::sql_types::BoolOrNullableBool;

use super::guard::GuardSpec;
use super::handle::{self, Affected, All, One, Optional, Scope, StatementId};
use crate::codec::Statement;
use crate::error::{BuildError, Expectation, StatementFailure, StatementRef};

type MapFailure<E> = Arc<dyn Fn(&StatementFailure) -> Option<E> + Send + Sync>;

/// A group of statements that belongs together, with the mapping of its failures to a
/// domain error `E`.
///
/// Domain modules return fragments; a service appends several into one [`Batch`](crate::Batch),
/// which runs them atomically in one round trip. When a statement of a fragment fails, the
/// fragment's mapping turns the failure into its domain error and the batch returns it as
/// [`Error::Domain`](crate::Error::Domain), with the statement-level detail alongside.
///
/// ```
/// use pgbatch::{Cause, Fragment};
///
/// #[derive(Debug, thiserror::Error)]
/// enum ProvisionError {
///     #[error("not enough {0}")]
///     InsufficientCapacity(&'static str),
/// }
///
/// fn reserve_cpus(silo: i64, cpus: i64) -> Fragment<ProvisionError> {
///     let mut fragment = Fragment::new();
///     fragment
///         .push(
///             diesel::sql_query("UPDATE silo_quota SET cpus_used = cpus_used + $1 WHERE silo_id = $2")
///                 .bind::<diesel::sql_types::BigInt, _>(cpus)
///                 .bind::<diesel::sql_types::BigInt, _>(silo),
///         )
///         .label("reserve cpus")
///         .expect_rows(1);
///     fragment.map_failure(|failure| match failure.cause() {
///         Cause::CheckViolation(v) if v.constraint() == Some("cpus_used_le_cap") => {
///             Some(ProvisionError::InsufficientCapacity("cpus"))
///         }
///         _ => None,
///     })
/// }
/// # let _ = reserve_cpus(1, 2);
/// ```
///
/// Handles from a fragment's statements stay valid after the fragment is appended: read
/// them from the results of the batch that ran it.
pub struct Fragment<E = Infallible> {
    pub(crate) scope: Scope,
    pub(crate) entries: Vec<Entry>,
    /// Where the statements of each scope this fragment holds start, its own included.
    pub(crate) scopes: Vec<(Scope, usize)>,
    /// Mappings of appended fragments, innermost first.
    pub(crate) mappers: Vec<(Range<usize>, MapFailure<E>)>,
    /// This fragment's own mapping, which covers all of its statements.
    own_mapper: Option<MapFailure<E>>,
}

/// One statement of a batch, with what pgbatch needs to report on it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Shared, so that a batch given to a multiplexed connection's driver costs a
    /// reference count per statement rather than a copy of its binds.
    pub(crate) statement: Result<Arc<Statement>, Arc<BuildError>>,
    pub(crate) label: Option<Cow<'static, str>>,
    /// Rare, so kept out of line.
    pub(crate) guard: Option<Box<GuardSpec>>,
}

impl Entry {
    fn new(statement: Result<Statement, BuildError>) -> Self {
        Entry { statement: statement.map(Arc::new).map_err(Arc::new), label: None, guard: None }
    }

    /// Re-renders the guard's SQL, which names the label in a comment.
    fn apply_guard(&mut self) {
        let (Some(guard), Ok(statement)) = (&self.guard, &mut self.statement) else {
            return;
        };
        match guard.sql(self.label.as_deref()) {
            Ok(sql) => {
                let statement = Arc::make_mut(statement);
                statement.sql = statement.sql.wrapped(sql);
            }
            Err(error) => self.statement = Err(Arc::new(error)),
        }
    }

    fn set_guard(&mut self, expectation: Expectation) {
        if let Ok(statement) = &self.statement {
            let base_sql = match self.guard.take() {
                Some(previous) => previous.base_sql().to_owned(),
                None => statement.sql.text.to_string(),
            };
            self.guard = Some(Box::new(GuardSpec::new(expectation, base_sql)));
            self.apply_guard();
        }
    }

    fn fail(&mut self, error: BuildError) {
        self.statement = Err(Arc::new(error));
    }
}

impl<E> Fragment<E> {
    /// An empty fragment.
    pub fn new() -> Self {
        let scope = Scope::new();
        Fragment { scope, entries: Vec::new(), scopes: vec![(scope, 0)], mappers: Vec::new(), own_mapper: None }
    }

    /// Adds a Diesel statement: `insert_into`, `update`, `delete`, a `select` query or
    /// `sql_query` with binds.
    ///
    /// The statement is rendered and its binds encoded now, so `query` may borrow values
    /// (`values(&new)`). A statement that cannot be rendered or encoded, has more than
    /// 65535 binds, or is not allowed in a transaction (`COMMIT`, `VACUUM`, ...) is kept as
    /// an error: the batch then fails with [`Error::Invalid`](crate::Error::Invalid)
    /// before sending anything.
    pub fn push<Q>(&mut self, query: Q) -> StatementBuilder<'_, Q>
    where
        Q: QueryFragment<Pg> + QueryId,
    {
        self.push_entry(Entry::new(Statement::render(&query)))
    }

    /// Adds a guard that fails the batch unless `query` returns at least one row, for
    /// example "the silo exists and is not deleted". Checked on the server, in the same
    /// round trip; a failure is [`Cause::GuardFailed`](crate::Cause::GuardFailed).
    pub fn guard_exists<Q>(&mut self, query: Q) -> GuardBuilder<'_>
    where
        Q: Query + QueryFragment<Pg>,
    {
        self.push_guard(&query, Expectation::RowExists)
    }

    /// Adds a guard that fails the batch if `query` returns any row, for example "no
    /// instance still uses this disk".
    pub fn guard_not_exists<Q>(&mut self, query: Q) -> GuardBuilder<'_>
    where
        Q: Query + QueryFragment<Pg>,
    {
        self.push_guard(&query, Expectation::NoRow)
    }

    /// Adds a guard that fails the batch unless a Diesel boolean expression is true (a
    /// NULL result fails too). The expression stands alone in a `SELECT`, so it can use
    /// subqueries (`exists(...)`, `.select(count_star()).single_value()`) but not bare
    /// columns.
    pub fn guard<X>(&mut self, condition: X) -> GuardBuilder<'_>
    where
        X: Expression,
        X::SqlType: BoolOrNullableBool,
        diesel::helper_types::select<X>: diesel::query_builder::AsQuery + QueryFragment<Pg>,
    {
        let query = diesel::select(condition);
        self.push_guard(&query, Expectation::Condition)
    }

    /// Appends another fragment's statements after this one's. Its handles stay valid, and
    /// its failure mapping keeps applying to its statements, converted with `Into`.
    pub fn append<F>(&mut self, other: Fragment<F>)
    where
        F: Into<E> + 'static,
    {
        let offset = self.entries.len();
        let other_len = other.entries.len();
        self.entries.extend(other.entries);
        self.scopes.extend(other.scopes.into_iter().map(|(scope, start)| (scope, start + offset)));
        let inner = other.mappers.into_iter().chain(other.own_mapper.map(|map| (0..other_len, map)));
        for (range, map) in inner {
            let converted: MapFailure<E> = Arc::new(move |failure| map(failure).map(Into::into));
            self.mappers.push((range.start + offset..range.end + offset, converted));
        }
    }

    /// Sets how this fragment's failures become its domain error. The mapping sees the
    /// [`StatementFailure`] of any of the fragment's statements (those pushed before and
    /// after this call, and those of fragments appended to it that have no mapping of
    /// their own, or whose mapping returned `None`); returning `None` leaves the failure
    /// as a plain [`Error::Statement`](crate::Error::Statement).
    #[must_use]
    pub fn map_failure(mut self, map: impl Fn(&StatementFailure) -> Option<E> + Send + Sync + 'static) -> Self {
        self.own_mapper = Some(Arc::new(map));
        self
    }

    /// How many statements the fragment holds, guards included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the fragment holds no statement.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The domain error for a failure at `index`, from the innermost mapping that gives one.
    pub(crate) fn map(&self, failure: &StatementFailure) -> Option<E> {
        let index = failure.index();
        self.mappers
            .iter()
            .filter(|(range, _)| range.contains(&index))
            .map(|(_, map)| map)
            .chain(&self.own_mapper)
            .find_map(|map| map(failure))
    }

    pub(crate) fn statement_ref(&self, index: usize) -> StatementRef {
        StatementRef::new(index, self.entries[index].label.clone())
    }

    fn push_entry<Q>(&mut self, entry: Entry) -> StatementBuilder<'_, Q> {
        // The fragment's own scope starts at 0, so its statements are indexed by position.
        let id = StatementId { scope: self.scope, index: self.entries.len() };
        self.entries.push(entry);
        StatementBuilder { entry: self.entries.last_mut().expect("just pushed"), id, query: PhantomData }
    }

    fn push_guard<Q>(&mut self, query: &Q, expectation: Expectation) -> GuardBuilder<'_>
    where
        Q: QueryFragment<Pg> + ?Sized,
    {
        let mut entry = Entry::new(Statement::render_uncached(query));
        entry.set_guard(expectation);
        self.entries.push(entry);
        GuardBuilder { entry: self.entries.last_mut().expect("just pushed") }
    }
}

impl<E> Default for Fragment<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> fmt::Debug for Fragment<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fragment")
            .field("entries", &self.entries)
            .field("mappers", &(self.mappers.len() + usize::from(self.own_mapper.is_some())))
            .finish_non_exhaustive()
    }
}

/// A statement just pushed: give it a label, a guard, and take a handle to its results.
///
/// Every method is optional; the statement is in the batch already.
pub struct StatementBuilder<'f, Q> {
    entry: &'f mut Entry,
    id: StatementId,
    query: PhantomData<fn(Q)>,
}

impl<Q> StatementBuilder<'_, Q> {
    /// Names the statement in errors, logs and guard failures.
    pub fn label(self, label: impl Into<Cow<'static, str>>) -> Self {
        self.entry.label = Some(label.into());
        self.entry.apply_guard();
        self
    }

    /// Fails the batch unless the statement modifies (or, for a query or `RETURNING`,
    /// returns) exactly `rows` rows, for example "this UPDATE touched exactly one row".
    /// Checked on the server inside the same round trip; see [`guard`](crate::guard).
    ///
    /// The statement must return or modify rows; on DDL the batch fails with
    /// [`BuildError::GuardOnStatementWithoutRows`] before anything is sent.
    pub fn expect_rows(self, rows: u64) -> Self {
        self.expect_rows_in(rows..=rows)
    }

    /// Like [`expect_rows`](Self::expect_rows), with a range: `0..12`, `1..`, `..=5`.
    ///
    /// A range no count can satisfy (`..0`, `5..=2`) fails the batch with
    /// [`BuildError::EmptyRowRange`] before anything is sent.
    pub fn expect_rows_in(self, rows: impl RangeBounds<u64>) -> Self {
        let min = match rows.start_bound() {
            Bound::Included(&n) => Some(n),
            Bound::Excluded(&n) => n.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let max = match rows.end_bound() {
            Bound::Included(&n) => Some(Some(n)),
            Bound::Excluded(&n) => n.checked_sub(1).map(Some),
            Bound::Unbounded => Some(None),
        };
        match (min, max) {
            (Some(min), Some(max)) if max.is_none_or(|max| min <= max) => {
                self.entry.set_guard(Expectation::Rows { min, max });
            }
            _ => self.entry.fail(BuildError::EmptyRowRange { range: range_text(&rows) }),
        }
        self
    }

    /// A handle to the number of rows the statement affected.
    pub fn affected(self) -> Affected {
        Affected { id: self.id }
    }

    /// A handle to the one row the statement returns, decoded into `T` (a `Queryable`,
    /// `Selectable` via `as_returning()`/`as_select()`, or a single value).
    pub fn one<T>(self) -> One<T>
    where
        Q: Query,
        Q::SqlType: CompatibleType<T, Pg>,
        T: FromSqlRow<<Q::SqlType as CompatibleType<T, Pg>>::SqlType, Pg> + 'static,
    {
        One { id: self.id, decode: handle::decoder::<T, <Q::SqlType as CompatibleType<T, Pg>>::SqlType>() }
    }

    /// A handle to the row the statement may return, decoded into `T`.
    pub fn optional<T>(self) -> Optional<T>
    where
        Q: Query,
        Q::SqlType: CompatibleType<T, Pg>,
        T: FromSqlRow<<Q::SqlType as CompatibleType<T, Pg>>::SqlType, Pg> + 'static,
    {
        Optional { id: self.id, decode: handle::decoder::<T, <Q::SqlType as CompatibleType<T, Pg>>::SqlType>() }
    }

    /// A handle to all the rows the statement returns, each decoded into `T`.
    pub fn all<T>(self) -> All<T>
    where
        Q: Query,
        Q::SqlType: CompatibleType<T, Pg>,
        T: FromSqlRow<<Q::SqlType as CompatibleType<T, Pg>>::SqlType, Pg> + 'static,
    {
        All { id: self.id, decode: handle::decoder::<T, <Q::SqlType as CompatibleType<T, Pg>>::SqlType>() }
    }
}

/// A range's bounds as Rust spells them, for error messages.
fn range_text(rows: &impl RangeBounds<u64>) -> String {
    let start = match rows.start_bound() {
        Bound::Included(n) => n.to_string(),
        Bound::Excluded(n) => format!("{n} (excluded)"),
        Bound::Unbounded => String::new(),
    };
    let end = match rows.end_bound() {
        Bound::Included(n) => format!("..={n}"),
        Bound::Excluded(n) => format!("..{n}"),
        Bound::Unbounded => "..".to_owned(),
    };
    start + &end
}

/// A guard statement just pushed: give it a label.
pub struct GuardBuilder<'f> {
    entry: &'f mut Entry,
}

impl GuardBuilder<'_> {
    /// Names the guard in its failure, errors and server logs.
    pub fn label(self, label: impl Into<Cow<'static, str>>) -> Self {
        self.entry.label = Some(label.into());
        self.entry.apply_guard();
        self
    }
}

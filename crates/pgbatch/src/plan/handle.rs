//! The statements' results, and the typed handles that read one statement's rows.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::deserialize::FromSqlRow;
use diesel::pg::Pg;

use crate::codec::{Row, StepOutput};
use crate::error::{ResultError, StatementRef};

/// Identifies the batch or fragment a handle was issued by. Handles stay valid when their
/// fragment is appended elsewhere: the batch records where each scope's statements went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Scope(u64);

impl Scope {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Scope(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A statement's position within the scope that issued its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StatementId {
    pub(crate) scope: Scope,
    pub(crate) index: usize,
}

type Decode<T> = fn(&Row) -> diesel::deserialize::Result<T>;

pub(crate) fn decoder<T, ST>() -> Decode<T>
where
    T: FromSqlRow<ST, Pg>,
{
    |row| T::build_from_row(row)
}

/// Every statement's rows and row count, read through the handles the batch gave out.
///
/// A committed batch's results are in [`Committed`](crate::Committed); a two-phase
/// batch's first round trip shows them, not yet committed, through
/// [`Prepared::get`](crate::Prepared::get).
#[derive(Debug)]
pub struct Results {
    outputs: Vec<StepOutput>,
    labels: Vec<Option<Cow<'static, str>>>,
    /// Where each scope's statements start in this batch.
    scopes: Vec<(Scope, usize)>,
}

impl Results {
    pub(crate) fn new(
        outputs: Vec<StepOutput>,
        labels: Vec<Option<Cow<'static, str>>>,
        scopes: Vec<(Scope, usize)>,
    ) -> Self {
        Results { outputs, labels, scopes }
    }

    /// Reads a statement's result through its handle: decoded rows for [`One`],
    /// [`Optional`] and [`All`], a row count for [`Affected`].
    ///
    /// # Errors
    ///
    /// When the handle belongs to another batch, the row count does not fit the handle
    /// (`One` on zero rows), or a row does not decode into the requested type; see
    /// [`ResultError`].
    pub fn get<H: Handle>(&self, handle: &H) -> Result<H::Output, ResultError> {
        handle.read(self)
    }

    /// How many statements the batch ran.
    pub fn statement_count(&self) -> usize {
        self.outputs.len()
    }

    fn output(&self, id: StatementId) -> Result<(StatementRef, &StepOutput), ResultError> {
        let offset = self.scopes.iter().find(|(scope, _)| *scope == id.scope).ok_or(ResultError::ForeignHandle)?.1;
        let index = offset + id.index;
        let output = self.outputs.get(index).ok_or(ResultError::ForeignHandle)?;
        Ok((StatementRef::new(index, self.labels[index].clone()), output))
    }
}

/// A handle to a statement's results, read back with [`Results::get`] (or
/// [`Committed::get`](crate::Committed::get)).
///
/// Implemented by [`One`], [`Optional`], [`All`] and [`Affected`]; sealed.
pub trait Handle: private::Sealed {
    /// What the handle reads.
    type Output;

    /// Reads the handle's statement from `results`; use [`Results::get`].
    #[doc(hidden)]
    fn read(&self, results: &Results) -> Result<Self::Output, ResultError>;
}

mod private {
    pub trait Sealed {}
}

macro_rules! row_handle {
    ($(#[$doc:meta])* $name:ident, $output:ty, $expected:literal, |$rows:ident, $decode:ident| $read:expr) => {
        $(#[$doc])*
        pub struct $name<T> {
            pub(crate) id: StatementId,
            pub(crate) decode: Decode<T>,
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<T> Copy for $name<T> {}

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("id", &self.id).finish_non_exhaustive()
            }
        }

        impl<T> private::Sealed for $name<T> {}

        impl<T> Handle for $name<T> {
            type Output = $output;

            fn read(&self, results: &Results) -> Result<$output, ResultError> {
                let (statement, output) = results.output(self.id)?;
                let $rows = &output.rows;
                let unexpected = || ResultError::UnexpectedRowCount { statement: statement.clone(), expected: $expected, actual: $rows.len() };
                let $decode = |(row, value): (usize, &Row)| {
                    (self.decode)(value).map_err(|source| ResultError::Decode { statement: statement.clone(), row, source })
                };
                $read.ok_or_else(unexpected)?
            }
        }
    };
}

row_handle!(
    /// The one row a statement must return, decoded into `T`. Reading it fails with
    /// [`ResultError::UnexpectedRowCount`] when there were zero or several rows.
    One, T, "exactly one", |rows, decode| (rows.len() == 1).then(|| decode((0, &rows[0])))
);

row_handle!(
    /// The row a statement may return, decoded into `T`: `None` for zero rows. Reading it
    /// fails with [`ResultError::UnexpectedRowCount`] when there were several rows.
    Optional, Option<T>, "at most one", |rows, decode| (rows.len() <= 1).then(|| rows.first().map(|row| decode((0, row))).transpose())
);

row_handle!(
    /// All the rows a statement returns, each decoded into `T`.
    All, Vec<T>, "any number", |rows, decode| Some(rows.iter().enumerate().map(decode).collect::<Result<Vec<_>, _>>())
);

/// The number of rows a statement affected: inserted, updated or deleted, or returned by
/// a query.
#[derive(Debug, Clone, Copy)]
pub struct Affected {
    pub(crate) id: StatementId,
}

impl private::Sealed for Affected {}

impl Handle for Affected {
    type Output = u64;

    fn read(&self, results: &Results) -> Result<u64, ResultError> {
        Ok(results.output(self.id)?.1.affected)
    }
}

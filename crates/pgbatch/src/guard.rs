//! Guards: conditions checked on the server, inside the batch's own round trip.
//!
//! A guard is plain SQL that fails when its condition does not hold. PostgreSQL has no
//! `RAISE` outside PL/pgSQL, but a failed cast is a clean, catchable error:
//! `CAST(CASE WHEN <ok> THEN 'true' ELSE '<marker>' END AS BOOL)` is `true` when the
//! condition holds and fails with SQLSTATE 22P02, quoting the marker, when it does not. The
//! `CASE` keeps the cast off constant inputs, so the planner cannot fold the failure early.
//! No function or table is installed in the user's database.
//!
//! Row-count guards wrap their statement in a CTE and test `count(*)` in a one-time filter,
//! which PostgreSQL evaluates before returning any row, even when there are none:
//!
//! ```sql
//! /* pgbatch guard: reserve quota */
//! WITH pgbatch_guarded AS (UPDATE "quota" SET "used" = "used" + $1 WHERE "id" = $2 RETURNING 1)
//! SELECT FROM pgbatch_guarded
//! WHERE (SELECT CAST(CASE WHEN count(*) = 1 THEN 'true'
//!        ELSE 'pgbatch guard failed: rows=' || count(*) END AS BOOL) FROM pgbatch_guarded)
//! ```

use std::fmt;

use tokio_postgres::error::{DbError, SqlState};

use crate::error::BuildError;
use crate::sql_shape::{self, SqlShape};

/// The marker every guard's failure message starts with.
const MARKER: &str = "pgbatch guard failed";

/// What a guard expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expectation {
    /// The statement returns or modifies between `min` and `max` rows (inclusive; no upper
    /// bound when `max` is `None`).
    Rows {
        /// The fewest rows accepted.
        min: u64,
        /// The most rows accepted.
        max: Option<u64>,
    },
    /// The guard's query returns at least one row.
    RowExists,
    /// The guard's query returns no row.
    NoRow,
    /// The guard's boolean expression is true (not false, not NULL).
    Condition,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = |n: u64| if n == 1 { "row" } else { "rows" };
        match *self {
            Expectation::Rows { min, max: Some(max) } if min == max => write!(f, "exactly {min} {}", rows(min)),
            Expectation::Rows { min, max: Some(max) } => write!(f, "{min} to {max} {}", rows(max)),
            Expectation::Rows { min, max: None } => write!(f, "at least {min} {}", rows(min)),
            Expectation::RowExists => f.write_str("a row"),
            Expectation::NoRow => f.write_str("no row"),
            Expectation::Condition => f.write_str("the condition to hold"),
        }
    }
}

/// A guard that failed: which one, what it expected and, for row counts, what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardFailure {
    pub(crate) label: Option<String>,
    pub(crate) expectation: Expectation,
    pub(crate) actual_rows: Option<u64>,
}

impl GuardFailure {
    /// The guard's label: the label of the guarded statement, or of the guard statement.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
    /// What the guard expected.
    pub fn expectation(&self) -> Expectation {
        self.expectation
    }
    /// For row-count guards, how many rows the statement returned or modified.
    pub fn actual_rows(&self) -> Option<u64> {
        self.actual_rows
    }
}

impl fmt::Display for GuardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("guard")?;
        if let Some(label) = &self.label {
            write!(f, " {label:?}")?;
        }
        write!(f, " failed: expected {}", self.expectation)?;
        if let Some(actual) = self.actual_rows {
            write!(f, ", got {actual}")?;
        }
        Ok(())
    }
}

/// Wraps `sql` so that it fails unless it returns or modifies `expectation`'s row count.
pub(crate) fn wrap_row_count(sql: &str, expectation: Expectation, label: Option<&str>) -> Result<String, BuildError> {
    let Expectation::Rows { min, max } = expectation else {
        unreachable!("row-count guards are built from Expectation::Rows")
    };
    let sql = sql.trim_end().trim_end_matches(';');
    let (inner, output) = match sql_shape::shape(sql) {
        SqlShape::Query | SqlShape::ModifyReturning => (sql.to_owned(), "pgbatch_guarded.*"),
        // Without RETURNING there is nothing to count; `RETURNING 1` adds it, and the outer
        // query returns zero-column rows so the caller still sees a row count only.
        SqlShape::Modify => (format!("{sql} RETURNING 1"), ""),
        SqlShape::Other => return Err(BuildError::GuardOnStatementWithoutRows),
    };
    let test = match max {
        Some(max) if max == min => format!("count(*) = {min}"),
        Some(max) => format!("count(*) BETWEEN {min} AND {max}"),
        None => format!("count(*) >= {min}"),
    };
    Ok(format!(
        "{comment}WITH pgbatch_guarded AS ({inner}) SELECT {output} FROM pgbatch_guarded \
         WHERE (SELECT CAST(CASE WHEN {test} THEN 'true' ELSE '{MARKER}: rows=' || count(*) END AS BOOL) FROM pgbatch_guarded)",
        comment = comment(label),
    ))
}

/// A statement that fails unless `query` returns a row (or, with `NoRow`, returns none).
pub(crate) fn existence_check(query_sql: &str, expectation: Expectation, label: Option<&str>) -> String {
    let (test, failure) = match expectation {
        Expectation::RowExists => ("EXISTS", "no row"),
        Expectation::NoRow => ("NOT EXISTS", "a row exists"),
        _ => unreachable!("existence checks are built from RowExists or NoRow"),
    };
    format!(
        "{comment}SELECT CAST(CASE WHEN {test} ({query_sql}) THEN 'true' ELSE '{MARKER}: {failure}' END AS BOOL)",
        comment = comment(label),
    )
}

/// A statement that fails unless the boolean `select_sql` (a one-column `SELECT`) is true.
pub(crate) fn condition_check(select_sql: &str, label: Option<&str>) -> String {
    format!(
        "{comment}SELECT CAST(CASE WHEN ({select_sql}) THEN 'true' ELSE '{MARKER}: condition' END AS BOOL)",
        comment = comment(label),
    )
}

/// A leading comment that names the guard in server logs. `*/` in a label cannot end it.
fn comment(label: Option<&str>) -> String {
    match label {
        Some(label) => format!("/* pgbatch guard: {} */ ", label.replace("*/", "* /")),
        None => String::new(),
    }
}

/// Recognises a guard's failure in the error of the guarded statement.
pub(crate) fn failure_from(error: &DbError, expectation: Expectation, label: Option<&str>) -> Option<GuardFailure> {
    if *error.code() != SqlState::INVALID_TEXT_REPRESENTATION {
        return None;
    }
    let message = error.message();
    let start = message.find(MARKER)?;
    let actual_rows =
        message[start..].split_once("rows=").and_then(|(_, rest)| rest.trim_end_matches('"').parse().ok());
    Some(GuardFailure { label: label.map(str::to_owned), expectation, actual_rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_guard_on_plain_update_adds_returning() {
        let sql =
            wrap_row_count("UPDATE t SET a = 1;", Expectation::Rows { min: 1, max: Some(1) }, Some("x */ y")).unwrap();
        assert!(sql.starts_with(
            "/* pgbatch guard: x * / y */ WITH pgbatch_guarded AS (UPDATE t SET a = 1 RETURNING 1) SELECT  FROM"
        ));
        assert!(sql.contains("count(*) = 1"));
    }

    #[test]
    fn guard_on_ddl_is_refused() {
        let err = wrap_row_count("CREATE TABLE t ()", Expectation::Rows { min: 1, max: None }, None);
        assert!(matches!(err, Err(BuildError::GuardOnStatementWithoutRows)));
    }

    #[test]
    fn expectation_reads_well() {
        assert_eq!(Expectation::Rows { min: 2, max: Some(2) }.to_string(), "exactly 2 rows");
        assert_eq!(Expectation::Rows { min: 0, max: Some(11) }.to_string(), "0 to 11 rows");
        assert_eq!(Expectation::Rows { min: 1, max: None }.to_string(), "at least 1 row");
        assert_eq!(Expectation::Rows { min: 1, max: Some(1) }.to_string(), "exactly 1 row");
    }
}

//! Guards: conditions checked on the server, inside the batch's own round trip.
//!
//! A guard is plain SQL that fails when its condition does not hold. PostgreSQL has no
//! `RAISE` outside PL/pgSQL, but a failed cast is a clean, catchable error:
//! `CAST(CASE WHEN <ok> THEN 'true' ELSE '<marker>' END AS BOOL)` is `true` when the
//! condition holds and fails with SQLSTATE 22P02, quoting the marker, when it does not. The
//! `CASE` keeps the cast off constant inputs, so the planner cannot fold the failure early.
//! No function or table is installed in the user's database, and the SQL is valid on
//! PostgreSQL and CockroachDB alike.
//!
//! Every guard's marker carries a token drawn at random once per process, so a statement's
//! own cast error that happens to quote a marker-like text is never taken for a guard's
//! failure; once per process rather than per guard, so that a guarded statement's SQL is
//! the same from run to run and the statement cache keeps it.
//!
//! Row-count guards wrap their statement in a CTE and test `count(*)` in an uncorrelated
//! subquery, which the server evaluates once, before returning any row, even when there
//! are none:
//!
//! ```sql
//! /* pgbatch guard: reserve quota */
//! WITH pgbatch_guarded AS (UPDATE "quota" SET "used" = "used" + $1 WHERE "id" = $2 RETURNING 1)
//! SELECT 1 FROM pgbatch_guarded
//! WHERE (SELECT CAST(CASE WHEN count(*) = 1 THEN 'true'
//!        ELSE 'pgbatch guard 3f2a9c41d07e55b8: rows=' || count(*) END AS BOOL) FROM pgbatch_guarded)
//! ```

use crate::codec::{self, SqlShape};
use crate::error::{BuildError, Expectation, GuardFailure, ServerError, SqlState};

/// The text every guard's failure message starts with, before the guard's token.
const MARKER: &str = "pgbatch guard";

/// What a guard checks and the SQL it was made from.
#[derive(Debug, Clone)]
pub(crate) struct GuardSpec {
    pub(crate) expectation: Expectation,
    /// The SQL of the guarded statement or guard query, as rendered.
    base_sql: String,
    /// The marker token: only a failure quoting it is a guard's.
    token: u64,
}

/// The marker token of this process's guards, drawn once.
fn process_token() -> u64 {
    static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(rand::random)
}

impl GuardSpec {
    pub(crate) fn new(expectation: Expectation, base_sql: String) -> Self {
        GuardSpec { expectation, base_sql, token: process_token() }
    }

    /// The SQL the guard was made from.
    pub(crate) fn base_sql(&self) -> &str {
        &self.base_sql
    }

    /// The statement to send: the base SQL with the guard around it, naming `label` in a
    /// comment for server logs.
    pub(crate) fn sql(&self, label: Option<&str>) -> Result<String, BuildError> {
        let comment = comment(label);
        let marker = format!("{MARKER} {:016x}", self.token);
        let sql = codec::without_terminator(&self.base_sql);
        Ok(match self.expectation {
            Expectation::Rows { min, max } => {
                let (inner, output) = match codec::shape(sql) {
                    SqlShape::Query | SqlShape::ModifyReturning => (sql.to_owned(), "pgbatch_guarded.*"),
                    // Without RETURNING there is nothing to count; `RETURNING 1` adds it. The
                    // outer query returns one constant per row, so the caller still sees the
                    // row count in the command tag.
                    SqlShape::Modify => (format!("{sql} RETURNING 1"), "1"),
                    SqlShape::Other => return Err(BuildError::GuardOnStatementWithoutRows),
                };
                let test = match max {
                    Some(max) if max == min => format!("count(*) = {min}"),
                    Some(max) => format!("count(*) BETWEEN {min} AND {max}"),
                    None => format!("count(*) >= {min}"),
                };
                format!(
                    "{comment}WITH pgbatch_guarded AS ({inner}) SELECT {output} FROM pgbatch_guarded \
                     WHERE (SELECT CAST(CASE WHEN {test} THEN 'true' ELSE '{marker}: rows=' || count(*) END AS BOOL) \
                     FROM pgbatch_guarded)"
                )
            }
            Expectation::RowExists | Expectation::NoRow => {
                let (test, failure) = if self.expectation == Expectation::RowExists {
                    ("EXISTS", "no row")
                } else {
                    ("NOT EXISTS", "a row")
                };
                format!(
                    "{comment}SELECT CAST(CASE WHEN {test} ({sql}) THEN 'true' ELSE '{marker}: {failure}' END AS BOOL)"
                )
            }
            Expectation::Condition => {
                format!("{comment}SELECT CAST(CASE WHEN ({sql}) THEN 'true' ELSE '{marker}: condition' END AS BOOL)")
            }
        })
    }

    /// Recognises this guard's failure in the error of the statement that carries it.
    pub(crate) fn failure(&self, error: &ServerError, label: Option<&str>) -> Option<GuardFailure> {
        if *error.code() != SqlState::INVALID_TEXT_REPRESENTATION {
            return None;
        }
        let marker = format!("{MARKER} {:016x}", self.token);
        let message = error.message();
        let after = &message[message.find(&marker)? + marker.len()..];
        // PostgreSQL ends the message after the quoted value, CockroachDB goes on
        // (`... as type bool: invalid bool value`): read the digits only.
        let actual_rows = after.split_once("rows=").and_then(|(_, rest)| {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            rest[..digits].parse().ok()
        });
        Some(GuardFailure::new(label, self.expectation, actual_rows))
    }
}

/// A leading comment that names the guard in server logs. Comments nest in PostgreSQL, so
/// neither `/*` nor `*/` may appear in it; control characters (a NUL would end the
/// statement) are left out.
fn comment(label: Option<&str>) -> String {
    let Some(label) = label else { return String::new() };
    let clean: String = label.chars().filter(|c| !c.is_control()).collect();
    format!("/* pgbatch guard: {} */ ", clean.replace("/*", "/ *").replace("*/", "* /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(min: u64, max: Option<u64>) -> Expectation {
        Expectation::Rows { min, max }
    }

    #[test]
    fn a_row_count_guard_on_a_plain_update_adds_returning_and_selects_a_constant() {
        let spec = GuardSpec::new(rows(1, Some(1)), "UPDATE t SET a = 1;".into());
        let sql = spec.sql(Some("x */ y /* z\0")).unwrap();
        assert!(
            sql.starts_with("/* pgbatch guard: x * / y / * z */ WITH pgbatch_guarded AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1 FROM"),
            "{sql}"
        );
        assert!(sql.contains("count(*) = 1"));
        assert!(!sql.contains("SELECT  FROM"), "no empty target list: {sql}");
    }

    #[test]
    fn trailing_comments_do_not_swallow_the_guard() {
        let spec = GuardSpec::new(rows(1, None), "UPDATE t SET a = 1 -- note".into());
        let sql = spec.sql(None).unwrap();
        assert!(sql.starts_with("WITH pgbatch_guarded AS (UPDATE t SET a = 1 RETURNING 1) SELECT 1"), "{sql}");
    }

    #[test]
    fn every_guard_uses_listed_constructs_only() {
        let given =
            ["UPDATE", "item", "SET", "qty", "id", "SELECT", "INSERT", "INTO", "VALUES", "RETURNING", "FROM", "WHERE"];
        for base in [
            "UPDATE item SET qty = qty WHERE id = $1",
            "SELECT id FROM item WHERE id = $1",
            "INSERT INTO item (id) VALUES ($1) RETURNING id",
        ] {
            for expectation in [rows(1, Some(1)), rows(0, Some(3)), rows(2, None)] {
                codec::constructs::assert_allowed(
                    &GuardSpec::new(expectation, base.into()).sql(Some("a label")).unwrap(),
                    &given,
                );
            }
        }
        for expectation in [Expectation::RowExists, Expectation::NoRow, Expectation::Condition] {
            codec::constructs::assert_allowed(
                &GuardSpec::new(expectation, "SELECT id FROM item".into()).sql(None).unwrap(),
                &given,
            );
        }
    }

    #[test]
    fn a_guard_on_ddl_is_refused() {
        let spec = GuardSpec::new(rows(1, None), "CREATE TABLE t ()".into());
        assert!(matches!(spec.sql(None), Err(BuildError::GuardOnStatementWithoutRows)));
    }

    #[test]
    fn failures_are_read_in_both_servers_wording_and_only_with_the_token() {
        let spec = GuardSpec::new(rows(1, Some(1)), "UPDATE t SET a = 1".into());
        let marker = format!("{MARKER} {:016x}", spec.token);
        let error = |message: String| ServerError::from_fields([(b'V', "ERROR"), (b'C', "22P02"), (b'M', &message)]);
        let postgres = error(format!("invalid input syntax for type boolean: \"{marker}: rows=3\""));
        let cockroach = error(format!("could not parse \"{marker}: rows=12\" as type bool: invalid bool value"));
        assert_eq!(spec.failure(&postgres, Some("l")).unwrap().actual_rows(), Some(3));
        assert_eq!(spec.failure(&cockroach, None).unwrap().actual_rows(), Some(12));
        let forged = error("invalid input syntax for type boolean: \"pgbatch guard failed: rows=3\"".into());
        assert!(spec.failure(&forged, None).is_none(), "a user's cast error is not a guard failure");
    }
}

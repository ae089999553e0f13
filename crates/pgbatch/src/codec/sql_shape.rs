//! What kind of statement a piece of SQL is, as far as a batch is concerned: whether it
//! returns rows (guards need to know), where a caller's SQL leaves the transaction, and its
//! text without a trailing terminator. All of that only needs the keywords, so this reads
//! words (see [`scan`](super::scan)), it does not parse. What a batch refuses is in
//! [`refusal`](super::refusal).

use super::scan::{self, Word, Words};

/// What a statement produces, as far as guards are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqlShape {
    /// A query that returns rows: `SELECT`, `VALUES`, `TABLE`, `SHOW`, `EXPLAIN`.
    Query,
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE` with a top-level `RETURNING` clause.
    ModifyReturning,
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE` without `RETURNING`.
    Modify,
    /// Anything else (DDL, `LOCK`, `NOTIFY`, ...).
    Other,
}

/// What `sql` produces, for guards. Scans the whole text.
pub(crate) fn shape(sql: &str) -> SqlShape {
    let words: Vec<Word<'_>> = Words::top_level(sql).collect();
    let Some(first) = words.first() else {
        return SqlShape::Other;
    };
    // After `WITH`, the statement's own verb is the first top-level verb after the CTE list.
    let verb =
        if first.is("WITH") { words.iter().skip(1).find(|w| VERBS.iter().any(|v| w.is(v))) } else { Some(first) };
    let Some(verb) = verb else {
        return SqlShape::Other;
    };
    if ["SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN"].iter().any(|k| verb.is(k)) {
        SqlShape::Query
    } else if ["INSERT", "UPDATE", "DELETE", "MERGE"].iter().any(|k| verb.is(k)) {
        if words.iter().any(|w| w.is("RETURNING")) { SqlShape::ModifyReturning } else { SqlShape::Modify }
    } else {
        SqlShape::Other
    }
}

const VERBS: &[&str] = &["SELECT", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "MERGE"];

/// Where a caller's SQL text (one statement, or several sent as one simple query) leaves
/// the transaction, as far as its statements' first words tell. Only explicit statements
/// open or end a transaction block: nothing called from SQL (a function, a procedure, a
/// `DO` block) can leave one open.
#[cfg(any(feature = "diesel-async", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boundary {
    /// No statement opens or ends a transaction block.
    Keeps,
    /// It ends with a plain `COMMIT`, `END`, `ROLLBACK` or `ABORT` (not `ROLLBACK TO`, not
    /// `AND CHAIN`), after which nothing opens another: it ends outside any transaction.
    Ends {
        /// Whether the end is a commit (`COMMIT`, `END`), which an aborted transaction
        /// answers by rolling back.
        commits: bool,
    },
    /// Anything else: a statement opens a block (`BEGIN`, `START`), or moves the boundary
    /// in a way this does not follow.
    Other,
}

/// Reads [`Boundary`] from the first words of each statement of `sql`.
#[cfg(any(feature = "diesel-async", test))]
pub(crate) fn boundary(sql: &str) -> Boundary {
    let mut result = Boundary::Keeps;
    let mut words = Words::top_level(sql).peekable();
    while let Some(word) = words.next() {
        if !word.starts_statement {
            continue;
        }
        let mut statement = vec![word];
        while let Some(next) = words.next_if(|w| !w.starts_statement) {
            statement.push(next);
        }
        let first = statement[0];
        let has = |keyword: &str| statement.iter().any(|w| w.is(keyword));
        let ends = ["COMMIT", "END", "ROLLBACK", "ABORT"].iter().any(|k| first.is(k));
        let plain_end = ends && !has("CHAIN") && !(first.is("ROLLBACK") && has("TO"));
        // `PREPARE name AS ...` prepares a statement; `PREPARE TRANSACTION` ends one.
        let moves = ["BEGIN", "START", "SAVEPOINT", "RELEASE"].iter().any(|k| first.is(k))
            || (first.is("PREPARE") && has("TRANSACTION"));
        result = if plain_end {
            Boundary::Ends { commits: first.is("COMMIT") || first.is("END") }
        } else if ends || moves || result == Boundary::Other {
            Boundary::Other
        } else {
            // A statement after an end runs outside the transaction: still ended.
            result
        };
    }
    result
}

/// Whether `sql` holds exactly one statement (comments, literals and empty statements
/// aside): what the extended protocol can parse as one.
#[cfg(any(feature = "diesel-async", test))]
pub(crate) fn is_one_statement(sql: &str) -> bool {
    Words::new(sql).filter(|word| word.starts_statement).count() == 1
}

/// `sql` without trailing white space, comments and a final `;`, so that text can be
/// appended to it or it can be wrapped in parentheses.
pub(crate) fn without_terminator(sql: &str) -> &str {
    let code = &sql[..scan::code_end(sql)];
    match code.strip_suffix(';') {
        Some(rest) => &rest[..scan::code_end(rest)],
        None => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_of_callers_sql() {
        use Boundary::*;
        assert_eq!(boundary("SELECT 1"), Keeps);
        assert_eq!(boundary("SET search_path = x; SELECT 'BEGIN'; -- COMMIT"), Keeps);
        assert_eq!(boundary("DO $$ BEGIN COMMIT; END $$"), Keeps);
        assert_eq!(boundary("PREPARE p AS SELECT 1"), Keeps);
        assert_eq!(boundary("COMMIT"), Ends { commits: true });
        assert_eq!(boundary("end transaction;"), Ends { commits: true });
        assert_eq!(boundary("ROLLBACK"), Ends { commits: false });
        assert_eq!(boundary("BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT 1"), Ends { commits: true });
        assert_eq!(boundary("BEGIN"), Other);
        assert_eq!(boundary("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Other);
        assert_eq!(boundary("SELECT 1; START TRANSACTION"), Other);
        assert_eq!(boundary("COMMIT; BEGIN"), Other);
        assert_eq!(boundary("COMMIT AND CHAIN"), Other);
        assert_eq!(boundary("ROLLBACK TO SAVEPOINT diesel_savepoint_1"), Other);
        assert_eq!(boundary("SAVEPOINT s"), Other);
        assert_eq!(boundary("PREPARE TRANSACTION 'x'"), Other);
    }

    #[test]
    fn one_statement_or_several() {
        for one in ["BEGIN", "select 1;", "SELECT ';' -- ; x\n", "DO $$ BEGIN PERFORM 1; END $$", "(SELECT 1); ;"] {
            assert!(is_one_statement(one), "{one:?}");
        }
        for not_one in ["", "-- nothing", "SELECT 1; SELECT 2", "BEGIN; COMMIT"] {
            assert!(!is_one_statement(not_one), "{not_one:?}");
        }
    }

    #[test]
    fn shapes_of_common_statements() {
        assert_eq!(shape("SELECT 1"), SqlShape::Query);
        assert_eq!(shape("  -- c\n values (1)"), SqlShape::Query);
        assert_eq!(shape(r#"UPDATE "t" SET "a" = $1"#), SqlShape::Modify);
        assert_eq!(shape(r#"INSERT INTO "t" ("a") VALUES ($1) RETURNING "t"."id""#), SqlShape::ModifyReturning);
        assert_eq!(shape("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x"), SqlShape::Modify);
        assert_eq!(shape("WITH x AS (SELECT 1) SELECT * FROM x"), SqlShape::Query);
        assert_eq!(shape("CREATE TABLE t (returning_x int)"), SqlShape::Other);
    }

    #[test]
    fn returning_inside_literals_and_subqueries_does_not_count() {
        assert_eq!(shape("UPDATE t SET a = 'RETURNING'"), SqlShape::Modify);
        assert_eq!(shape(r#"UPDATE t SET "RETURNING" = 1"#), SqlShape::Modify);
        assert_eq!(shape("UPDATE t SET a = $x$ RETURNING $x$"), SqlShape::Modify);
        assert_eq!(shape("UPDATE t SET a = 1 /* RETURNING /* nested */ a */"), SqlShape::Modify);
        assert_eq!(shape("UPDATE t SET a = E'\\' RETURNING'"), SqlShape::Modify);
        assert_eq!(shape("UPDATE t SET a = $1 RETURNING a"), SqlShape::ModifyReturning);
    }

    #[test]
    fn terminators_and_trailing_comments_are_cut() {
        assert_eq!(without_terminator("UPDATE t SET a = 1; -- why"), "UPDATE t SET a = 1");
        assert_eq!(without_terminator("UPDATE t SET a = 1 -- why"), "UPDATE t SET a = 1");
        assert_eq!(without_terminator("SELECT ';'"), "SELECT ';'");
    }
}

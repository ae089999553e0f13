//! A small scanner that tells what kind of statement a piece of SQL is.
//!
//! pgbatch owns the transaction boundaries of a batch, so it must refuse statements that
//! would move them (`COMMIT`, `SAVEPOINT`, ...) or that PostgreSQL refuses inside a
//! transaction block, before anything is sent. Guards also need to know whether a statement
//! returns rows. Both only need the top-level keywords, so this is a tokenizer that skips
//! comments, string literals, quoted identifiers and dollar-quoted bodies, not a parser.

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

/// The words that start a statement pgbatch will not put inside its transaction, and why.
///
/// Each entry is a sequence of leading keywords; `*` matches any one word.
const NOT_IN_TRANSACTION: &[(&[&str], &str)] = &[
    (&["BEGIN"], "transaction control belongs to the batch"),
    (&["START"], "transaction control belongs to the batch"),
    (&["COMMIT"], "transaction control belongs to the batch"),
    (&["END"], "transaction control belongs to the batch"),
    (&["ROLLBACK"], "transaction control belongs to the batch"),
    (&["ABORT"], "transaction control belongs to the batch"),
    (&["SAVEPOINT"], "transaction control belongs to the batch"),
    (&["RELEASE"], "transaction control belongs to the batch"),
    (&["PREPARE", "TRANSACTION"], "transaction control belongs to the batch"),
    (&["COPY"], "COPY needs its own sub-protocol and cannot be pipelined"),
    (&["VACUUM"], "PostgreSQL refuses it inside a transaction block"),
    (&["CREATE", "DATABASE"], "PostgreSQL refuses it inside a transaction block"),
    (&["DROP", "DATABASE"], "PostgreSQL refuses it inside a transaction block"),
    (&["CREATE", "TABLESPACE"], "PostgreSQL refuses it inside a transaction block"),
    (&["DROP", "TABLESPACE"], "PostgreSQL refuses it inside a transaction block"),
    (&["ALTER", "SYSTEM"], "PostgreSQL refuses it inside a transaction block"),
    (&["DISCARD", "ALL"], "PostgreSQL refuses it inside a transaction block"),
    (&["CREATE", "INDEX", "CONCURRENTLY"], "PostgreSQL refuses it inside a transaction block"),
    (&["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"], "PostgreSQL refuses it inside a transaction block"),
    (&["DROP", "INDEX", "CONCURRENTLY"], "PostgreSQL refuses it inside a transaction block"),
    (&["REINDEX", "*", "CONCURRENTLY"], "PostgreSQL refuses it inside a transaction block"),
];

/// The classification of one statement's SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) shape: SqlShape,
    /// Set when the statement must not run inside the batch's transaction: the leading
    /// keywords and the reason.
    pub(crate) refused: Option<(String, &'static str)>,
}

/// Classifies `sql` by its top-level keywords.
pub(crate) fn classify(sql: &str) -> Classified {
    let words = top_level_words(sql);
    let refused = NOT_IN_TRANSACTION.iter().find_map(|(pattern, why)| {
        let matches = pattern.len() <= words.len()
            && pattern.iter().zip(&words).all(|(p, w)| *p == "*" || w.eq_ignore_ascii_case(p));
        matches.then(|| (words[..pattern.len()].join(" ").to_ascii_uppercase(), *why))
    });
    Classified { shape: shape_of(&words), refused }
}

fn shape_of(words: &[&str]) -> SqlShape {
    let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
    let Some(first) = words.first() else {
        return SqlShape::Other;
    };
    // After `WITH`, the statement's own verb is the first top-level verb after the CTE list.
    let verb = if is(first, "WITH") {
        words.iter().skip(1).find(|w| VERBS.iter().any(|v| is(w, v))).copied()
    } else {
        Some(*first)
    };
    let Some(verb) = verb else {
        return SqlShape::Other;
    };
    if ["SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN"].iter().any(|k| is(verb, k)) {
        SqlShape::Query
    } else if ["INSERT", "UPDATE", "DELETE", "MERGE"].iter().any(|k| is(verb, k)) {
        if words.iter().any(|w| is(w, "RETURNING")) { SqlShape::ModifyReturning } else { SqlShape::Modify }
    } else {
        SqlShape::Other
    }
}

const VERBS: &[&str] = &["SELECT", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "MERGE"];

/// The bare words of `sql` outside parentheses, comments, literals and quoted identifiers,
/// in order.
fn top_level_words(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'\'' => i = skip_quoted(bytes, i, b'\'', is_escape_string(bytes, i)),
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'$' => i = skip_dollar_quoted(sql, i),
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$') {
                    i += 1;
                }
                if depth == 0 {
                    words.push(&sql[start..i]);
                }
            }
            _ => i += 1,
        }
    }
    words
}

/// `E'...'` strings treat backslash as an escape character.
fn is_escape_string(bytes: &[u8], quote: usize) -> bool {
    quote > 0
        && matches!(bytes[quote - 1], b'E' | b'e')
        && (quote == 1 || !(bytes[quote - 2].is_ascii_alphanumeric() || bytes[quote - 2] == b'_'))
}

fn skip_quoted(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
        } else if bytes[i] == quote {
            // A doubled quote is an escaped quote, not the end.
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    // PostgreSQL block comments nest.
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let bytes = sql.as_bytes();
    // `$1` is a parameter, `$tag$` or `$$` opens a dollar-quoted string.
    let mut end = start + 1;
    while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
        end += 1;
    }
    if bytes.get(end) != Some(&b'$') || bytes.get(start + 1).is_some_and(u8::is_ascii_digit) {
        return end;
    }
    let tag = &sql[start..=end];
    sql[end + 1..].find(tag).map_or(bytes.len(), |n| end + 1 + n + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_common_statements() {
        assert_eq!(classify("SELECT 1").shape, SqlShape::Query);
        assert_eq!(classify("  -- c\n values (1)").shape, SqlShape::Query);
        assert_eq!(classify(r#"UPDATE "t" SET "a" = $1"#).shape, SqlShape::Modify);
        assert_eq!(
            classify(r#"INSERT INTO "t" ("a") VALUES ($1) RETURNING "t"."id""#).shape,
            SqlShape::ModifyReturning
        );
        assert_eq!(
            classify("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x").shape,
            SqlShape::Modify
        );
        assert_eq!(classify("WITH x AS (SELECT 1) SELECT * FROM x").shape, SqlShape::Query);
        assert_eq!(classify("CREATE TABLE t (returning_x int)").shape, SqlShape::Other);
    }

    #[test]
    fn returning_inside_literals_and_subqueries_does_not_count() {
        assert_eq!(classify("UPDATE t SET a = 'RETURNING'").shape, SqlShape::Modify);
        assert_eq!(classify(r#"UPDATE t SET "RETURNING" = 1"#).shape, SqlShape::Modify);
        assert_eq!(classify("UPDATE t SET a = $x$ RETURNING $x$").shape, SqlShape::Modify);
        assert_eq!(classify("UPDATE t SET a = 1 /* RETURNING /* nested */ a */").shape, SqlShape::Modify);
        assert_eq!(classify("UPDATE t SET a = E'\\' RETURNING'").shape, SqlShape::Modify);
        assert_eq!(classify("UPDATE t SET a = $1 RETURNING a").shape, SqlShape::ModifyReturning);
    }

    #[test]
    fn transaction_control_and_non_transactional_statements_are_refused() {
        for sql in [
            "COMMIT",
            " rollback to savepoint a",
            "/* hi */ Begin",
            "savepoint s",
            "prepare transaction 'x'",
            "copy t from stdin",
            "VACUUM t",
            "create index concurrently i on t (a)",
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
            "reindex table concurrently t",
        ] {
            assert!(classify(sql).refused.is_some(), "{sql} should be refused");
        }
        for sql in ["SELECT 'COMMIT'", "create index i on t (a)", "PREPARE p AS SELECT 1", "-- COMMIT\nSELECT 1"] {
            assert!(classify(sql).refused.is_none(), "{sql} should be allowed");
        }
        assert_eq!(classify("end").refused.unwrap().0, "END");
    }
}

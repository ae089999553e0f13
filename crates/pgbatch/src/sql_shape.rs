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

/// The leading keywords and the reason, when `sql` must not run inside the batch's
/// transaction. Reads only the first few words.
pub(crate) fn refusal(sql: &str) -> Option<(String, &'static str)> {
    const LONGEST: usize = 4;
    let mut scan = TopLevelWords::new(sql);
    let leading = scan.next()?;
    // Most statements are decided by their first word: scan on only when a pattern
    // starts with it.
    if !NOT_IN_TRANSACTION.iter().any(|(pattern, _)| pattern[0].eq_ignore_ascii_case(leading)) {
        return None;
    }
    let mut first = [leading; LONGEST];
    let mut count = 1;
    for (slot, word) in first[1..].iter_mut().zip(scan) {
        *slot = word;
        count += 1;
    }
    let words = &first[..count];
    NOT_IN_TRANSACTION.iter().find_map(|(pattern, why)| {
        let matches = pattern.len() <= words.len()
            && pattern.iter().zip(words).all(|(p, w)| *p == "*" || w.eq_ignore_ascii_case(p));
        matches.then(|| (words[..pattern.len()].join(" ").to_ascii_uppercase(), *why))
    })
}

/// What `sql` produces, for guards. Scans the whole text.
pub(crate) fn shape(sql: &str) -> SqlShape {
    shape_of(&TopLevelWords::new(sql).collect::<Vec<_>>())
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
struct TopLevelWords<'a> {
    sql: &'a str,
    at: usize,
    depth: usize,
}

impl<'a> TopLevelWords<'a> {
    fn new(sql: &'a str) -> Self {
        TopLevelWords { sql, at: 0, depth: 0 }
    }
}

impl<'a> Iterator for TopLevelWords<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (sql, bytes) = (self.sql, self.sql.as_bytes());
        while self.at < bytes.len() {
            let i = self.at;
            match bytes[i] {
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    self.at = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => self.at = skip_block_comment(bytes, i),
                b'\'' => self.at = skip_quoted(bytes, i, b'\'', is_escape_string(bytes, i)),
                b'"' => self.at = skip_quoted(bytes, i, b'"', false),
                b'$' => self.at = skip_dollar_quoted(sql, i),
                b'(' => {
                    self.depth += 1;
                    self.at += 1;
                }
                b')' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.at += 1;
                }
                b if b.is_ascii_alphabetic() || b == b'_' => {
                    let end = bytes[i..]
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$'))
                        .map_or(bytes.len(), |n| i + n);
                    self.at = end;
                    if self.depth == 0 {
                        return Some(&sql[i..end]);
                    }
                }
                _ => self.at += 1,
            }
        }
        None
    }
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
            assert!(refusal(sql).is_some(), "{sql} should be refused");
        }
        for sql in ["SELECT 'COMMIT'", "create index i on t (a)", "PREPARE p AS SELECT 1", "-- COMMIT\nSELECT 1"] {
            assert!(refusal(sql).is_none(), "{sql} should be allowed");
        }
        assert_eq!(refusal("end").unwrap().0, "END");
    }
}

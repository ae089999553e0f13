//! Statements a batch refuses before anything is sent: those that would move its transaction
//! boundaries (`COMMIT`, `SAVEPOINT`, ...) or that PostgreSQL refuses inside a transaction
//! block, and those whose effect would outlive the transaction in the session (`SET` without
//! `LOCAL`, `LISTEN`, `PREPARE`, ...), each with the form to write instead; and whether a
//! statement calls a function that changes the session, so that the session is reset after
//! it. Only the leading keywords matter, so this reads words (see [`scan`](super::scan)).

use super::scan::{Word, Words};
use crate::error::BuildError;

const TRANSACTION_CONTROL: &str = "transaction control belongs to the batch";
const NOT_IN_BLOCK: &str = "PostgreSQL refuses it inside a transaction block";

/// Leading keywords of statements that cannot run inside the batch's transaction, and
/// why. `*` matches any one word.
const NOT_IN_TRANSACTION: &[(&[&str], &str)] = &[
    (&["BEGIN"], TRANSACTION_CONTROL),
    (&["START"], TRANSACTION_CONTROL),
    (&["COMMIT"], TRANSACTION_CONTROL),
    (&["END"], TRANSACTION_CONTROL),
    (&["ROLLBACK"], TRANSACTION_CONTROL),
    (&["ABORT"], TRANSACTION_CONTROL),
    (&["SAVEPOINT"], TRANSACTION_CONTROL),
    (&["RELEASE"], TRANSACTION_CONTROL),
    (&["PREPARE", "TRANSACTION"], TRANSACTION_CONTROL),
    (&["COPY"], "COPY needs its own sub-protocol and cannot be pipelined"),
    (&["VACUUM"], NOT_IN_BLOCK),
    (&["CREATE", "DATABASE"], NOT_IN_BLOCK),
    (&["DROP", "DATABASE"], NOT_IN_BLOCK),
    (&["CREATE", "TABLESPACE"], NOT_IN_BLOCK),
    (&["DROP", "TABLESPACE"], NOT_IN_BLOCK),
    (&["ALTER", "SYSTEM"], NOT_IN_BLOCK),
    (&["DISCARD", "ALL"], NOT_IN_BLOCK),
    (&["CREATE", "INDEX", "CONCURRENTLY"], NOT_IN_BLOCK),
    (&["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"], NOT_IN_BLOCK),
    (&["DROP", "INDEX", "CONCURRENTLY"], NOT_IN_BLOCK),
    (&["REINDEX", "*", "CONCURRENTLY"], NOT_IN_BLOCK),
];

/// Leading keywords of statements whose effect outlives the transaction in the session,
/// and what to write instead. Checked after the exceptions in [`session_refusal`].
const SESSION_LEVEL: &[(&[&str], &str)] = &[
    (&["SET", "SESSION", "CHARACTERISTICS"], "use the batch's isolation(), read_only() and deferrable() options"),
    (&["SET", "ROLE"], "use SET LOCAL ROLE, which ends with the transaction"),
    (&["SET", "SESSION", "AUTHORIZATION"], "use SET LOCAL SESSION AUTHORIZATION, which ends with the transaction"),
    (&["SET"], "use SET LOCAL (or set_config(name, value, true)), which ends with the transaction"),
    (&["RESET"], "settings made with SET LOCAL end with the transaction: there is nothing to reset"),
    (&["LISTEN"], "a listener belongs to the session: listen on a connection of your own, outside batches"),
    (&["UNLISTEN"], "a listener belongs to the session: listen on a connection of your own, outside batches"),
    (&["PREPARE"], "pgbatch sends every statement unprepared: push the statement itself"),
    (&["DEALLOCATE"], "pgbatch sends every statement unprepared: there is nothing to deallocate"),
    (&["DISCARD"], "the session is reset by pgbatch's pool when a batch may have changed it"),
    (&["LOAD"], "a loaded library stays in the session: load it in the server configuration"),
];

/// Function names whose effect may outlive the transaction, depending on their
/// arguments (`set_config(.., .., false)`, a session-level advisory lock, a dblink
/// connection): a statement that calls one makes the connection reset after its batch.
/// Each is found by the underscore inside it: the text before and after it.
const SESSION_FUNCTIONS: &[(&str, &str)] = &[
    // set_config
    ("set", "config"),
    // pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock, pg_try_advisory_lock_shared
    ("advisory", "lock"),
    // dblink_connect, dblink_connect_u
    ("dblink", "connect"),
];

/// Checks that `sql` may run inside a batch. Returns whether it may touch session state
/// that outlives the transaction (through one of the [`SESSION_FUNCTIONS`]), so that the
/// batch resets the session after it.
///
/// Reads only the first few words, plus a scan for the session functions.
pub(crate) fn check(sql: &str) -> Result<bool, BuildError> {
    const LONGEST: usize = 4;
    let mut words = Words::top_level(sql);
    let Some(first) = words.next() else { return Ok(false) };
    // Most statements (INSERT, UPDATE, SELECT, ...) are decided by their first word: read
    // on only when a refusal can start with it.
    if !may_be_refused(first.text) {
        return Ok(calls_session_function(sql));
    }
    let mut leading = [first.text; LONGEST];
    let mut count = 1;
    for (slot, word) in leading[1..].iter_mut().zip(words.by_ref()) {
        *slot = word.text;
        count += 1;
    }
    let leading = &leading[..count];
    if let Some((keywords, reason)) = matching(NOT_IN_TRANSACTION, leading) {
        return Err(BuildError::NotAllowedInTransaction { keywords, reason });
    }
    if let Some((keywords, hint)) = session_refusal(sql, leading) {
        return Err(BuildError::SessionState { keywords, hint });
    }
    Ok(calls_session_function(sql))
}

/// Whether a statement starting with `word` can be refused: the first words of
/// [`NOT_IN_TRANSACTION`] and [`SESSION_LEVEL`], and the statements checked further.
fn may_be_refused(word: &str) -> bool {
    const LONGEST: usize = "DEALLOCATE".len();
    if word.len() > LONGEST {
        return false;
    }
    let mut upper = [0u8; LONGEST];
    upper[..word.len()].copy_from_slice(word.as_bytes());
    upper.make_ascii_uppercase();
    matches!(
        &upper[..word.len()],
        b"BEGIN"
            | b"START"
            | b"COMMIT"
            | b"END"
            | b"ROLLBACK"
            | b"ABORT"
            | b"SAVEPOINT"
            | b"RELEASE"
            | b"PREPARE"
            | b"COPY"
            | b"VACUUM"
            | b"CREATE"
            | b"DROP"
            | b"ALTER"
            | b"DISCARD"
            | b"REINDEX"
            | b"SET"
            | b"RESET"
            | b"LISTEN"
            | b"UNLISTEN"
            | b"DEALLOCATE"
            | b"LOAD"
            | b"DECLARE"
    )
}

/// The first entry of `table` whose pattern starts `words`: its keywords and its text.
fn matching(table: &[(&[&str], &'static str)], words: &[&str]) -> Option<(String, &'static str)> {
    table.iter().find_map(|(pattern, text)| {
        let matches = pattern.len() <= words.len()
            && pattern.iter().zip(words).all(|(p, w)| *p == "*" || w.eq_ignore_ascii_case(p));
        matches.then(|| (words[..pattern.len()].join(" ").to_ascii_uppercase(), *text))
    })
}

fn session_refusal(sql: &str, leading: &[&str]) -> Option<(String, &'static str)> {
    let is = |index: usize, keyword: &str| leading.get(index).is_some_and(|w| w.eq_ignore_ascii_case(keyword));
    // Transaction-scoped forms of SET.
    if is(0, "SET") && (is(1, "LOCAL") || is(1, "TRANSACTION") || is(1, "CONSTRAINTS")) {
        return None;
    }
    if is(0, "CREATE") {
        return temporary_object_refusal(sql, leading);
    }
    if is(0, "DECLARE") && Words::top_level(sql).any(|w| w.is("HOLD")) {
        return Some((
            "DECLARE ... WITH HOLD".to_owned(),
            "a held cursor outlives the transaction: declare it WITHOUT HOLD",
        ));
    }
    matching(SESSION_LEVEL, leading)
}

/// `CREATE TEMP TABLE` outlives the transaction unless it says `ON COMMIT DROP`.
fn temporary_object_refusal(sql: &str, leading: &[&str]) -> Option<(String, &'static str)> {
    let temporary =
        leading.iter().skip(1).take(2).any(|w| w.eq_ignore_ascii_case("TEMP") || w.eq_ignore_ascii_case("TEMPORARY"));
    if !temporary {
        return None;
    }
    let words: Vec<Word<'_>> = Words::top_level(sql).collect();
    let on_commit_drop = words.windows(3).any(|w| w[0].is("ON") && w[1].is("COMMIT") && w[2].is("DROP"));
    (!on_commit_drop).then(|| {
        let keywords = leading.iter().take(3).copied().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
        (keywords, "a temporary object outlives the transaction: create the table with ON COMMIT DROP")
    })
}

/// Whether `sql` mentions one of the [`SESSION_FUNCTIONS`], outside literals and
/// comments. Runs on every statement pushed, so the whole text is first searched around
/// its underscores only, and split into words only when that finds something.
fn calls_session_function(sql: &str) -> bool {
    mentions_session_function(sql.as_bytes())
        && Words::new(sql).any(|word| mentions_session_function(word.text.as_bytes()))
}

fn mentions_session_function(text: &[u8]) -> bool {
    let around = |at: usize, (before, after): (&str, &str)| {
        at >= before.len()
            && text[at - before.len()..at].eq_ignore_ascii_case(before.as_bytes())
            && text.get(at + 1..at + 1 + after.len()).is_some_and(|t| t.eq_ignore_ascii_case(after.as_bytes()))
    };
    memchr::memchr_iter(b'_', text).any(|at| SESSION_FUNCTIONS.iter().any(|&parts| around(at, parts)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "-- note\rCOMMIT",
        ] {
            assert!(matches!(check(sql), Err(BuildError::NotAllowedInTransaction { .. })), "{sql} should be refused");
        }
        for sql in ["SELECT 'COMMIT'", "create index i on t (a)", "-- COMMIT\nSELECT 1", "/* COMMIT */ SELECT 1"] {
            assert!(matches!(check(sql), Ok(false)), "{sql} should be allowed");
        }
        assert!(matches!(check("end"), Err(BuildError::NotAllowedInTransaction { keywords, .. }) if keywords == "END"));
    }

    #[test]
    fn session_level_statements_are_refused_with_a_hint() {
        for sql in [
            "SET search_path = nowhere",
            "set statement_timeout = 1",
            "SET SESSION statement_timeout = 1",
            "SET ROLE nobody",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "RESET ALL",
            "LISTEN x",
            "PREPARE p AS SELECT 1",
            "DEALLOCATE p",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t as select 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(matches!(check(sql), Err(BuildError::SessionState { .. })), "{sql} should be refused");
        }
        for sql in [
            "SET LOCAL search_path = x",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
            "CREATE TABLE t (temp int)",
            "SELECT 'SET x = 1'",
            "DECLARE c CURSOR FOR SELECT 1",
        ] {
            assert!(check(sql).is_ok(), "{sql} should be allowed");
        }
    }

    #[test]
    fn session_functions_mark_the_statement() {
        assert!(check("SELECT set_config('search_path', 'x', false)").unwrap());
        assert!(check("SELECT 1 WHERE pg_try_advisory_lock(42)").unwrap());
        assert!(check("SELECT PG_ADVISORY_LOCK(1)").unwrap());
        assert!(!check("SELECT pg_advisory_xact_lock(1)").unwrap());
        assert!(!check("SELECT 'set_config(x)'").unwrap());
    }

    #[test]
    fn every_first_word_of_a_refusal_is_read_on() {
        for (pattern, _) in NOT_IN_TRANSACTION.iter().chain(SESSION_LEVEL) {
            assert!(may_be_refused(pattern[0]), "{}", pattern[0]);
            assert!(may_be_refused(&pattern[0].to_ascii_lowercase()), "{}", pattern[0]);
        }
        assert!(!may_be_refused("INSERT") && !may_be_refused("update") && !may_be_refused("SELECT"));
    }
}

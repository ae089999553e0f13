//! The check behind every test of SQL pgbatch generates: each bare word must be one of the
//! constructs `docs/generated-sql.md` lists (PostgreSQL and CockroachDB 22.1 accept them
//! all), and no target list may be empty.

use super::scan::Words;

/// The list at the end of `docs/generated-sql.md`.
fn constructs() -> Vec<String> {
    let doc = include_str!("../../../../docs/generated-sql.md");
    let list = doc.rsplit("```text").next().and_then(|block| block.split("```").next()).unwrap_or_default();
    list.split_whitespace().map(str::to_ascii_uppercase).collect()
}

/// Fails unless `sql` uses only the listed constructs, besides the words of the statements
/// the caller gave (`given`, for example a guard's base statement).
pub(crate) fn assert_allowed(sql: &str, given: &[&str]) {
    let allowed = constructs();
    let words: Vec<_> = Words::new(sql).collect();
    for word in &words {
        let upper = word.text.to_ascii_uppercase();
        assert!(
            allowed.contains(&upper) || given.iter().any(|g| g.eq_ignore_ascii_case(word.text)),
            "{:?} is not in docs/generated-sql.md's list of constructs: {sql}",
            word.text
        );
    }
    for pair in words.windows(2) {
        let between = &sql[pair[0].end..pair[1].end - pair[1].text.len()];
        assert!(
            !(pair[0].is("SELECT") && pair[1].is("FROM") && between.trim().is_empty()),
            "an empty target list (CockroachDB before 24.1 refuses it): {sql}"
        );
    }
}

//! What a guard expects, and how a failed guard is reported.

use std::fmt;

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
    label: Option<String>,
    expectation: Expectation,
    actual_rows: Option<u64>,
}

impl GuardFailure {
    pub(crate) fn new(label: Option<&str>, expectation: Expectation, actual_rows: Option<u64>) -> Self {
        GuardFailure { label: label.map(str::to_owned), expectation, actual_rows }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectation_reads_well() {
        assert_eq!(Expectation::Rows { min: 2, max: Some(2) }.to_string(), "exactly 2 rows");
        assert_eq!(Expectation::Rows { min: 0, max: Some(11) }.to_string(), "0 to 11 rows");
        assert_eq!(Expectation::Rows { min: 1, max: None }.to_string(), "at least 1 row");
        assert_eq!(Expectation::Rows { min: 1, max: Some(1) }.to_string(), "exactly 1 row");
    }
}

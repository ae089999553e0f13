//! Why a statement's result could not be read through its handle.

use super::statement::StatementRef;

/// Why a handle's result could not be read. The batch itself ran (and, for a committed
/// batch, committed); this is about the shape or type of one statement's rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The handle belongs to another batch. Use the results of the batch that issued it.
    #[error("the handle belongs to another batch")]
    ForeignHandle,
    /// The statement returned a number of rows the handle does not accept (`one` on zero
    /// rows, `optional` on two). Use a guard to make the batch fail instead of committing.
    #[error("{statement} returned {actual} rows, expected {expected}")]
    UnexpectedRowCount {
        /// The statement.
        statement: StatementRef,
        /// What the handle accepts.
        expected: &'static str,
        /// How many rows came back.
        actual: usize,
    },
    /// A row could not be decoded into the requested type: the Rust type does not match
    /// the statement's columns.
    #[error("{statement}: row {row} could not be decoded: {source}")]
    Decode {
        /// The statement.
        statement: StatementRef,
        /// The zero-based row.
        row: usize,
        /// Diesel's deserialization error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

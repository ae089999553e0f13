//! Turning a batch's raw answers into its verdict: the statements' results when it
//! committed, or an error that names the failing step, its typed cause, and what became
//! of every other statement.

mod classify;
mod committed;

pub(crate) use classify::{EndVerdict, Verdict, key_taken, not_committed, not_sent, settled_as_committed};
pub use committed::Committed;

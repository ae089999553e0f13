//! Batches: a plan of statements with its options, run as one exchange per attempt and
//! replayed as the retry policy allows.

mod attempts;
mod batch;
mod execute;
pub(crate) mod maintenance;
mod multiplexed;
pub(crate) mod record;
mod settle;

pub use batch::Batch;
pub(crate) use settle::fence_or_read;

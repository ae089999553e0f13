//! What a batch sends and how its answers will be read: fragments of statements with
//! their labels and failure mappings, guards as generated statements, typed handles to
//! results, transaction options, the retry policy and the idempotency marker.

mod fragment;
mod guard;
mod handle;
mod marker;
mod observe;
mod options;
mod retry;

pub(crate) use fragment::Entry;
pub use fragment::{Fragment, GuardBuilder, StatementBuilder};
pub use handle::{Affected, All, Handle, One, Optional, Results};
pub use marker::{DEFAULT_TABLE, IdempotencyKey};
pub(crate) use marker::{Marker, MarkerRow, ddl, fence_sql, key_taken, lookup_sql, purge_sql, quote_table};
pub use observe::{Observed, Observer, StatementEvent};
pub use options::IsolationLevel;
pub(crate) use options::TransactionOptions;
pub use retry::RetryPolicy;

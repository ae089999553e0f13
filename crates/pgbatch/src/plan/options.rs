//! Transaction options: isolation level, read only, deferrable.

use std::borrow::Cow;

/// A transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `READ COMMITTED`, PostgreSQL's default.
    ReadCommitted,
    /// `REPEATABLE READ`: one snapshot for the whole batch.
    RepeatableRead,
    /// `SERIALIZABLE`: as if batches ran one at a time. Conflicts fail with a serialization
    /// failure, which pgbatch retries when the batch's retry policy allows.
    Serializable,
}

impl IsolationLevel {
    fn as_sql(self) -> &'static str {
        match self {
            IsolationLevel::ReadCommitted => "READ COMMITTED",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::Serializable => "SERIALIZABLE",
        }
    }
}

/// How a batch's transaction starts. The default is the server's default: `BEGIN`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct TransactionOptions {
    pub(crate) isolation: Option<IsolationLevel>,
    pub(crate) read_only: bool,
    pub(crate) deferrable: bool,
}

impl TransactionOptions {
    /// The `BEGIN` statement that applies these options.
    pub(crate) fn begin_sql(&self) -> Cow<'static, str> {
        if *self == TransactionOptions::default() {
            return Cow::Borrowed("BEGIN");
        }
        let mut modes = Vec::with_capacity(3);
        if let Some(isolation) = self.isolation {
            modes.push(format!("ISOLATION LEVEL {}", isolation.as_sql()));
        }
        if self.read_only {
            modes.push("READ ONLY".to_owned());
        }
        if self.deferrable {
            modes.push("DEFERRABLE".to_owned());
        }
        Cow::Owned(format!("BEGIN {}", modes.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements_use_listed_constructs_only() {
        for isolation in [
            None,
            Some(IsolationLevel::ReadCommitted),
            Some(IsolationLevel::RepeatableRead),
            Some(IsolationLevel::Serializable),
        ] {
            let options = TransactionOptions { isolation, read_only: true, deferrable: true };
            crate::codec::constructs::assert_allowed(&options.begin_sql(), &[]);
        }
    }

    #[test]
    fn begin_statements() {
        assert_eq!(TransactionOptions::default().begin_sql(), "BEGIN");
        let options =
            TransactionOptions { isolation: Some(IsolationLevel::Serializable), read_only: true, deferrable: true };
        assert_eq!(options.begin_sql(), "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE");
    }
}

//! Why a statement could not be made ready to send.

/// Why a statement could not be made ready to send. Always raised before anything of the
/// batch is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Diesel could not render the statement's SQL. Fix the query.
    #[error("Diesel could not render the SQL: {source}")]
    Render {
        /// Diesel's error.
        source: diesel::result::Error,
    },
    /// A bind value could not be encoded (its `ToSql` implementation failed, or the value
    /// is too large for the protocol). Fix or validate the value.
    #[error("bind {bind} could not be encoded: {source}")]
    Encode {
        /// The zero-based position of the bind in the statement.
        bind: usize,
        /// The encoder's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The statement has more binds than the PostgreSQL protocol can carry in one
    /// statement. Split it (for example a multi-row insert) into several statements of the
    /// batch.
    #[error("{count} binds, more than the protocol's limit of {max}")]
    TooManyBinds {
        /// How many binds the statement has.
        count: usize,
        /// The protocol's limit.
        max: usize,
    },
    /// The statement controls transactions itself (`COMMIT`, `SAVEPOINT`, ...), uses the
    /// `COPY` sub-protocol, or is refused by PostgreSQL inside a transaction block
    /// (`VACUUM`, `CREATE INDEX CONCURRENTLY`, ...). Run it outside a batch.
    #[error("{keywords} is not allowed in a batch: {reason}")]
    NotAllowedInTransaction {
        /// The statement's leading keywords.
        keywords: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The statement would change the session rather than the transaction (`SET` without
    /// `LOCAL`, `LISTEN`, `PREPARE`, a temporary table that outlives the transaction...).
    /// A batch is a transaction: its effects end with it, so that a pooled connection
    /// goes back clean. The hint names the transaction-scoped form to use instead.
    #[error("{keywords} would change the session, not the transaction: {hint}")]
    SessionState {
        /// The statement's leading keywords.
        keywords: String,
        /// What to write instead.
        hint: &'static str,
    },
    /// The SQL text cannot be sent as it is.
    #[error("invalid SQL: {reason}")]
    InvalidSql {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A guard was put on a statement that neither returns nor modifies rows.
    #[error("a row-count guard needs a statement that returns or modifies rows")]
    GuardOnStatementWithoutRows,
    /// A row-count guard was given a range that no count can satisfy (`..0`, `5..=2`).
    #[error("a row-count guard's range {range} accepts no count")]
    EmptyRowRange {
        /// The range as it was given, for example `..0`.
        range: String,
    },
    /// A custom type used by a bind does not exist in the database the connection is on.
    /// Create the type (run the migrations) or fix its name in the Diesel schema.
    #[error("custom type {name} does not exist in this database")]
    UnknownType {
        /// The type's name, schema-qualified when Diesel gave a schema.
        name: String,
    },
}

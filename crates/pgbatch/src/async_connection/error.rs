//! What a diesel-async query's answers and refusals are as `diesel::result::Error`: the
//! kinds diesel-async gives the same SQLSTATEs, and honest words for a lost connection.

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

use crate::error::{ServerError, SqlState, WireError};
use crate::protocol::{Ending, NotSent};

/// The error of a request whose answers ended in `ending` (anything but done).
pub(super) fn from_ending(ending: Ending) -> DieselError {
    match ending {
        Ending::Done => unreachable!("a request that ended as asked is not an error"),
        Ending::Failed { error, .. } => from_server(*error),
        Ending::Lost { error, .. } => DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new(format!(
                "the connection was lost after the request was sent, so it may have run (and, outside a \
                 transaction, committed): {error}"
            )),
        ),
    }
}

/// The error of a request that was not sent.
pub(super) fn from_not_sent(reason: NotSent) -> DieselError {
    match reason {
        NotSent::Closed => closed("the connection is closed: nothing was sent"),
        NotSent::Wire(error @ (WireError::Io(_) | WireError::Closed | WireError::Session(_))) => {
            closed(&format!("the connection failed before the request was sent: {error}"))
        }
        NotSent::Wire(error) => DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(error.to_string())),
        NotSent::UnknownType(error) => DieselError::SerializationError(Box::new(error)),
        NotSent::Encode { error, .. } => DieselError::SerializationError(Box::new(error)),
        NotSent::Prelude { error, cleared: false } => closed(&format!(
            "the session could not be reset before the request ({}: {}), so it did not run; the connection \
             was closed with the session, which may have held another holder's state",
            error.code().code(),
            error.message()
        )),
        NotSent::Prelude { error, cleared: true } => DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(format!(
                "the session reset before the request drew a cancel or failed its setup ({}: {}), so the request \
                 did not run; run it again",
                error.code().code(),
                error.message()
            )),
        ),
    }
}

fn closed(message: &str) -> DieselError {
    DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new(message.to_owned()))
}

/// A server's error, with the kind diesel-async gives its SQLSTATE.
pub(super) fn from_server(error: ServerError) -> DieselError {
    let kind = match *error.code() {
        SqlState::UNIQUE_VIOLATION => DatabaseErrorKind::UniqueViolation,
        SqlState::FOREIGN_KEY_VIOLATION => DatabaseErrorKind::ForeignKeyViolation,
        SqlState::RESTRICT_VIOLATION => DatabaseErrorKind::RestrictViolation,
        SqlState::EXCLUSION_VIOLATION => DatabaseErrorKind::ExclusionViolation,
        SqlState::T_R_SERIALIZATION_FAILURE => DatabaseErrorKind::SerializationFailure,
        SqlState::READ_ONLY_SQL_TRANSACTION => DatabaseErrorKind::ReadOnlyTransaction,
        SqlState::NOT_NULL_VIOLATION => DatabaseErrorKind::NotNullViolation,
        SqlState::CHECK_VIOLATION => DatabaseErrorKind::CheckViolation,
        _ if error.ended_session() => DatabaseErrorKind::ClosedConnection,
        _ => DatabaseErrorKind::Unknown,
    };
    DieselError::DatabaseError(kind, Box::new(Information(error)))
}

/// A server's error as Diesel shows it.
struct Information(ServerError);

impl DatabaseErrorInformation for Information {
    fn message(&self) -> &str {
        self.0.message()
    }

    fn details(&self) -> Option<&str> {
        self.0.detail()
    }

    fn hint(&self) -> Option<&str> {
        self.0.hint()
    }

    fn table_name(&self) -> Option<&str> {
        self.0.table()
    }

    fn column_name(&self) -> Option<&str> {
        self.0.column()
    }

    fn constraint_name(&self) -> Option<&str> {
        self.0.constraint()
    }

    fn statement_position(&self) -> Option<i32> {
        self.0.position().and_then(|position| position.try_into().ok())
    }
}

//! The server's own report of an error: every field of a PostgreSQL `ErrorResponse`.

use std::fmt;

pub use tokio_postgres::error::{Severity, SqlState};

/// An error reported by the server, with the fields PostgreSQL sends in its
/// `ErrorResponse` message.
///
/// The message, detail and hint can quote the values a statement was run with: keep them
/// out of logs that must not hold user data. `Display` shows the severity, the SQLSTATE and
/// the message, never the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    severity: String,
    parsed_severity: Option<Severity>,
    code: SqlState,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<u32>,
    where_: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    datatype: Option<String>,
    constraint: Option<String>,
    routine: Option<String>,
}

impl ServerError {
    /// Reads an `ErrorResponse`'s or `NoticeResponse`'s fields as the protocol decoder
    /// hands them over.
    pub(crate) fn parse(mut fields: postgres_protocol::message::backend::ErrorFields<'_>) -> Self {
        use fallible_iterator::FallibleIterator;
        let mut pairs = Vec::new();
        while let Ok(Some(field)) = fields.next() {
            pairs.push((field.type_(), String::from_utf8_lossy(field.value_bytes()).into_owned()));
        }
        Self::from_fields(pairs.iter().map(|(kind, value)| (*kind, value.as_str())))
    }

    /// Builds the error from an `ErrorResponse`'s fields, given as (field type, value)
    /// pairs in the order the server sent them. Fields a server leaves out stay `None`; a
    /// response without a code or message gets the generic `XX000` and an empty message.
    pub(crate) fn from_fields<'a>(fields: impl IntoIterator<Item = (u8, &'a str)>) -> Self {
        let mut error = ServerError {
            severity: String::new(),
            parsed_severity: None,
            code: SqlState::INTERNAL_ERROR,
            message: String::new(),
            detail: None,
            hint: None,
            position: None,
            where_: None,
            schema: None,
            table: None,
            column: None,
            datatype: None,
            constraint: None,
            routine: None,
        };
        let owned = |value: &str| Some(value.to_owned());
        for (kind, value) in fields {
            match kind {
                b'S' if error.severity.is_empty() => error.severity = value.to_owned(),
                // The non-localized severity (PostgreSQL 9.6+) is the one to parse.
                b'V' => {
                    error.parsed_severity = parse_severity(value);
                    if error.severity.is_empty() {
                        error.severity = value.to_owned();
                    }
                }
                b'C' => error.code = SqlState::from_code(value),
                b'M' => error.message = value.to_owned(),
                b'D' => error.detail = owned(value),
                b'H' => error.hint = owned(value),
                b'P' => error.position = value.parse().ok(),
                b'W' => error.where_ = owned(value),
                b's' => error.schema = owned(value),
                b't' => error.table = owned(value),
                b'c' => error.column = owned(value),
                b'd' => error.datatype = owned(value),
                b'n' => error.constraint = owned(value),
                b'R' => error.routine = owned(value),
                _ => {}
            }
        }
        if error.parsed_severity.is_none() {
            error.parsed_severity = parse_severity(&error.severity);
        }
        error
    }

    /// An error pgbatch reports in the server's words when the server's answer itself
    /// says what happened without an `ErrorResponse` (for example `COMMIT` answered with
    /// `ROLLBACK`).
    pub(crate) fn synthetic(code: SqlState, message: impl Into<String>) -> Self {
        let mut error = ServerError::from_fields([(b'V', "ERROR")]);
        error.code = code;
        error.message = message.into();
        error
    }

    /// The SQLSTATE code.
    pub fn code(&self) -> &SqlState {
        &self.code
    }
    /// The severity as the server sent it (possibly localized).
    pub fn severity(&self) -> &str {
        &self.severity
    }
    /// The severity, parsed; `None` for a severity this crate does not know.
    pub fn parsed_severity(&self) -> Option<Severity> {
        self.parsed_severity
    }
    /// The primary message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The detail, which may quote the values the statement ran with.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    /// The server's hint.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    /// The 1-based character position of the error in the statement's SQL.
    pub fn position(&self) -> Option<u32> {
        self.position
    }
    /// Where the error happened (a function call stack, a context line).
    pub fn where_(&self) -> Option<&str> {
        self.where_.as_deref()
    }
    /// The schema of the object the error is about.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
    /// The table the error is about.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }
    /// The column the error is about.
    pub fn column(&self) -> Option<&str> {
        self.column.as_deref()
    }
    /// The data type the error is about.
    pub fn datatype(&self) -> Option<&str> {
        self.datatype.as_deref()
    }
    /// The constraint the error is about.
    pub fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }
    /// The server routine that raised the error.
    pub fn routine(&self) -> Option<&str> {
        self.routine.as_deref()
    }

    /// Whether the server ended the session with this error (`FATAL` or `PANIC`).
    pub fn ended_session(&self) -> bool {
        matches!(self.parsed_severity, Some(Severity::Fatal | Severity::Panic))
    }
}

fn parse_severity(value: &str) -> Option<Severity> {
    Some(match value {
        "PANIC" => Severity::Panic,
        "FATAL" => Severity::Fatal,
        "ERROR" => Severity::Error,
        "WARNING" => Severity::Warning,
        "NOTICE" => Severity::Notice,
        "DEBUG" => Severity::Debug,
        "INFO" => Severity::Info,
        "LOG" => Severity::Log,
        _ => return None,
    })
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code.code(), self.message)
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_the_unlocalized_severity_wins() {
        let error = ServerError::from_fields([
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "23505"),
            (b'M', "duplicate key"),
            (b'D', "Key (email)=(a@b) already exists."),
            (b'n', "account_email_unique"),
            (b't', "account"),
        ]);
        assert_eq!(error.code(), &SqlState::UNIQUE_VIOLATION);
        assert_eq!(error.severity(), "FEHLER");
        assert_eq!(error.parsed_severity(), Some(Severity::Error));
        assert_eq!(error.constraint(), Some("account_email_unique"));
        assert_eq!(error.to_string(), "FEHLER 23505: duplicate key");
        assert!(!error.ended_session());
        assert!(ServerError::from_fields([(b'S', "FATAL")]).ended_session());
    }
}

//! The server process behind a connection, and ending it from another connection.
//!
//! A connection given up while its backend may still be inside a transaction (a batch
//! future dropped while the network stalled, a connection lost while a middlebox still
//! holds its bytes) leaves an *orphan*: a backend waiting for the rest of a pipeline,
//! holding the row locks of the statements it ran, until the server's TCP keepalive gives
//! up (two hours by default). A cancel request cannot end it (a backend reading its next
//! message ignores cancels), so pgbatch ends it with `pg_terminate_backend` from a new
//! connection.
//!
//! Ending a process by id is only safe when the id is the server's: behind PgBouncer the
//! process id a client is given is PgBouncer's own. So at start-up a connection reads its
//! backend's process id and start time from `pg_stat_activity` (in the same round trip as
//! the session setup) and keeps them only when the id is the one the server gave it; the
//! termination names both, so a process id the server has since reused is never hit.

use super::flight::Flight;
use super::state::{Connection, Terminate};
use super::step::queue_read;
use crate::protocol::{Answers, Ending};

/// Who the backend is, read at start-up.
pub(crate) const IDENTIFY: &str = "SELECT CAST(pid AS text), CAST(backend_start AS text) \
    FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()";

/// Ends the backend named by process id and start time, waiting up to 5 s for it to exit
/// (so that its locks are released when this returns).
const TERMINATE: &str = "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity \
    WHERE CAST(pid AS text) = $1 AND CAST(backend_start AS text) = $2";

/// [`TERMINATE`], only while the backend waits for its client: inside a transaction or in
/// the middle of a pipeline whose rest never came. A backend running what it was sent is
/// left to finish it.
const TERMINATE_ORPHAN: &str = "SELECT pg_catalog.pg_terminate_backend(pid, 5000) \
    FROM pg_catalog.pg_stat_activity WHERE CAST(pid AS text) = $1 AND CAST(backend_start AS text) = $2 \
    AND wait_event_type = 'Client' AND wait_event = 'ClientRead'";

/// The backend process of one connection, which can be ended from another.
#[derive(Debug)]
pub(crate) struct Backend {
    process_id: String,
    started: String,
}

impl Backend {
    /// The backend whose identity start-up read, when its process id is the one the
    /// server gave the connection (`key_process_id`).
    pub(crate) fn new(key_process_id: i32, identity: (i32, String)) -> Option<Backend> {
        let (process_id, started) = identity;
        (process_id == key_process_id && process_id != 0)
            .then(|| Backend { process_id: process_id.to_string(), started })
    }

    /// Ends the backend if it still runs (and, as `when` says, waits for its client), on
    /// `connection` (another one); returns whether it ended one. Needs the right to signal
    /// it (the same role, or `pg_signal_backend`).
    pub(crate) async fn terminate(&self, connection: &mut Connection, when: Terminate) -> bool {
        let sql = match when {
            Terminate::Always => TERMINATE,
            Terminate::IfWaitingForClient => TERMINATE_ORPHAN,
        };
        let mut flight = Flight::new();
        if queue_read(connection, &mut flight, sql, &[&self.process_id, &self.started]).is_err() {
            return false;
        }
        let Some(answers) = flight.land(connection).await.answers.pop() else { return false };
        if let Ending::Failed { error, .. } = &answers.ending {
            tracing::warn!(code = error.code().code(), "could not end an orphaned backend");
        }
        answers.outputs.first().and_then(|output| output.rows.first()).and_then(|row| row.value(0)) == Some(&[1])
    }
}

/// The process id and start time in the answers to [`IDENTIFY`].
pub(crate) fn identity(answers: &Answers) -> Option<(i32, String)> {
    if !matches!(answers.ending, Ending::Done) {
        return None;
    }
    let row = answers.outputs.first()?.rows.first()?;
    let text = |index| row.value(index).and_then(|value| std::str::from_utf8(value).ok());
    Some((text(0)?.parse().ok()?, text(1)?.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_statements_use_listed_constructs_only() {
        for sql in [super::IDENTIFY, super::TERMINATE, super::TERMINATE_ORPHAN] {
            crate::codec::constructs::assert_allowed(sql, &[]);
        }
    }
}

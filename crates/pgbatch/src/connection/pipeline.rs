//! Several exchanges in flight on one connection at once: each written as soon as it is
//! queued, their answers read in the order they were sent and handed to each in turn.
//!
//! ```text
//! client                                                       server
//!   |-- batch A: BEGIN ... COMMIT, Sync, ROLLBACK, reset    -->|
//!   |-- batch B: BEGIN ... COMMIT, Sync, ROLLBACK, reset    -->|  B is written while A's
//!   |<-- A's answers, Ready ... ------------------------------|  answers are on their way
//!   |-- batch C ...                                         -->|
//!   |<-- B's answers, Ready ... ------------------------------|
//! ```
//!
//! Every exchange is a unit of its own ending in one `Sync`, after a prelude of its own
//! (`ROLLBACK` of whatever the one ahead left, and the session reset when one ahead used the
//! session) and followed by its own `ROLLBACK`, so the server runs each as if it had the
//! connection to itself: a failure skips the rest of its own unit only, and a unit whose
//! prelude failed never runs. A lost connection lands every flight still due with the
//! failure, each judged by how much of it was written.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use postgres_protocol::message::backend::Message;

use super::flight::{Flight, Landed, Reader, poll_answers};
use super::state::{Connection, TxStatus};
use crate::error::WireError;
use crate::protocol::{Prelude, PreludeOutcome};

/// A flight, the prelude its unit was written with, and what its sender waits on.
struct InFlight<T> {
    flight: Flight,
    prelude: Prelude,
    sender: T,
}

/// What a flight brought back, and what the connection said during it.
pub(crate) struct Arrival {
    pub(crate) landed: Landed,
    /// The server said, while this flight was the one answering, that a commit stopped
    /// waiting for synchronous replication.
    pub(crate) replication_unconfirmed: bool,
    /// Whether the connection may take more flights: open, left idle by this flight, its
    /// session not left uncleared by a failed reset, and not read-only. A transaction left
    /// open would swallow the next flight, a session a reset could not clear is not to be
    /// trusted (each flight behind resets for itself, but the next one may not), and a
    /// read-only session fails every write: the connection is then retired once the
    /// flights due have landed, and the next flight opens another.
    pub(crate) connection_fit: bool,
}

/// Flights queued on one connection, oldest first; `T` is what each one's sender waits on.
pub(crate) struct Pipeline<T> {
    flights: VecDeque<InFlight<T>>,
}

impl<T> Pipeline<T> {
    pub(crate) fn new() -> Self {
        Pipeline { flights: VecDeque::new() }
    }

    /// How many flights are due.
    pub(crate) fn len(&self) -> usize {
        self.flights.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Adds a flight just queued on the connection (behind every flight already due).
    pub(crate) fn push(&mut self, flight: Flight, prelude: Prelude, sender: T) {
        self.flights.push_back(InFlight { flight, prelude, sender });
    }

    /// Writes what is queued and reads answers, handing each landed flight to `arrived`
    /// in order; ready once no flight is due (all landed, or all failed with the
    /// connection).
    pub(crate) fn poll(
        &mut self,
        connection: &mut Connection,
        cx: &mut Context<'_>,
        arrived: impl FnMut(T, Arrival),
    ) -> Poll<()> {
        if self.flights.is_empty() {
            return Poll::Ready(());
        }
        poll_answers(&mut Landing { pipeline: self, arrived }, connection, cx)
    }
}

/// A pipeline being read, and where its landed flights go.
struct Landing<'p, T, F> {
    pipeline: &'p mut Pipeline<T>,
    arrived: F,
}

impl<T, F: FnMut(T, Arrival)> Reader for Landing<'_, T, F> {
    fn answered(&self) -> bool {
        self.pipeline.flights.is_empty()
    }

    /// Hands the message to the oldest flight; lands it once it has every answer.
    fn take(&mut self, connection: &mut Connection, message: Message) -> Result<(), WireError> {
        let front = self
            .pipeline
            .flights
            .front_mut()
            .ok_or_else(|| WireError::Protocol("a message outside any request".into()))?;
        if !front.flight.accept(connection, message)? {
            return Ok(());
        }
        let InFlight { flight, prelude, sender } = self.pipeline.flights.pop_front().expect("checked above");
        let replication_unconfirmed = connection.replication_unconfirmed();
        connection.forget_replication_warning();
        let landed = flight.landed();
        let outcome = landed.answers.first().map_or(PreludeOutcome::Unknown, |answers| answers.prelude);
        let untrusted = connection.prelude_landed(prelude, outcome);
        let connection_fit =
            !connection.is_closed() && connection.status() == TxStatus::Idle && !untrusted && !landed.refused_writes();
        (self.arrived)(sender, Arrival { landed, replication_unconfirmed, connection_fit });
        Ok(())
    }

    /// The connection failed: it is broken, and every flight lands with the failure, each
    /// judged by how much of it had been written.
    fn fail(&mut self, connection: &mut Connection, error: WireError) {
        let mut error = Some(error);
        for InFlight { mut flight, sender, .. } in self.pipeline.flights.drain(..) {
            // The first flight gets the error itself, the others a copy of its kind.
            flight.fail(connection, error.take().unwrap_or(WireError::Closed));
            (self.arrived)(
                sender,
                Arrival { landed: flight.landed(), replication_unconfirmed: false, connection_fit: false },
            );
        }
    }
}

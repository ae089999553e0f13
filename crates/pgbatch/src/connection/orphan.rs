//! A connection dropped with answers due: its answers are read in the background, and a
//! backend left waiting for its client (the rest of a stalled pipeline, inside its
//! transaction, holding its locks) is ended from another connection, so that it releases
//! them within a second of the caller giving up.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::state::{Connection, EndBackend, Terminate};
use crate::connect::{Io, without_waiting};

/// How long a dropped connection with answers due waits for the next of them before it
/// looks at its backend from another connection, and ends it if it is an orphan: waiting
/// for its client (for the rest of a stalled pipeline, inside its transaction), holding its
/// row locks for nothing. A backend still running what it was sent is left to finish it (a
/// batch sent whole runs whole), and looked at again after the same time.
const QUIET_ON_DROP: Duration = Duration::from_millis(250);

/// The longest a dropped connection keeps waiting for its answers; then its backend is
/// ended whatever it does.
const DRAIN_ON_DROP: Duration = Duration::from_secs(10);

impl Drop for Connection {
    fn drop(&mut self) {
        let pending = self.pending;
        let end_backend = self.end_backend.take();
        let runtime = tokio::runtime::Handle::try_current();
        let Some(mut io) = self.io.take().filter(|_| !self.broken) else {
            // Lost with answers due: the server's side may still be open (a middlebox
            // closed only ours), its backend inside the transaction. End it.
            if let (Some(end_backend), Ok(runtime)) = (end_backend.filter(|_| pending > 0), runtime) {
                runtime.spawn(end_backend(Terminate::Always));
            }
            return;
        };
        // Answers still due: read them, then close. Whenever none has come for a moment,
        // end the backend if it waits for its client (the rest of a stalled pipeline, inside
        // its transaction, holding its locks); one still running what it was sent finishes
        // it. Otherwise say goodbye; closing is what matters.
        let mut goodbye = BytesMut::new();
        frontend::terminate(&mut goodbye);
        if pending == 0 && !io.has_unwritten() {
            io.queue().extend_from_slice(&goodbye);
            let _ = without_waiting(|cx| io.poll_write(cx));
            return;
        }
        let Ok(runtime) = runtime else { return };
        runtime.spawn(async move {
            let drain = drain_or_end(&mut io, pending, end_backend.as_ref()).await;
            if drain == Drain::Drained {
                io.queue().extend_from_slice(&goodbye);
            }
            io.close().await;
            // An orphan already ended is not looked for again: that would open one more
            // connection for nothing.
            if let Some(end_backend) = end_backend.filter(|_| drain == Drain::GaveUp) {
                end_backend(Terminate::Always).await;
            }
        });
    }
}

/// How draining a dropped connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Every answer due came: the backend is idle.
    Drained,
    /// The backend waited for its client and was ended from another connection.
    Ended,
    /// The stream failed, or the answers did not come within [`DRAIN_ON_DROP`]: the backend
    /// may still be there.
    GaveUp,
}

/// Reads the `pending` answers still due on a dropped connection's stream (writing what is
/// queued first). Whenever nothing has arrived for [`QUIET_ON_DROP`], asks `end_backend` to
/// end the backend if it waits for its client, and stops when it did; gives up on a failed
/// stream or after [`DRAIN_ON_DROP`].
async fn drain_or_end(io: &mut Io, pending: usize, end_backend: Option<&EndBackend>) -> Drain {
    let deadline = tokio::time::Instant::now() + DRAIN_ON_DROP;
    let mut due = pending;
    let mut written = false;
    while due > 0 && tokio::time::Instant::now() < deadline {
        let progress = tokio::time::timeout(QUIET_ON_DROP, async {
            if !written {
                io.write_all().await?;
                written = true;
            }
            if let Message::ReadyForQuery(_) = io.read_message().await? {
                due -= 1;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        match progress {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Drain::GaveUp,
            Err(_quiet) => {
                if let Some(end_backend) = end_backend
                    && end_backend(Terminate::IfWaitingForClient).await
                {
                    return Drain::Ended;
                }
            }
        }
    }
    if due == 0 { Drain::Drained } else { Drain::GaveUp }
}

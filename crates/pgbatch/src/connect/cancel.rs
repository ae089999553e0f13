//! Cancel requests: asking the server, over a connection of their own, to cancel what a
//! backend is running.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::socket::{Target, open_socket};
use crate::error::ConnectError;

/// How long a cancel request waits for the server (or PgBouncer) to close its connection,
/// which is how it says it has taken the request.
const CANCEL_ACKNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Cancels whatever a connection's backend is running, from anywhere.
///
/// The server acts on a cancel request when it arrives: a statement running then fails
/// with `57014` (`query_canceled`). A batch hit by it fails as a whole and reports the
/// step it landed on; nothing of it is committed unless it landed after `COMMIT`.
#[derive(Debug, Clone)]
pub struct CancelToken {
    target: Target,
    process_id: i32,
    secret_key: i32,
}

impl CancelToken {
    pub(crate) fn new(target: Target, process_id: i32, secret_key: i32) -> Self {
        CancelToken { target, process_id, secret_key }
    }

    /// The backend's process id, as `pg_stat_activity.pid` shows it.
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    /// Sends the cancel request, and returns once the server has taken it.
    ///
    /// Like libpq's `PQcancel`, it waits for the other side to close the connection, which
    /// is how the server (or PgBouncer, once it has forwarded the request) says it has read
    /// it; closing first would let PgBouncer drop the request unforwarded (and trips a bug
    /// of PgBouncer before 1.19.1 that ends PgBouncer itself). The server acts on the
    /// request asynchronously: a statement may still finish before the cancel lands.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Io`] when the server cannot be reached or the connection fails;
    /// [`ConnectError::Timeout`] when the other side has not closed the connection within
    /// 10 s: the request may not have been acted on.
    pub async fn cancel_query(&self) -> Result<(), ConnectError> {
        let host = self.target.to_string();
        let mut socket = open_socket(&self.target, None).await?;
        let mut request = BytesMut::new();
        frontend::cancel_request(self.process_id, self.secret_key, &mut request);
        let io_error = |source| ConnectError::Io { host: host.clone(), source };
        socket.write_all(&request).await.map_err(io_error)?;
        socket.flush().await.map_err(io_error)?;
        // The server sends nothing back: end of stream is the acknowledgement.
        let acknowledged = tokio::time::timeout(CANCEL_ACKNOWLEDGE_TIMEOUT, async {
            let mut sink = [0u8; 64];
            while socket.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        match acknowledged {
            Ok(Ok(())) => Ok(()),
            // A reset after the request was written also means the other side let go of it.
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Ok(Err(error)) => Err(io_error(error)),
            Err(_) => Err(ConnectError::Timeout { host, after: CANCEL_ACKNOWLEDGE_TIMEOUT }),
        }
    }
}

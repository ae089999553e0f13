//! Cancel requests: asking the server, over a connection of their own, to cancel what a
//! backend is running.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::startup::{Target, open_socket};
use crate::error::ConnectError;

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

    /// Sends the cancel request.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Io`] when the server cannot be reached.
    pub async fn cancel_query(&self) -> Result<(), ConnectError> {
        let mut socket = open_socket(&self.target, None).await?;
        let mut request = BytesMut::new();
        frontend::cancel_request(self.process_id, self.secret_key, &mut request);
        let io_error = |source| ConnectError::Io { host: self.target.to_string(), source };
        socket.write_all(&request).await.map_err(io_error)?;
        // The server closes the connection once it has read the request.
        let _ = socket.shutdown().await;
        Ok(())
    }
}

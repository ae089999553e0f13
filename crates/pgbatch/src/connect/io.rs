//! The byte stream under a connection, with its read and write buffers.
//!
//! Writing and reading are separate, non-blocking steps so that one task can drive both at
//! once: a long pipeline is written while its first answers are read, and neither side's
//! socket buffer can fill up and stall the other.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection can run on: TCP, a Unix socket, or TLS over either.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// How much room a read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

/// A stream and its buffers.
pub(crate) struct Io {
    stream: Box<dyn Stream>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Bytes handed to the stream since the connection opened.
    written: u64,
    /// Whether written bytes may still sit in the stream's own buffer (TLS).
    unflushed: bool,
}

impl Io {
    pub(crate) fn new(stream: Box<dyn Stream>) -> Self {
        Io {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            written: 0,
            unflushed: false,
        }
    }

    /// The buffer to append messages to; they go out with the next write.
    pub(crate) fn queue(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Bytes queued since the connection opened, written or not: the offset a message
    /// ends at, to compare with [`written`](Self::written) later.
    pub(crate) fn queued(&self) -> u64 {
        self.written + self.write_buf.len() as u64
    }

    /// Bytes handed to the stream since the connection opened.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Whether queued bytes are still to be written.
    pub(crate) fn has_unwritten(&self) -> bool {
        !self.write_buf.is_empty() || self.unflushed
    }

    /// Writes and flushes everything queued.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write_buf.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.write_buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(n);
            self.written += n as u64;
            self.unflushed = true;
        }
        if self.unflushed {
            std::task::ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The next whole message from the server; `None` when the server closed the
    /// connection.
    pub(crate) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Message>>> {
        loop {
            // The answers without a body (three of every statement's four) are consumed in
            // place: no buffer is split off for them.
            if let [tag, 0, 0, 0, 4, ..] = self.read_buf[..] {
                let bodiless = match tag {
                    b'1' => Some(Message::ParseComplete),
                    b'2' => Some(Message::BindComplete),
                    b'n' => Some(Message::NoData),
                    b'I' => Some(Message::EmptyQueryResponse),
                    _ => None,
                };
                if let Some(message) = bodiless {
                    self.read_buf.advance(5);
                    return Poll::Ready(Ok(Some(message)));
                }
            }
            if let Some(message) = Message::parse(&mut self.read_buf)? {
                return Poll::Ready(Ok(Some(message)));
            }
            self.read_buf.reserve(READ_CHUNK);
            let n =
                std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read_buf))?;
            if n == 0 {
                return Poll::Ready(if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection mid-message"))
                });
            }
        }
    }

    /// Sends what is queued and waits until it is written.
    pub(crate) async fn write_all(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// Waits for the next message; an error when the server closed the connection.
    pub(crate) async fn read_message(&mut self) -> io::Result<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx))
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"))
    }

    /// Shuts the stream down, after a best-effort write of what is queued.
    pub(crate) async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.write_all().await;
        let _ = self.stream.shutdown().await;
    }
}

/// A context whose waker does nothing: for steps that must not wait (checking a pooled
/// connection, queuing a `ROLLBACK` from `Drop`).
pub(crate) fn without_waiting<T>(step: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    step(&mut Context::from_waker(std::task::Waker::noop()))
}

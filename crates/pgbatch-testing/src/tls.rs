//! TLS for the harness's own tokio-postgres connections (creating and dropping databases,
//! migrations, `TestDatabase::connect`), made the way pgbatch makes it: its rustls client
//! configuration for the URL's `sslmode` and `sslrootcert`, so that every URL the library
//! accepts works for tests and examples too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// Makes TLS sessions for tokio-postgres as pgbatch would for `config`.
#[derive(Clone)]
pub(crate) struct HarnessTls {
    pub(crate) config: pgbatch::Config,
}

impl MakeTlsConnect<Socket> for HarnessTls {
    type Stream = HarnessTlsStream;
    type TlsConnect = Connect;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        let client = self.config.rustls_client_config(domain)?;
        let name = ServerName::try_from(domain.to_owned())?;
        Ok(Connect { connector: TlsConnector::from(Arc::new(client)), name })
    }
}

/// One handshake, to one server name.
pub(crate) struct Connect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = HarnessTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<HarnessTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move { self.connector.connect(self.name, stream).await.map(HarnessTlsStream) })
    }
}

/// A TLS session over a tokio-postgres socket.
pub(crate) struct HarnessTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for HarnessTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // pgbatch does not implement SCRAM-SHA-256-PLUS either (it refuses
        // channel_binding=require): the harness authenticates the way the library does.
        ChannelBinding::none()
    }
}

impl AsyncRead for HarnessTlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for HarnessTlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

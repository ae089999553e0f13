//! TLS negotiation, as the configuration's `sslmode` asks for it (libpq's meanings).
//!
//! | `sslmode`     | asks for TLS | without it | verifies the chain | verifies the host name |
//! |---------------|--------------|------------|--------------------|------------------------|
//! | `disable`     | no           | -          | -                  | -                      |
//! | `prefer`      | yes          | clear text | no                 | no                     |
//! | `require`     | yes          | refused    | only with `sslrootcert` | no                |
//! | `verify-ca`   | yes          | refused    | yes                | no                     |
//! | `verify-full` | yes          | refused    | yes                | yes                    |
//!
//! Roots come from `sslrootcert` (a PEM file, or `system` for the operating system's
//! store), else from `~/.postgresql/root.crt` as libpq reads them.

use super::config::Config;
use super::io::Stream;
#[cfg(feature = "rustls")]
use super::modes::SslMode;
use crate::error::ConnectError;

/// Sets up TLS on `stream` when `config` asks for it.
#[cfg(not(feature = "rustls"))]
pub(crate) async fn negotiate(
    stream: Box<dyn Stream>,
    config: &Config,
    host: &str,
) -> Result<Box<dyn Stream>, ConnectError> {
    match config.get_ssl_mode() {
        mode if !mode.requires_tls() => Ok(stream),
        mode => Err(ConnectError::Config(format!(
            "sslmode={} for {host} needs TLS, and this build of pgbatch has none: enable its `rustls` feature",
            mode.name()
        ))),
    }
}

/// Sets up TLS on `stream` when `config` asks for it.
#[cfg(feature = "rustls")]
pub(crate) async fn negotiate(
    mut stream: Box<dyn Stream>,
    config: &Config,
    host: &str,
) -> Result<Box<dyn Stream>, ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mode = config.get_ssl_mode();
    if mode == SslMode::Disable {
        return Ok(stream);
    }
    // The client configuration first: a missing root certificate fails before any byte.
    let client_config = rustls_setup::client_config(config, host)?;
    let io_error = |source| ConnectError::Io { host: host.to_owned(), source };
    let mut request = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    stream.write_all(&request).await.map_err(io_error)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io_error)?;
    match answer[0] {
        b'S' => {}
        b'N' if mode.requires_tls() => {
            return Err(ConnectError::Tls {
                host: host.to_owned(),
                reason: format!(
                    "the server does not offer TLS, and sslmode={} requires it: enable ssl on the server \
                     or lower sslmode",
                    mode.name()
                ),
            });
        }
        b'N' => return Ok(stream),
        other => {
            return Err(ConnectError::Protocol {
                host: host.to_owned(),
                reason: format!("unexpected answer {other:#04x} to the TLS request"),
            });
        }
    }
    let server_name = rustls_setup::server_name(host)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config));
    match connector.connect(server_name, stream).await {
        Ok(tls) => Ok(Box::new(tls)),
        Err(error) => Err(ConnectError::Tls { host: host.to_owned(), reason: rustls_setup::explain(&error, mode) }),
    }
}

#[cfg(feature = "rustls")]
impl Config {
    /// The rustls client configuration pgbatch connects to `host` with (feature
    /// `rustls`): libpq's meaning of `sslmode` and `sslrootcert`, for a client of another
    /// library to connect as pgbatch does (pgbatch-testing's tokio-postgres connections do).
    ///
    /// # Errors
    ///
    /// [`ConnectError::Config`] when the root certificates cannot be read, or a verifying
    /// `sslmode` has none.
    pub fn rustls_client_config(&self, host: &str) -> Result<tokio_rustls::rustls::ClientConfig, ConnectError> {
        rustls_setup::client_config(self, host)
    }
}

#[cfg(feature = "rustls")]
mod rustls_setup {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{
        CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    };

    use super::{Config, ConnectError, SslMode};

    /// The rustls client configuration for `config`'s `sslmode` and roots.
    pub(super) fn client_config(config: &Config, host: &str) -> Result<ClientConfig, ConnectError> {
        let provider = crypto_provider();
        let config_error = |reason: String| ConnectError::Config(format!("TLS for {host}: {reason}"));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?;
        let mode = config.get_ssl_mode();
        let roots = match (mode, root_source(config)) {
            // libpq: `require` verifies the chain when a root certificate is given.
            (SslMode::Require, Some(source)) | (SslMode::VerifyCa | SslMode::VerifyFull, Some(source)) => {
                Some(load_roots(&source).map_err(config_error)?)
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(config_error(format!(
                    "sslmode={} verifies the server's certificate and needs the CA that signed it: set \
                     sslrootcert=/path/to/ca.pem (or sslrootcert=system for the system's roots), or put it in \
                     ~/.postgresql/root.crt",
                    mode.name()
                )));
            }
            _ => None,
        };
        let algorithms = provider.signature_verification_algorithms;
        let chain = match roots {
            None => None,
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| config_error(e.to_string()))?,
            ),
        };
        let verifier = Arc::new(LibpqVerifier { chain, host_name: mode == SslMode::VerifyFull, algorithms });
        Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
    }

    /// The application's process-wide provider when it installed one (rustls's convention:
    /// `CryptoProvider::install_default`, for example aws-lc-rs's, whose key exchange is
    /// post-quantum), else ring's, which builds with nothing beyond a C compiler.
    fn crypto_provider() -> Arc<CryptoProvider> {
        // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange;
        // it stays the fallback so that the feature does not build aws-lc, a large C library,
        // into every application.
        #[allow(deprecated)]
        CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(ring::default_provider()))
    }

    /// The name the server's certificate must carry (a DNS name or an IP address).
    pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
        ServerName::try_from(host.to_owned())
            .map_err(|_| ConnectError::Config(format!("TLS: {host:?} is neither a DNS name nor an IP address")))
    }

    /// What a failed handshake means, and what to do about it.
    pub(super) fn explain(error: &std::io::Error, mode: SslMode) -> String {
        let tls = error.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>());
        match tls {
            Some(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => format!(
                "the server's certificate does not name this host ({error}); connect with a host name the \
                 certificate names, or use sslmode=verify-ca to check the CA only (sslmode={})",
                mode.name()
            ),
            Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
                format!(
                    "the server's certificate was not signed by a CA in sslrootcert ({error}); point sslrootcert at \
                     the CA that signed it (sslmode={})",
                    mode.name()
                )
            }
            _ => format!("{error} (sslmode={})", mode.name()),
        }
    }

    enum RootSource {
        File(PathBuf),
        System,
    }

    /// `sslrootcert`, else libpq's default file when it exists.
    fn root_source(config: &Config) -> Option<RootSource> {
        match config.get_ssl_root_cert() {
            Some(path) if path == Path::new("system") => Some(RootSource::System),
            Some(path) => Some(RootSource::File(path.to_owned())),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                .filter(|path| path.is_file())
                .map(RootSource::File),
        }
    }

    fn load_roots(source: &RootSource) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match source {
            RootSource::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!("sslrootcert=system found no usable root certificate ({:?})", found.errors));
                }
            }
            RootSource::File(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read sslrootcert {shown}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("sslrootcert {shown} is not a PEM certificate file: {e}"))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("sslrootcert {shown} holds no usable certificate"));
                }
            }
        }
        Ok(roots)
    }

    /// The server certificate check of each libpq mode: none at all (`prefer`, `require`
    /// without roots: encrypt and trust any certificate, as libpq does), the chain only
    /// (`verify-ca`, or `require` with roots), or the chain and the host name
    /// (`verify-full`). The handshake's signatures are always checked, so the server must
    /// hold the key of the certificate it shows.
    #[derive(Debug)]
    struct LibpqVerifier {
        chain: Option<Arc<WebPkiServerVerifier>>,
        host_name: bool,
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for LibpqVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, TlsError> {
            let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
            match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Err(TlsError::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) if !self.host_name => Ok(ServerCertVerified::assertion()),
                verified => verified,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            tokio_rustls::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            tokio_rustls::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

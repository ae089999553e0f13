//! TLS negotiation, as the configuration's `sslmode` asks for it.

use super::config::{Config, SslMode};
use super::io::Stream;
use crate::error::ConnectError;

/// Sets up TLS on `stream` when `config` asks for it.
pub(crate) async fn negotiate(
    stream: Box<dyn Stream>,
    config: &Config,
    host: &str,
) -> Result<Box<dyn Stream>, ConnectError> {
    match config.get_ssl_mode() {
        mode if !mode.requires_tls() => Ok(stream),
        mode => Err(ConnectError::Config(format!(
            "sslmode={} for {host} needs TLS, and this build of pgbatch has none: enable its `rustls` feature",
            match mode {
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                _ => "verify-full",
            }
        ))),
    }
}

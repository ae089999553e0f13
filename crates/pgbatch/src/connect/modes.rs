//! The connection modes libpq names and tokio-postgres knows only in part: how a connection
//! uses TLS (`sslmode`) and which server of several it accepts (`target_session_attrs`).

use crate::error::ConnectError;

/// How a connection uses TLS, as libpq's `sslmode` means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying its certificate; connect in
    /// the clear otherwise. libpq's default. Without the `rustls` feature, always in the
    /// clear.
    #[default]
    Prefer,
    /// Always use TLS; fail when the server does not offer it. The certificate is not
    /// verified (as in libpq, unless a root certificate is given).
    Require,
    /// Always use TLS, and verify that the server's certificate was signed by the trusted
    /// root (`sslrootcert`).
    VerifyCa,
    /// As [`VerifyCa`](SslMode::VerifyCa), and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub(super) fn parse(value: &str) -> Result<Self, ConnectError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnectError::Config(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// The name libpq gives this mode (`verify-full`, ...), as a URL writes it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection must be encrypted.
    pub(crate) fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Which server of several listed hosts a connection may end on, as libpq's
/// `target_session_attrs` means it. A host that does not qualify is closed and the next one
/// tried; the connection fails, listing each host's reason, when none qualifies.
///
/// The server's state is read from what it reports at start-up (`in_hot_standby` and
/// `default_transaction_read_only`, PostgreSQL 14 and later), so choosing costs no round
/// trip; where they are not reported (older servers, behind PgBouncer) one query reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server (the default).
    #[default]
    Any,
    /// A server that accepts writes: not a standby, and not `default_transaction_read_only`.
    ReadWrite,
    /// A server that does not accept writes: a standby, or `default_transaction_read_only`.
    ReadOnly,
    /// A server that is not a standby.
    Primary,
    /// A hot standby.
    Standby,
    /// A hot standby when one of the hosts is; otherwise any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub(super) fn parse(value: &str) -> Result<Self, ConnectError> {
        Ok(match value {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                return Err(ConnectError::Config(format!(
                    "target_session_attrs {other:?} is not one of any, read-write, read-only, primary, standby, \
                     prefer-standby"
                )));
            }
        })
    }

    /// The name libpq gives this value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

//! Where and how to connect: tokio-postgres's configuration (hosts, user, database,
//! timeouts) plus TLS as libpq means it (`sslmode` up to `verify-full`, `sslrootcert`).

use std::path::PathBuf;
use std::str::FromStr;

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
    fn parse(value: &str) -> Result<Self, ConnectError> {
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

    /// The name libpq gives this mode.
    pub(crate) fn name(self) -> &'static str {
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

/// Where and how to connect.
///
/// Parse it from a `postgres://` URL or a libpq `key=value` string; every key
/// tokio-postgres understands works, and `sslmode` and `sslrootcert` mean what they mean
/// to libpq:
///
/// ```
/// let config: pgbatch::Config =
///     "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem".parse()?;
/// assert_eq!(config.get_ssl_mode(), pgbatch::SslMode::VerifyFull);
/// # Ok::<(), pgbatch::ConnectError>(())
/// ```
///
/// A `tokio_postgres::Config` converts into one, keeping its `sslmode`.
#[derive(Debug, Clone)]
pub struct Config {
    postgres: tokio_postgres::Config,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
}

impl Config {
    /// The underlying tokio-postgres configuration: hosts, ports, user, password,
    /// database, options, application name, connect timeout, keepalives.
    pub fn postgres(&self) -> &tokio_postgres::Config {
        &self.postgres
    }

    /// Changes the underlying tokio-postgres configuration.
    pub fn postgres_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.postgres
    }

    /// Sets the TLS mode.
    pub fn ssl_mode(&mut self, mode: SslMode) -> &mut Self {
        self.ssl_mode = mode;
        self
    }

    /// The TLS mode.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Trusts the certificates in this PEM file as roots when verifying the server
    /// (`verify-ca`, `verify-full`, and `require` when given), or the system's roots when
    /// the path is `system`.
    pub fn ssl_root_cert(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The root certificate file, if one was given.
    pub fn get_ssl_root_cert(&self) -> Option<&std::path::Path> {
        self.ssl_root_cert.as_deref()
    }
}

impl From<tokio_postgres::Config> for Config {
    fn from(postgres: tokio_postgres::Config) -> Self {
        let ssl_mode = match postgres.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Config { postgres, ssl_mode, ssl_root_cert: None }
    }
}

impl From<&tokio_postgres::Config> for Config {
    fn from(postgres: &tokio_postgres::Config) -> Self {
        Config::from(postgres.clone())
    }
}

impl From<&Config> for Config {
    fn from(config: &Config) -> Self {
        config.clone()
    }
}

impl FromStr for Config {
    type Err = ConnectError;

    /// Parses a `postgres://` (or `postgresql://`) URL or a `key=value` string.
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        let (rest, ours) = split_tls_options(s)?;
        let postgres: tokio_postgres::Config =
            rest.parse().map_err(|error| ConnectError::Config(format!("{error}")))?;
        let mut config = Config::from(postgres);
        for (key, value) in ours {
            match key.as_str() {
                "sslmode" => config.ssl_mode = SslMode::parse(&value)?,
                _ => config.ssl_root_cert = Some(PathBuf::from(value)),
            }
        }
        Ok(config)
    }
}

/// The keys this crate reads itself; tokio-postgres does not know the last two values of
/// `sslmode` nor `sslrootcert`.
const OUR_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits our keys off a connection string, returning the rest (for tokio-postgres) and
/// ours.
fn split_tls_options(s: &str) -> Result<(String, Vec<(String, String)>), ConnectError> {
    let mut ours = Vec::new();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let Some((base, query)) = s.split_once('?') else { return Ok((s.to_owned(), ours)) };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OUR_KEYS.contains(&key) {
                ours.push((key.to_owned(), percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, ours));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(s)? {
        if OUR_KEYS.contains(&key.as_str()) {
            ours.push((key, value));
        } else {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), ours))
}

/// The pairs of a libpq `key=value` string: values may be single-quoted, with `\` escapes.
fn key_values(s: &str) -> Result<Vec<(String, String)>, ConnectError> {
    let invalid = |why: &str| ConnectError::Config(format!("invalid connection string: {why}"));
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(&format!("expected = after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| invalid("unfinished escape"))?),
                    Some(c) => value.push(c),
                    None => return Err(invalid("unterminated quoted value")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| invalid("unfinished escape"))?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(value: &str) -> Result<String, ConnectError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnectError::Config(format!("invalid percent-encoding in {value:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnectError::Config(format!("{value:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_tokio_postgres_keys_and_take_ours() {
        let config: Config =
            "postgres://u:p@h:5433/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem"
                .parse()
                .unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::VerifyFull);
        assert_eq!(config.get_ssl_root_cert(), Some(std::path::Path::new("/tmp/ca.pem")));
        assert_eq!(config.postgres().get_application_name(), Some("x"));
        assert_eq!(config.postgres().get_dbname(), Some("db"));
        assert_eq!(config.postgres().get_ports(), [5433]);
    }

    #[test]
    fn key_value_strings_with_quotes() {
        let config: Config = "host=h user='a b' password='it\\'s' sslmode=verify-ca dbname=d".parse().unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::VerifyCa);
        assert_eq!(config.postgres().get_user(), Some("a b"));
        assert_eq!(config.postgres().get_password(), Some(&b"it's"[..]));
        assert!("sslmode=bogus".parse::<Config>().is_err());
        assert!("host=h user='open".parse::<Config>().is_err());
    }

    #[test]
    fn the_default_is_prefer() {
        let config: Config = "postgres://h/db".parse().unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
    }
}

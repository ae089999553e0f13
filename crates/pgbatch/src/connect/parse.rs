//! Reading a connection string, a `postgres://` URL or libpq's `key=value` form: the keys
//! pgbatch reads itself are split off, the rest is tokio-postgres's to parse.

use std::str::FromStr;

use super::config::Config;
use super::modes::{SslMode, TargetSessionAttrs};
use crate::error::ConnectError;

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
                "sslmode" => {
                    config.ssl_mode(SslMode::parse(&value)?);
                }
                "target_session_attrs" => {
                    config.target_session_attrs(TargetSessionAttrs::parse(&value)?);
                }
                _ => {
                    config.ssl_root_cert(value);
                }
            }
        }
        Ok(config)
    }
}

/// The keys this crate reads itself; tokio-postgres does not know the last two values of
/// `sslmode`, `sslrootcert`, nor four of the values of `target_session_attrs`.
const OUR_KEYS: [&str; 3] = ["sslmode", "sslrootcert", "target_session_attrs"];

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
}

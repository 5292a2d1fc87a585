//! Connection settings: parsing a DSN and connecting with it.
//!
//! For now this accepts what the `postgres` crate accepts (`key=value` pairs
//! and `postgres://` URLs); libpq's full rules come later.

use std::fmt;
use std::str::FromStr;

use crate::driver::{Driver, connection_stream};

/// Parsed connection settings, as given to
/// [`ManagedConnection::new`](crate::ManagedConnection::new).
///
/// `Display` and `Debug` show the settings with any password removed.
#[derive(Clone)]
pub struct Settings {
    config: tokio_postgres::Config,
    shown: String,
}

/// Why a connection string could not be read. Its message names the
/// offending option and never repeats a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    message: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    /// Parses a connection string.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] naming what is wrong; nothing is connected either way.
    pub fn parse(dsn: &str) -> Result<Settings, SettingsError> {
        let config = tokio_postgres::Config::from_str(dsn).map_err(|e| {
            // The detail ("unknown option `colour`") is in the source, not the message.
            let message = match std::error::Error::source(&e) {
                Some(detail) => format!("{e}: {detail}"),
                None => e.to_string(),
            };
            SettingsError { message }
        })?;
        Ok(Settings {
            config,
            shown: redact(dsn),
        })
    }

    /// Opens a new connection with these settings.
    pub(crate) fn connect(&self) -> Result<Driver, crate::Error> {
        Driver::connect(async {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(crate::Error::Connect)?;
            Ok((client, connection_stream(connection)))
        })
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Settings").field(&self.shown).finish()
    }
}

/// The connection string with every password taken out.
fn redact(dsn: &str) -> String {
    let trimmed = dsn.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            trimmed
                .strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, hosts) = authority.split_at(at);
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{user}{hosts}")
            }
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| !pair.to_ascii_lowercase().starts_with("password="))
                    .collect();
                if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                }
            }
            None => tail.to_owned(),
        };
        return format!("{scheme}{authority}{tail}");
    }
    // key=value form: drop the password pair, quoted or not.
    let mut out = Vec::new();
    let mut words = trimmed.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let key = word.split('=').next().unwrap_or_default().trim();
        if key.eq_ignore_ascii_case("password") {
            let mut value = word.split_once('=').map(|(_, v)| v).unwrap_or_default();
            if value.is_empty() {
                // `password = secret` or `password= secret`: the value is the next word.
                value = words.next().unwrap_or_default();
                if value == "=" {
                    value = words.next().unwrap_or_default();
                }
            }
            if value.starts_with('\'') {
                let mut closed = value.len() > 1 && value.ends_with('\'');
                while !closed {
                    match words.next() {
                        Some(w) => closed = w.ends_with('\'') && !w.ends_with("\\'"),
                        None => break,
                    }
                }
            }
            continue;
        }
        out.push(word);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_removed() {
        let s = Settings::parse(
            "postgres://alice:s3cret@db.example:5433/app?password=s3cret&sslmode=disable",
        )
        .expect("parses");
        let shown = format!("{s} {s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://alice@db.example:5433/app?sslmode=disable"));
    }

    #[test]
    fn key_value_password_is_removed() {
        let s = Settings::parse("host=localhost password='a b s3cret' user=bob").expect("parses");
        assert_eq!(s.to_string(), "host=localhost user=bob");
    }

    #[test]
    fn seed_dsn_is_shown_as_given() {
        let s = Settings::parse("postgres:///postgres").expect("parses");
        assert_eq!(s.to_string(), "postgres:///postgres");
    }

    #[test]
    fn unknown_option_is_an_error_naming_it() {
        let e = Settings::parse("host=localhost colour=blue").expect_err("must fail");
        assert!(e.to_string().contains("colour"), "{e}");
    }
}

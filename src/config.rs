//! Connection settings read the way libpq reads them: parsed, then resolved
//! against the environment, the service file and the password file into
//! the servers to try. Nothing here opens a socket; `connect/` does the
//! connecting. The rules are documented on [`Settings`].

mod conninfo;
mod env;
mod host_order;
mod keywords;
mod pgpass;
mod resolve;
mod service;

use std::fmt;

use self::conninfo::Options;
pub(crate) use self::env::{Env, ProcessEnv};
pub(crate) use self::host_order::ServerRole;
pub use self::host_order::SessionTarget;
pub(crate) use self::keywords::parse_int;
pub(crate) use self::resolve::{Host, Plan, SslMode, Target};

/// Parsed connection settings, as given to
/// [`ManagedConnection::new`](crate::ManagedConnection::new).
///
/// A connection string is either `key=value` pairs (`host=db user=alice`,
/// values quoted with `'…'`, `\` escaping) or a `postgresql://` /
/// `postgres://` URI (`postgres://alice@db:5433,db2/app?sslmode=require`,
/// percent-encoded). What libpq 15 accepts is accepted, with the same
/// keywords, and what it rejects is rejected.
///
/// # When the environment and files are read
///
/// [`Settings::parse`] reads only the string: its syntax and the values
/// libpq would refuse (a port that is not a number, an unknown `sslmode`).
/// The environment (`PGHOST`, `PGUSER`, `PGPASSWORD`, …), the service file
/// and the password file are read at each connection attempt, as libpq
/// reads them in `PQconnectdb`: a reconnect after `PGPASSWORD` or
/// `~/.pgpass` changed uses the new value. A problem found then (an
/// undefined service, a bad `PGPORT`, a missing root certificate) is
/// reported as [`Error::Settings`](crate::Error::Settings).
///
/// Each setting comes from the first of: the connection string; the entry
/// of the service file named by `service=` or `PGSERVICE`
/// (`PGSERVICEFILE` or `~/.pg_service.conf`, then
/// `$PGSYSCONFDIR/pg_service.conf`); the environment; the default. The
/// defaults are libpq's: the Unix socket in `/var/run/postgresql` (or
/// `/tmp` where only that one has a server), port 5432, the OS user, a
/// database named after the user, `sslmode=prefer`. Several hosts
/// (`host=a,b port=5432,5433`) are tried in turn, each with its own line of
/// the password file (`PGPASSFILE`, `passfile=` or `~/.pgpass`, ignored
/// with a warning if group or others may read it); with
/// `load_balance_hosts=random` (libpq 16) in a random order, and each
/// host's addresses too, so that new connections spread over the hosts.
///
/// `target_session_attrs` keeps only the sessions libpq keeps: `any` (the
/// default), `read-write` and `read-only` (from the server's
/// `default_transaction_read_only` and `in_hot_standby`), `primary` and
/// `standby` (from `in_hot_standby`), and `prefer-standby` (a standby if
/// the list has one that answers, else any server: two passes over the
/// list). PostgreSQL 14 and later report what is needed at start-up;
/// older servers, and poolers that do not pass these reports on, are asked
/// (`SHOW transaction_read_only`, `SELECT pg_is_in_recovery()`).
///
/// # TLS
///
/// With the `tls` feature (on by default), `sslmode` `allow`, `prefer`,
/// `require`, `verify-ca` and `verify-full` work as in libpq, with
/// `sslrootcert`, `sslcert` and `sslkey` (defaults in `~/.postgresql/`).
/// Without it, `prefer` and `allow` connect without TLS and the other modes
/// are refused, as by a libpq built without SSL.
///
/// # Not supported
///
/// Refused when connecting rather than ignored: `gssencmode=require`,
/// `replication`, `requirepeer`, `sslcrl`/`sslcrldir`, a `client_encoding`
/// other than UTF8.
///
/// `Display` shows the connection string as given with every password
/// (`password`, `sslpassword`, the password of a URI) taken out; `Debug`
/// shows the same.
///
/// # Examples
///
/// ```
/// let settings = pgtx::Settings::parse("postgres://alice:s3cret@db.example/app")?;
/// assert_eq!(settings.to_string(), "postgres://alice@db.example/app");
/// assert_eq!(settings.get("user"), Some("alice"));
/// assert_eq!(settings.get("password"), None);
/// # Ok::<(), pgtx::SettingsError>(())
/// ```
#[derive(Clone)]
pub struct Settings {
    options: Options,
    shown: String,
}

/// Why connection settings could not be read. Its message names the
/// offending keyword, position, file or line, in libpq's words where libpq
/// has some, and never repeats a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    message: String,
}

impl SettingsError {
    pub(crate) fn new(message: impl Into<String>) -> SettingsError {
        SettingsError {
            message: message.into(),
        }
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    /// Parses a connection string: `key=value` pairs, or a URI starting
    /// with `postgresql://` or `postgres://`. The empty string means "all
    /// defaults", as in libpq.
    ///
    /// Nothing is connected and nothing outside the string is read (see
    /// [`Settings`] for when the environment and files are).
    ///
    /// # Errors
    ///
    /// [`SettingsError`] naming the unknown keyword, the position of a
    /// syntax error, or the keyword whose value libpq would refuse.
    pub fn parse(dsn: &str) -> Result<Settings, SettingsError> {
        let parsed = conninfo::parse(dsn)?;
        Ok(Settings {
            options: parsed.options,
            shown: parsed.shown,
        })
    }

    /// The value the connection string gives for `keyword` (a libpq keyword
    /// such as `host`, `port`, `user`, `dbname`, `sslmode`), if it gives one.
    ///
    /// Secrets are never returned: `password` and `sslpassword` are always
    /// `None`. Values from the environment or files are not included; they
    /// are read when connecting.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        if keywords::is_secret(keyword) {
            return None;
        }
        self.options.get(keyword)
    }

    /// These settings with `target_session_attrs` set to `target`, in place
    /// of whatever the connection string said: one host list, read two
    /// ways (a pool for writes and one for reads, say). `Display` shows it
    /// added at the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgtx::{SessionTarget, Settings};
    ///
    /// let servers = Settings::parse("host=db1,db2,db3 user=app")?;
    /// let reads = servers.clone().with_target(SessionTarget::PreferStandby);
    /// assert_eq!(reads.get("target_session_attrs"), Some("prefer-standby"));
    /// assert_eq!(
    ///     reads.to_string(),
    ///     "host=db1,db2,db3 user=app target_session_attrs=prefer-standby"
    /// );
    /// # Ok::<(), pgtx::SettingsError>(())
    /// ```
    #[must_use = "returns new settings, leaving these as they were"]
    pub fn with_target(mut self, target: SessionTarget) -> Settings {
        let value = target.as_str();
        self.options.set("target_session_attrs", value.to_owned());
        let is_uri = ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| self.shown.starts_with(scheme));
        if is_uri {
            let separator = match self.shown.chars().last() {
                Some('?' | '&') => "",
                _ if self.shown.contains('?') => "&",
                _ => "?",
            };
            self.shown = format!("{}{separator}target_session_attrs={value}", self.shown);
        } else if self.shown.is_empty() {
            self.shown = format!("target_session_attrs={value}");
        } else {
            self.shown = format!("{} target_session_attrs={value}", self.shown);
        }
        self
    }

    /// These settings resolved as libpq resolves them at each connection
    /// attempt: with the service file, the environment (`env`) and the
    /// defaults; the servers to try.
    ///
    /// # Errors
    ///
    /// An undefined service, a bad value from the environment or a service
    /// file, host/port lists that do not pair up, or a setting this crate
    /// cannot honour.
    pub(crate) fn plan(&self, env: &dyn Env) -> Result<Plan, SettingsError> {
        let plan = resolve::resolve(&self.options, env)?;
        unsupported(&plan.options)?;
        Ok(plan)
    }
}

/// Settings libpq has but this crate cannot honour: refused rather than
/// silently ignored.
fn unsupported(options: &Options) -> Result<(), SettingsError> {
    let refuse = |what: &str| {
        Err(SettingsError::new(format!(
            "{what} is not supported by pgtx"
        )))
    };
    if options.get("gssencmode") == Some("require") {
        return refuse("gssencmode=require (GSSAPI encryption)");
    }
    if let Some(r) = options.get("replication")
        && !matches!(r, "" | "0" | "false" | "off" | "no")
    {
        return refuse("replication");
    }
    if options.get("requirepeer").is_some_and(|p| !p.is_empty()) {
        return refuse("requirepeer");
    }
    if let Some(encoding) = options.get("client_encoding")
        && !matches!(
            encoding.to_ascii_lowercase().as_str(),
            "" | "auto" | "utf8" | "utf-8" | "unicode"
        )
    {
        return refuse("a client_encoding other than UTF8");
    }
    Ok(())
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
        assert_eq!(format!("{s:?}"), "Settings(\"host=localhost user=bob\")");
    }

    #[test]
    fn seed_dsn_is_shown_as_given() {
        let s = Settings::parse("postgres:///postgres").expect("parses");
        assert_eq!(s.to_string(), "postgres:///postgres");
        assert_eq!(s.get("dbname"), Some("postgres"));
        assert_eq!(s.get("host"), None);
    }

    #[test]
    fn unknown_option_is_an_error_naming_it() {
        let e = Settings::parse("host=localhost colour=blue").expect_err("must fail");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn get_never_returns_secrets() {
        let s = Settings::parse("password=x sslpassword=y user=u").expect("parses");
        assert_eq!(s.get("password"), None);
        assert_eq!(s.get("sslpassword"), None);
        assert_eq!(s.get("user"), Some("u"));
    }

    #[test]
    fn a_target_replaces_the_one_given_and_is_shown() {
        for (dsn, shown) in [
            (
                "host=a,b target_session_attrs=any",
                "host=a,b target_session_attrs=any target_session_attrs=standby",
            ),
            ("", "target_session_attrs=standby"),
            (
                "postgres://u:secret@a,b/db",
                "postgres://u@a,b/db?target_session_attrs=standby",
            ),
            (
                "postgres://a/db?sslmode=disable",
                "postgres://a/db?sslmode=disable&target_session_attrs=standby",
            ),
            (
                "postgres://a/db?",
                "postgres://a/db?target_session_attrs=standby",
            ),
        ] {
            let s = Settings::parse(dsn)
                .expect("parses")
                .with_target(SessionTarget::Standby);
            assert_eq!(s.get("target_session_attrs"), Some("standby"), "{dsn}");
            assert_eq!(s.to_string(), shown);
            // What is shown reads back as the same settings.
            let again = Settings::parse(&s.to_string()).expect("shown parses");
            assert_eq!(again.get("target_session_attrs"), Some("standby"), "{dsn}");
        }
        for target in [
            SessionTarget::Any,
            SessionTarget::ReadWrite,
            SessionTarget::ReadOnly,
            SessionTarget::Primary,
            SessionTarget::Standby,
            SessionTarget::PreferStandby,
        ] {
            // Each is a value libpq takes (others are refused when read).
            let dsn = format!("target_session_attrs={target}");
            assert!(Settings::parse(&dsn).is_ok(), "{dsn}");
        }
    }

    #[test]
    fn a_target_libpq_lacks_is_refused() {
        assert!(Settings::parse("target_session_attrs=prefer-replica").is_err());
    }

    #[test]
    fn unsupported_settings_are_refused_not_ignored() {
        for dsn in [
            "gssencmode=require",
            "replication=database",
            "requirepeer=postgres",
            "client_encoding=LATIN1",
        ] {
            let s = Settings::parse(dsn).expect("libpq accepts it");
            let e = unsupported(&s.options).expect_err(dsn);
            assert!(e.to_string().contains("not supported"), "{e}");
        }
    }
}

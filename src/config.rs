//! Connection settings read the way libpq reads them, and connecting with
//! them. The rules are documented on [`Settings`].

mod conninfo;
mod env;
mod keywords;
mod pgpass;
mod resolve;
mod service;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::config::{ChannelBinding, TargetSessionAttrs};

use crate::connect::{self, Cause, Endpoint, Opened};
use crate::driver::Driver;
use crate::error::{ConnectError, Error};

use self::conninfo::Options;
use self::env::{Env, ProcessEnv};
pub(crate) use self::resolve::{Host, Target};
use self::resolve::{Plan, SslMode};

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
/// with a warning if group or others may read it).
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
/// other than UTF8, and `target_session_attrs` `primary`, `standby` and
/// `prefer-standby`.
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

    /// Opens a new connection with these settings, trying each host in
    /// turn as libpq does.
    pub(crate) fn connect(&self) -> Result<Driver, Error> {
        let env = ProcessEnv;
        let plan = resolve::resolve(&self.options, &env)?;
        unsupported(&plan.options)?;
        let base = base_config(&plan)?;
        let passfile = plan
            .options
            .get("passfile")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .or_else(|| env.home().map(|home| home.join(".pgpass")));
        let tls = Tls::new(&plan, &env)?;
        Driver::connect(async {
            let mut failed = Vec::new();
            for target in &plan.targets {
                let mut config = base.clone();
                add_target(&mut config, target);
                if let Some(password) = password_for(&plan, target, passfile.as_deref()) {
                    config.password(password);
                }
                let endpoints = match connect::endpoints(target).await {
                    Ok(endpoints) => endpoints,
                    Err(unresolved) => {
                        log::debug!("pgtx: {unresolved}");
                        failed.push(unresolved);
                        continue;
                    }
                };
                for endpoint in &endpoints {
                    let opened = connect::with_timeout(
                        attempt(&config, plan.sslmode, target, endpoint, &tls),
                        plan.connect_timeout,
                    );
                    match opened.await {
                        Ok(connected) => return Ok(connected),
                        Err(cause) => {
                            let attempt = connect::failed(target, endpoint, cause);
                            log::debug!("pgtx: {attempt}");
                            failed.push(attempt);
                        }
                    }
                }
            }
            Err(match ConnectError::new(failed) {
                Some(e) => Error::Connect(e),
                None => Error::Settings(SettingsError::new("no host to connect to")),
            })
        })
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
    match options.get("target_session_attrs") {
        Some("primary" | "standby" | "prefer-standby") => {
            refuse("target_session_attrs other than any, read-write and read-only")
        }
        _ => Ok(()),
    }
}

/// The settings shared by every host.
fn base_config(plan: &Plan) -> Result<tokio_postgres::Config, SettingsError> {
    let options = &plan.options;
    let mut config = tokio_postgres::Config::new();
    config.user(&plan.user).dbname(&plan.dbname);
    if let Some(o) = options.get("options").filter(|o| !o.is_empty()) {
        config.options(o);
    }
    if let Some(name) = options
        .get("application_name")
        .filter(|n| !n.is_empty())
        .or_else(|| {
            options
                .get("fallback_application_name")
                .filter(|n| !n.is_empty())
        })
    {
        config.application_name(name);
    }
    if let Some(timeout) = plan.connect_timeout {
        config.connect_timeout(timeout);
    }
    let int = |name: &str| -> Result<Option<i64>, SettingsError> {
        match options.get(name).filter(|v| !v.is_empty()) {
            Some(v) => keywords::parse_int(name, v).map(Some),
            None => Ok(None),
        }
    };
    let secs = |n: i64| Duration::from_secs(n.max(0).unsigned_abs());
    if let Some(k) = int("keepalives")? {
        config.keepalives(k != 0);
    }
    if let Some(n) = int("keepalives_idle")?.filter(|&n| n > 0) {
        config.keepalives_idle(secs(n));
    }
    if let Some(n) = int("keepalives_interval")?.filter(|&n| n > 0) {
        config.keepalives_interval(secs(n));
    }
    if let Some(n) = int("keepalives_count")?.filter(|&n| n > 0) {
        config.keepalives_retries(u32::try_from(n).unwrap_or(u32::MAX));
    }
    if let Some(n) = int("tcp_user_timeout")?.filter(|&n| n > 0) {
        config.tcp_user_timeout(Duration::from_millis(n.unsigned_abs()));
    }
    config.target_session_attrs(match options.get("target_session_attrs") {
        Some("read-write") => TargetSessionAttrs::ReadWrite,
        Some("read-only") => TargetSessionAttrs::ReadOnly,
        _ => TargetSessionAttrs::Any,
    });
    config.channel_binding(match options.get("channel_binding") {
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        _ => ChannelBinding::Prefer,
    });
    Ok(config)
}

fn add_target(config: &mut tokio_postgres::Config, target: &Target) {
    match &target.host {
        Host::Socket { dir, .. } => {
            config.host_path(dir);
        }
        Host::Tcp { name, addr } => {
            if !name.is_empty() {
                config.host(name);
            }
            if let Some(addr) = addr {
                config.hostaddr(*addr);
            }
        }
    }
    config.port(target.port);
}

/// The password for one host: the one given (connection string, service
/// file, `PGPASSWORD`), else the password file's.
fn password_for(
    plan: &Plan,
    target: &Target,
    passfile: Option<&std::path::Path>,
) -> Option<String> {
    if let Some(password) = plan.options.get("password").filter(|p| !p.is_empty()) {
        return Some(password.to_owned());
    }
    let addr_text;
    let (host, is_default_socket) = match &target.host {
        Host::Socket { dir, default } => (dir.to_str().unwrap_or_default(), *default),
        Host::Tcp { name, addr } if name.is_empty() => {
            addr_text = addr.map(|a| a.to_string()).unwrap_or_default();
            (addr_text.as_str(), false)
        }
        Host::Tcp { name, .. } => (name.as_str(), false),
    };
    let lookup = pgpass::Lookup {
        host,
        is_default_socket,
        port: target.port,
        dbname: &plan.dbname,
        user: &plan.user,
    };
    pgpass::password(passfile?, &lookup)
}

/// One connection attempt to one host, with TLS as `sslmode` asks.
async fn attempt(
    config: &tokio_postgres::Config,
    sslmode: SslMode,
    target: &Target,
    endpoint: &Endpoint,
    tls: &Tls,
) -> Result<Opened, Cause> {
    use tokio_postgres::config::SslMode as Mode;
    let mut config = config.clone();
    // A Unix socket never uses TLS (libpq: "SSL is not used on Unix sockets").
    if matches!(target.host, Host::Socket { .. }) || sslmode == SslMode::Disable {
        config.ssl_mode(Mode::Disable);
        return connect::open(&config, endpoint, NoTls).await;
    }
    match sslmode {
        SslMode::Allow => {
            config.ssl_mode(Mode::Disable);
            match connect::open(&config, endpoint, NoTls).await {
                // The server refused a connection without TLS: try with it.
                Err(e) if refused_by_server(&*e) && tls.available() => {
                    config.ssl_mode(Mode::Require);
                    tls.open(&config, target, endpoint).await
                }
                other => other,
            }
        }
        SslMode::Prefer if tls.available() => {
            config.ssl_mode(Mode::Prefer);
            tls.open(&config, target, endpoint).await
        }
        SslMode::Prefer => {
            config.ssl_mode(Mode::Disable);
            connect::open(&config, endpoint, NoTls).await
        }
        _ => {
            config.ssl_mode(Mode::Require);
            tls.open(&config, target, endpoint).await
        }
    }
}

/// Whether the server itself turned the attempt down (rather than the
/// socket failing).
fn refused_by_server(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<postgres::Error>()
        .is_some_and(|e| e.as_db_error().is_some())
}

/// The TLS connector `sslmode` calls for, if this build has TLS.
#[cfg(feature = "tls")]
struct Tls(Option<tokio_postgres_rustls::MakeRustlsConnect>);

#[cfg(feature = "tls")]
impl Tls {
    fn new(plan: &Plan, env: &dyn Env) -> Result<Tls, SettingsError> {
        if plan.sslmode == SslMode::Disable
            || plan
                .targets
                .iter()
                .all(|t| matches!(t.host, Host::Socket { .. }))
        {
            return Ok(Tls(None));
        }
        tls::connector(plan, env).map(Some).map(Tls)
    }

    fn available(&self) -> bool {
        self.0.is_some()
    }

    async fn open(
        &self,
        config: &tokio_postgres::Config,
        target: &Target,
        endpoint: &Endpoint,
    ) -> Result<Opened, Cause> {
        use crate::connect::Socket;
        use tokio_postgres::tls::MakeTlsConnect;
        let Some(make) = &self.0 else {
            return connect::open(config, endpoint, NoTls).await;
        };
        // The name the certificate must carry: the host name, else the
        // numeric address (libpq matches an IP address against the
        // certificate's IP entries).
        let server_name = match &target.host {
            Host::Tcp { name, .. } if !name.is_empty() => name.clone(),
            Host::Tcp { addr: Some(ip), .. } => ip.to_string(),
            _ => String::new(),
        };
        let tls = match MakeTlsConnect::<Socket>::make_tls_connect(&mut make.clone(), &server_name)
        {
            Ok(tls) => tls,
            Err(never) => match never {},
        };
        connect::open(config, endpoint, tls).await
    }
}

/// Without the `tls` feature there is no connector: `sslmode` `prefer` and
/// `allow` connect without TLS, as a libpq built without SSL does, and the
/// modes that need TLS are refused.
#[cfg(not(feature = "tls"))]
struct Tls;

#[cfg(not(feature = "tls"))]
impl Tls {
    fn new(plan: &Plan, _env: &dyn Env) -> Result<Tls, SettingsError> {
        match plan.sslmode {
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Err(SettingsError::new(format!(
                    "sslmode value \"{}\" invalid when SSL support is not compiled in \
                     (enable the `tls` feature of pgtx)",
                    plan.options.get("sslmode").unwrap_or_default()
                )))
            }
            _ => Ok(Tls),
        }
    }

    fn available(&self) -> bool {
        false
    }

    async fn open(
        &self,
        config: &tokio_postgres::Config,
        _target: &Target,
        endpoint: &Endpoint,
    ) -> Result<Opened, Cause> {
        connect::open(config, endpoint, NoTls).await
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
    fn unsupported_settings_are_refused_not_ignored() {
        for dsn in [
            "gssencmode=require",
            "replication=database",
            "requirepeer=postgres",
            "client_encoding=LATIN1",
            "target_session_attrs=standby",
        ] {
            let s = Settings::parse(dsn).expect("libpq accepts it");
            let e = unsupported(&s.options).expect_err(dsn);
            assert!(e.to_string().contains("not supported"), "{e}");
        }
    }
}

//! Connecting: from resolved [`Settings`] to an open connection, trying each
//! server in turn as libpq does. What the settings mean is decided in
//! `config/` (the order of the servers and which sessions are kept, in
//! `config/host_order.rs`); here they are turned into sockets, TLS and
//! start-up.
//!
//! - `open.rs`: one attempt at one endpoint (socket, TLS, authentication),
//!   with the tap of `wire.rs` on the stream, and the session check that
//!   `target_session_attrs` asks for;
//! - `wire.rs`: the tap (BEGIN slipped into the first statement's write,
//!   the server's status and command tags read off the stream);
//! - `socket.rs`: the endpoints of a server and their sockets;
//! - `failure.rs`: what a failed attempt says, in libpq's words;
//! - `stream.rs`: the connection half, its types erased, for the driver;
//! - `tls.rs`: the rustls connector built from the `ssl*` settings;
//! - `cancel_request.rs`: a cancel request, sent on a socket of its own to
//!   the endpoint the connection uses (`conn/cancel_serials.rs` numbers the
//!   statements; `cancel.rs` at the crate root holds the public
//!   `CancelHandle`).

mod cancel_request;
mod failure;
mod open;
mod sever;
mod socket;
mod stream;
#[cfg(feature = "tls")]
mod tls;
pub(crate) mod wire;

use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::config::ChannelBinding;

use crate::config::{
    Env, Host, Plan, ProcessEnv, Settings, SettingsError, SslMode, Target, parse_int,
};
use crate::error::{ConnectError, Error};

pub(crate) use self::cancel_request::CancelTarget;
use self::cancel_request::CancelTls;
pub(crate) use self::open::Opened;
pub(crate) use self::sever::{ClosesWith, Severer};
use self::socket::Endpoint;
pub(crate) use self::stream::ConnectionStream;

/// An attempt's error: from the socket, or from `tokio-postgres` (TLS,
/// authentication, the server refusing).
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Everything needed to connect with some [`Settings`], read from them
/// (and the environment and files they point to) before anything is opened.
pub(crate) struct Connector {
    plan: Plan,
    base: tokio_postgres::Config,
    tls: Tls,
}

impl Connector {
    /// Resolves `settings` against the process environment, as libpq does
    /// at each connection.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] for settings that cannot be used: an undefined
    /// service, a bad value from the environment, an unsupported setting,
    /// a missing root certificate.
    pub(crate) fn new(settings: &Settings) -> Result<Connector, SettingsError> {
        let env = ProcessEnv;
        let plan = settings.plan(&env)?;
        let base = base_config(&plan)?;
        let tls = Tls::new(&plan, &env)?;
        Ok(Connector { plan, base, tls })
    }

    /// What to ask a connection that may have found itself on a server
    /// that no longer takes writes, when the settings want one (see
    /// `SessionTarget::still_writable_question`).
    pub(crate) fn still_writable_question(&self) -> Option<&'static str> {
        self.plan.session_attrs.still_writable_question()
    }

    /// Opens a connection: each server in turn, each of its addresses in
    /// turn, until one accepts.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] listing every failed attempt in order.
    pub(crate) async fn connect(&self) -> Result<Opened, Error> {
        let Connector { plan, base, tls } = self;
        let mut failed = Vec::new();
        let order = plan.load_balance.order(plan.targets.len(), random_below);
        // `prefer-standby` goes over the list twice, as libpq does: for a
        // standby, then for any server (the same order both times).
        for &keep in plan.session_attrs.passes() {
            for target in order.iter().map(|&i| &plan.targets[i]) {
                let mut config = base.clone();
                add_target(&mut config, target);
                if let Some(password) = plan.password(target) {
                    config.password(password);
                }
                let endpoints = match socket::endpoints(target).await {
                    Ok(endpoints) => endpoints,
                    Err(cause) => {
                        let unresolved = failure::unresolved(target, cause);
                        log::debug!("pgtx: {unresolved}");
                        failed.push(unresolved);
                        continue;
                    }
                };
                let addresses = plan.load_balance.order(endpoints.len(), random_below);
                for endpoint in addresses.iter().map(|&i| &endpoints[i]) {
                    // A server that answered but is not what `keep` wants
                    // sends libpq on to the next host, not to this host's
                    // next address.
                    let mut judged = false;
                    let opened = open::with_timeout(
                        async {
                            let mut opened =
                                attempt(&config, plan.sslmode, target, endpoint, tls).await?;
                            judged = true;
                            open::check_session_attrs(&mut opened, keep).await?;
                            Ok(opened)
                        },
                        plan.connect_timeout,
                    );
                    match opened.await {
                        Ok(connected) => return Ok(connected),
                        Err(cause) => {
                            let attempt = failure::failed(target, endpoint, cause);
                            log::debug!("pgtx: {attempt}");
                            failed.push(attempt);
                            if judged {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Err(match ConnectError::new(failed) {
            Some(e) => Error::Connect(e),
            None => Error::Settings(SettingsError::new("no host to connect to")),
        })
    }
}

/// A number in `0..n`, for `load_balance_hosts=random` (the standard
/// library's randomly keyed hasher: new keys at every call).
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_usize(n);
    let n = u64::try_from(n.max(1)).unwrap_or(u64::MAX);
    usize::try_from(hasher.finish() % n).unwrap_or(0)
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
            Some(v) => parse_int(name, v).map(Some),
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
        return open::open(&config, endpoint, NoTls, CancelTls::None).await;
    }
    match sslmode {
        SslMode::Allow => {
            config.ssl_mode(Mode::Disable);
            match open::open(&config, endpoint, NoTls, CancelTls::None).await {
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
            open::open(&config, endpoint, NoTls, CancelTls::None).await
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
        use self::socket::Socket;
        use tokio_postgres::tls::MakeTlsConnect;
        let Some(make) = &self.0 else {
            return open::open(config, endpoint, NoTls, CancelTls::None).await;
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
        let cancel_tls = CancelTls::Rustls {
            make: make.clone(),
            server_name,
        };
        open::open(config, endpoint, tls, cancel_tls).await
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
        open::open(config, endpoint, NoTls, CancelTls::None).await
    }
}

//! From the options in a connection string to the list of servers to try,
//! with libpq's precedence: the connection string, then the service file
//! entry, then the environment, then the defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SettingsError;
use super::conninfo::Options;
use super::env::Env;
use super::host_order::{LoadBalance, SessionTarget};
use super::keywords::{self, KEYWORDS};
use super::{pgpass, service};

/// Debian's libpq socket directory, then upstream's.
const SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Everything needed to connect, with nothing left to look up but the
/// password file.
pub(crate) struct Plan {
    pub(crate) options: Options,
    pub(crate) targets: Vec<Target>,
    pub(crate) user: String,
    pub(crate) dbname: String,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) sslmode: SslMode,
    /// The password file: `passfile` (or `PGPASSFILE`), else `~/.pgpass`.
    pub(crate) passfile: Option<PathBuf>,
    /// The order the targets are tried in.
    pub(crate) load_balance: LoadBalance,
    /// Which sessions are kept.
    pub(crate) session_attrs: SessionTarget,
}

impl Plan {
    /// The password for one host: the one given (connection string,
    /// service file, `PGPASSWORD`), else the password file's, read now.
    pub(crate) fn password(&self, target: &Target) -> Option<String> {
        if let Some(password) = self.options.get("password").filter(|p| !p.is_empty()) {
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
            dbname: &self.dbname,
            user: &self.user,
        };
        pgpass::password(self.passfile.as_deref()?, &lookup)
    }
}

/// One server to try.
pub(crate) struct Target {
    pub(crate) host: Host,
    pub(crate) port: u16,
}

/// How to reach one server.
pub(crate) enum Host {
    /// A directory holding the server's Unix socket; `default` when no host
    /// was given at all.
    Socket { dir: PathBuf, default: bool },
    /// A TCP server: a name (checked against its certificate and used for
    /// the password file) and/or a numeric address to connect to.
    Tcp { name: String, addr: Option<IpAddr> },
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Merges the service file entry, the environment and the defaults into
/// `explicit` and works out the servers to try.
///
/// # Errors
///
/// A service that is not defined, a bad value from the environment or a
/// service file, or host/port/hostaddr lists that do not pair up.
pub(crate) fn resolve(explicit: &Options, env: &dyn Env) -> Result<Plan, SettingsError> {
    let mut options = explicit.clone();
    let service = options
        .get("service")
        .map(str::to_owned)
        .or_else(|| env.var("PGSERVICE"));
    if let Some(service) = service.filter(|s| !s.is_empty()) {
        service::apply(&mut options, &service, env)?;
    }
    for keyword in KEYWORDS {
        if let Some(var) = keyword.env
            && options.get(keyword.name).is_none()
            && let Some(value) = env.var(var)
        {
            options.set(keyword.name, value);
        }
    }
    options.check()?;

    let user = match options.get("user").filter(|u| !u.is_empty()) {
        Some(user) => user.to_owned(),
        None => env
            .os_user()
            .ok_or_else(|| SettingsError::new("could not look up local user ID"))?,
    };
    let dbname = match options.get("dbname").filter(|d| !d.is_empty()) {
        Some(dbname) => dbname.to_owned(),
        None => user.clone(),
    };
    let targets = targets(&options)?;
    let connect_timeout = match options.get("connect_timeout").filter(|v| !v.is_empty()) {
        // libpq: zero or less waits forever; 1 second is taken as 2.
        Some(v) => match keywords::parse_int("connect_timeout", v)? {
            n if n <= 0 => None,
            n => Some(Duration::from_secs(n.max(2).unsigned_abs())),
        },
        None => None,
    };
    let sslmode = match options.get("sslmode").unwrap_or("prefer") {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => SslMode::Prefer,
    };
    let passfile = options
        .get("passfile")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .or_else(|| env.home().map(|home| home.join(".pgpass")));
    let load_balance = LoadBalance::parse(options.get("load_balance_hosts"));
    let session_attrs = SessionTarget::parse(options.get("target_session_attrs"));
    Ok(Plan {
        options,
        targets,
        user,
        dbname,
        connect_timeout,
        sslmode,
        passfile,
        load_balance,
        session_attrs,
    })
}

/// Pairs up the `host`, `hostaddr` and `port` lists as libpq's
/// `connectOptions2` does.
fn targets(options: &Options) -> Result<Vec<Target>, SettingsError> {
    let hosts: Vec<&str> = options.get("host").unwrap_or("").split(',').collect();
    let addrs: Option<Vec<&str>> = options
        .get("hostaddr")
        .filter(|a| !a.is_empty())
        .map(|a| a.split(',').collect());
    let count = match &addrs {
        Some(addrs) if options.get("host").is_some_and(|h| !h.is_empty()) => {
            if addrs.len() != hosts.len() {
                return Err(SettingsError::new(format!(
                    "could not match {} host names to {} hostaddr values",
                    hosts.len(),
                    addrs.len()
                )));
            }
            hosts.len()
        }
        Some(addrs) => addrs.len(),
        None => hosts.len(),
    };
    let ports: Vec<&str> = options.get("port").unwrap_or("").split(',').collect();
    if ports.len() != 1 && ports.len() != count {
        return Err(SettingsError::new(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            count
        )));
    }
    (0..count)
        .map(|i| {
            let port = keywords::parse_port(if ports.len() == 1 { ports[0] } else { ports[i] })?;
            let name = hosts.get(i).copied().unwrap_or("");
            let addr = match &addrs {
                Some(addrs) => keywords::parse_hostaddr(addrs[i])?,
                None => None,
            };
            let host = if addr.is_some() {
                Host::Tcp {
                    name: name.to_owned(),
                    addr,
                }
            } else if name.is_empty() {
                Host::Socket {
                    dir: default_socket_dir(port),
                    default: true,
                }
            } else if name.starts_with('/') {
                Host::Socket {
                    dir: PathBuf::from(name),
                    default: name == SOCKET_DIRS[0],
                }
            } else {
                Host::Tcp {
                    name: name.to_owned(),
                    addr: None,
                }
            };
            Ok(Target { host, port })
        })
        .collect()
}

/// Debian's socket directory, or `/tmp` where only that one has a server
/// listening on `port`.
fn default_socket_dir(port: u16) -> PathBuf {
    let socket = format!(".s.PGSQL.{port}");
    SOCKET_DIRS
        .iter()
        .map(Path::new)
        .find(|dir| dir.join(&socket).exists())
        .unwrap_or(Path::new(SOCKET_DIRS[0]))
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::super::conninfo;
    use super::super::env::FixedEnv;
    use super::*;

    fn plan(dsn: &str, env: &[(&str, &str)]) -> Result<Plan, SettingsError> {
        let parsed = conninfo::parse(dsn)?;
        resolve(&parsed.options, &FixedEnv::new(env))
    }

    fn describe(plan: &Plan) -> Vec<String> {
        plan.targets
            .iter()
            .map(|t| match &t.host {
                Host::Socket { dir, .. } => format!("{}:{}", dir.display(), t.port),
                Host::Tcp { name, addr } => format!("{name}/{addr:?}:{}", t.port),
            })
            .collect()
    }

    #[test]
    fn defaults_are_the_socket_5432_and_the_os_user() {
        let p = plan("", &[]).expect("resolves");
        assert_eq!(p.user, "osuser");
        assert_eq!(p.dbname, "osuser");
        assert_eq!(p.targets.len(), 1);
        assert!(matches!(
            p.targets[0].host,
            Host::Socket { default: true, .. }
        ));
        assert_eq!(p.targets[0].port, 5432);
        assert_eq!(p.sslmode, SslMode::Prefer);
    }

    #[test]
    fn explicit_beats_environment_beats_default() {
        let env = [
            ("PGUSER", "envuser"),
            ("PGPORT", "6000"),
            ("PGHOST", "envhost"),
        ];
        let p = plan("user=alice", &env).expect("resolves");
        assert_eq!(p.user, "alice");
        assert_eq!(p.dbname, "alice");
        assert_eq!(describe(&p), ["envhost/None:6000"]);
    }

    #[test]
    fn empty_explicit_values_fall_back_to_defaults_not_environment() {
        let p = plan(
            "host='' port='' dbname=''",
            &[("PGHOST", "h"), ("PGPORT", "1"), ("PGDATABASE", "d")],
        )
        .expect("resolves");
        assert!(matches!(
            p.targets[0].host,
            Host::Socket { default: true, .. }
        ));
        assert_eq!(p.targets[0].port, 5432);
        assert_eq!(p.dbname, "osuser");
    }

    #[test]
    fn hosts_ports_and_addresses_pair_up() {
        let p = plan("host=a,/sock,,c port=1,2,3,4", &[]).expect("resolves");
        let shown = describe(&p);
        assert_eq!(shown[0], "a/None:1");
        assert_eq!(shown[1], "/sock:2");
        assert!(shown[2].ends_with(":3"));
        assert_eq!(shown[3], "c/None:4");
        let p = plan("host=a,b hostaddr=127.0.0.1,::1 port=7", &[]).expect("resolves");
        assert_eq!(describe(&p), ["a/Some(127.0.0.1):7", "b/Some(::1):7"]);
        let p = plan("hostaddr=127.0.0.2", &[]).expect("resolves");
        assert_eq!(describe(&p), ["/Some(127.0.0.2):5432"]);
    }

    #[test]
    fn mismatched_lists_are_errors() {
        let e = plan("host=a,b port=1,2,3", &[]).err().expect("error");
        assert_eq!(e.to_string(), "could not match 3 port numbers to 2 hosts");
        let e = plan("host=a,b hostaddr=127.0.0.1", &[])
            .err()
            .expect("error");
        assert_eq!(
            e.to_string(),
            "could not match 2 host names to 1 hostaddr values"
        );
    }

    #[test]
    fn bad_environment_values_are_reported_at_resolution() {
        let e = plan("", &[("PGPORT", "nope")]).err().expect("error");
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = plan("", &[("PGSSLMODE", "sometimes")])
            .err()
            .expect("error");
        assert!(e.to_string().contains("sslmode"), "{e}");
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        let t = |v: &str| {
            plan(&format!("connect_timeout={v}"), &[])
                .expect("ok")
                .connect_timeout
        };
        assert_eq!(t("0"), None);
        assert_eq!(t("-3"), None);
        assert_eq!(t("1"), Some(Duration::from_secs(2)));
        assert_eq!(t("10"), Some(Duration::from_secs(10)));
    }
}

//! A real-PostgreSQL test harness, shared by the integration tests and the
//! examples (which include this file with `#[path = ...] mod server;`), so it
//! depends only on `std` and the `postgres` crate.
//!
//! [`TestServer::shared`] gives one server per process:
//!
//! * if `DATABASE_URL` or any of `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`/
//!   `PGPASSWORD` is set, that existing server is used;
//! * otherwise a private throwaway cluster is created with `initdb` in a fresh
//!   temporary directory and started on a free loopback port.
//!
//! Private clusters are removed on `Drop`, and — because statics never drop
//! and a test process may panic or abort — also by a small detached watchdog
//! shell loop that notices when the test process is gone, stops the server
//! (`pg_ctl stop -m immediate`) and deletes the directory.
//!
//! When the test process runs as root (PostgreSQL refuses to), the directory is
//! handed to the OS user `postgres` and `initdb`/`pg_ctl` run through
//! `runuser -u postgres --`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Settings every private cluster is started with (besides port, listen
/// address and socket directory).
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("max_prepared_transactions", "20"),
    ("max_connections", "300"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
];

/// Environment variables that make [`TestServer::shared`] use an existing
/// server instead of starting one.
const EXTERNAL_VARS: &[&str] = &[
    "DATABASE_URL",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
];

/// How many times a private cluster start is retried (each time on a new
/// port) before giving up.
const START_ATTEMPTS: usize = 5;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A PostgreSQL server for tests: either a private throwaway cluster or an
/// external server named by `DATABASE_URL` / `PG*` variables.
pub struct TestServer {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: String,
    kind: Kind,
}

enum Kind {
    External { source: &'static str },
    Private(Private),
}

struct Private {
    /// Temporary directory: holds `data/`, the unix socket and `server.log`.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bin_dir: PathBuf,
    as_root: bool,
    /// Extra `-c` settings given to [`TestServer::start_private_with`].
    extra: Vec<(String, String)>,
    /// The one address it listens on (`listen_addresses`).
    listen: Ipv4Addr,
    /// Serialises start/stop/restart.
    ctl: Mutex<()>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.write_str(&self.describe())
    }
}

impl TestServer {
    /// The per-process shared server, started on first use.
    ///
    /// Uses the server named by `DATABASE_URL`/`PG*` variables if any is set,
    /// otherwise a private cluster that is removed when the process exits
    /// (even by a panic or abort).
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<Result<TestServer, String>> = OnceLock::new();
        let server = SHARED.get_or_init(|| match external_from_env() {
            Some(server) => server,
            None => try_start_private(&[]),
        });
        match server {
            Ok(server) => server,
            Err(msg) => panic!("no test PostgreSQL server: {msg}"),
        }
    }

    /// Always starts a new private cluster (for tests that restart or kill
    /// the server), even when `DATABASE_URL` is set. It is stopped and
    /// removed on drop, or by the watchdog when the process dies.
    ///
    /// # Panics
    /// If no `initdb` is found or the cluster fails to start.
    pub fn start_private() -> TestServer {
        Self::start_private_with(&[])
    }

    /// Like [`start_private`](Self::start_private), with extra server
    /// settings (`-c name=value`, after and so overriding the defaults; e.g.
    /// `("listen_addresses", "127.0.0.1,::1")`). They are kept across
    /// [`restart_immediate`](Self::restart_immediate) and [`start`](Self::start).
    ///
    /// # Panics
    /// If no `initdb` is found or the cluster fails to start.
    pub fn start_private_with(settings: &[(&str, &str)]) -> TestServer {
        try_start_private(settings)
            .unwrap_or_else(|msg| panic!("cannot start a private PostgreSQL cluster: {msg}"))
    }

    /// Starts new private clusters, one listening on each of `hosts`
    /// (loopback addresses such as 127.0.0.1 and 127.0.0.2: Linux answers
    /// on all of 127.0.0.0/8) and all on the same port, as shards on
    /// different hosts are (5432 everywhere). Each has its own socket
    /// directory and its own `initdb`, so its own `system_identifier`.
    /// `settings` as for [`start_private_with`](Self::start_private_with).
    ///
    /// # Panics
    /// If no port free on every host is found, or a cluster fails to start.
    pub fn start_private_same_port(
        hosts: &[Ipv4Addr],
        settings: &[(&str, &str)],
    ) -> Vec<TestServer> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => panic!("{e}"),
            };
            if !hosts
                .iter()
                .all(|host| TcpListener::bind((*host, port)).is_ok())
            {
                continue;
            }
            let started: Result<Vec<TestServer>, String> = hosts
                .iter()
                .map(|host| try_start_private_as(settings, Role::Primary, Some((*host, port))))
                .collect();
            match started {
                Ok(servers) => return servers,
                Err(e) => errors.push(format!("port {port}: {e}")),
            }
        }
        panic!(
            "cannot start private clusters on {hosts:?} on one port:\n{}",
            errors.join("\n")
        )
    }

    /// Starts a new private cluster as a hot standby with no primary: a
    /// `standby.signal` file sits in the data directory from the first start,
    /// so the server stays in recovery for good. It accepts read-only
    /// connections, and anything that writes, or `BEGIN READ WRITE`, fails
    /// ("cannot set transaction read-write mode during recovery"). Returns
    /// once a connection sees `pg_is_in_recovery()`. Stopped and removed like
    /// [`start_private`](Self::start_private).
    ///
    /// # Panics
    /// If no `initdb` is found, the cluster fails to start, or it does not
    /// come up in recovery accepting connections within 60 s.
    pub fn start_private_standby() -> TestServer {
        let server = try_start_private_as(&[], Role::Standby, None)
            .unwrap_or_else(|msg| panic!("cannot start a private standby cluster: {msg}"));
        server.wait_until_in_recovery();
        server
    }

    /// Waits until a connection succeeds and reports `pg_is_in_recovery()`.
    fn wait_until_in_recovery(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = match postgres::Client::connect(&self.dsn(), postgres::NoTls) {
                Ok(mut client) => match client.query_one("SELECT pg_is_in_recovery()", &[]) {
                    Ok(row) if row.get::<_, bool>(0) => return,
                    Ok(_) => panic!(
                        "the standby cluster is not in recovery ({}); server.log:\n{}",
                        self.describe(),
                        self.log()
                    ),
                    Err(e) => error_chain(&e),
                },
                Err(e) => error_chain(&e),
            };
            assert!(
                std::time::Instant::now() < deadline,
                "the standby cluster accepts no connections ({}): {last}; server.log:\n{}",
                self.describe(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether this is a private cluster started by this harness.
    pub fn is_private(&self) -> bool {
        matches!(self.kind, Kind::Private(_))
    }

    /// Key=value connection string for the default database, over TCP
    /// (`host=127.0.0.1 port=N user=postgres dbname=postgres` for a private
    /// cluster).
    pub fn dsn(&self) -> String {
        self.dsn_for(&self.dbname)
    }

    /// Key=value connection string for database `dbname` on this server.
    pub fn dsn_for(&self, dbname: &str) -> String {
        self.build_dsn(&self.host, self.port, dbname)
    }

    /// Key=value connection string for the default database, but connecting
    /// to `addr` instead (e.g. a fault-injecting proxy in front of this
    /// server).
    pub fn dsn_via(&self, addr: SocketAddr) -> String {
        self.build_dsn(&addr.ip().to_string(), addr.port(), &self.dbname)
    }

    fn build_dsn(&self, host: &str, port: u16, dbname: &str) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "host={} port={} user={} dbname={}",
            quote(host),
            port,
            quote(&self.user),
            quote(dbname)
        );
        if let Some(password) = &self.password {
            let _ = write!(s, " password={}", quote(password));
        }
        s
    }

    /// Key=value connection string over the unix socket (private clusters
    /// only).
    pub fn socket_dsn(&self) -> Option<String> {
        match &self.kind {
            Kind::Private(p) => Some(format!(
                "host={} port={} user={} dbname={}",
                quote(&p.dir.to_string_lossy()),
                self.port,
                quote(&self.user),
                quote(&self.dbname)
            )),
            Kind::External { .. } => None,
        }
    }

    /// Host name (or socket directory, for an external server configured so).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Name of the default database.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The server's TCP address if it is on this machine's loopback interface
    /// (always for a private cluster); what a test proxy may connect to.
    pub fn loopback_addr(&self) -> Option<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()?
            .find(|a| a.ip().is_loopback())
    }

    /// The private cluster's temporary directory (data dir, socket, log).
    pub fn dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Private(p) => Some(&p.dir),
            Kind::External { .. } => None,
        }
    }

    /// PID of the private cluster's postmaster, if it is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let p = self.private_opt()?;
        let text = std::fs::read_to_string(p.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The private cluster's `server.log` contents (empty otherwise).
    pub fn log(&self) -> String {
        self.private_opt()
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// Which server is used, for humans (never includes the password).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::External { source } => format!(
                "external PostgreSQL server from {source}: host={} port={} user={} dbname={}{}",
                self.host,
                self.port,
                self.user,
                self.dbname,
                if self.password.is_some() {
                    " (password hidden)"
                } else {
                    ""
                }
            ),
            Kind::Private(p) => format!(
                "private throwaway PostgreSQL cluster at {}:{} (binaries {}, data {})",
                p.listen,
                self.port,
                p.bin_dir.display(),
                p.dir.display()
            ),
        }
    }

    /// Creates a new database with a unique name (`prefix` + pid + counter,
    /// lowercased) and returns its DSN.
    pub fn fresh_database(&self, prefix: &str) -> String {
        let mut name: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert_str(0, "db_");
        }
        let suffix = format!("_{}_{}", std::process::id(), next_id());
        name.truncate(63 - suffix.len());
        name.push_str(&suffix);
        let mut admin = self.admin();
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        self.dsn_for(&name)
    }

    /// A client connected to the default database.
    pub fn admin(&self) -> postgres::Client {
        self.admin_on(&self.dsn())
    }

    /// A client connected with `dsn`.
    pub fn admin_on(&self, dsn: &str) -> postgres::Client {
        postgres::Client::connect(dsn, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test server ({}): {}",
                self.describe(),
                error_chain(&e)
            )
        })
    }

    /// Terminates every other session connected to database `dbname` and
    /// returns how many were signalled. On PostgreSQL 14+ waits (up to 5 s)
    /// until they are gone.
    pub fn terminate_backends(&self, dbname: &str) -> usize {
        let mut admin = self.admin();
        let version: i32 = admin
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .expect("server_version_num")
            .get(0);
        // Pick the victims first: with a single query the planner may push
        // pg_terminate_backend() below the datname filter and kill everyone.
        let pids: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&dbname],
            )
            .expect("list backends")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let sql = if version >= 140000 {
            "SELECT pg_terminate_backend($1, 5000)"
        } else {
            "SELECT pg_terminate_backend($1)"
        };
        pids.iter()
            .filter(|pid| {
                admin
                    .query_one(sql, &[*pid])
                    .map(|row| row.get::<_, bool>(0))
                    // Already gone, or PG14+ timed out waiting: not terminated.
                    .unwrap_or(false)
            })
            .count()
    }

    /// `pg_ctl restart -m immediate -w` on the same port: every existing
    /// connection is killed without a clean shutdown (crash recovery runs).
    pub fn restart_immediate(&self) {
        let p = self.private("restart_immediate");
        let _guard = p.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let out = p.pg_ctl(&[
            "restart",
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "-D",
            &p.data.to_string_lossy(),
            "-l",
            &p.log.to_string_lossy(),
            "-o",
            &server_options(&p.dir, p.listen, self.port, &p.extra),
        ]);
        if !out.status.success() {
            panic!("pg_ctl restart failed: {}", p.failure(&out));
        }
    }

    /// Stops the private cluster (`pg_ctl stop -m fast -w`).
    pub fn stop(&self) {
        let p = self.private("stop");
        let _guard = p.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let out = p.pg_ctl(&[
            "stop",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-D",
            &p.data.to_string_lossy(),
        ]);
        if !out.status.success() {
            panic!("pg_ctl stop failed: {}", p.failure(&out));
        }
    }

    /// Starts the private cluster again after [`stop`](Self::stop), on the
    /// same port.
    pub fn start(&self) {
        let p = self.private("start");
        let _guard = p.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(msg) = p.start(self.port) {
            panic!("pg_ctl start failed: {msg}");
        }
    }

    /// Locates a PostgreSQL program (`pgbench`, `psql`, ...) next to the
    /// server binaries (or in PATH / `/usr/lib/postgresql/*/bin` for an
    /// external server).
    pub fn bin(&self, name: &str) -> Option<PathBuf> {
        if let Some(p) = self.private_opt() {
            let path = p.bin_dir.join(name);
            if path.is_file() {
                return Some(path);
            }
        }
        candidate_bin_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    fn private_opt(&self) -> Option<&Private> {
        match &self.kind {
            Kind::Private(p) => Some(p),
            Kind::External { .. } => None,
        }
    }

    fn private(&self, what: &str) -> &Private {
        self.private_opt().unwrap_or_else(|| {
            panic!(
                "TestServer::{what} needs a private cluster (TestServer::start_private()), \
                 but this is an {}",
                self.describe()
            )
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Kind::Private(p) = &self.kind {
            p.destroy();
        }
    }
}

impl Private {
    /// Runs a PostgreSQL program (as user `postgres` when we are root).
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin_dir.join(program);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        for var in EXTERNAL_VARS
            .iter()
            .chain(&["PGDATA", "PGSERVICE", "PGOPTIONS"])
        {
            cmd.env_remove(var);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.run("pg_ctl", args)
    }

    fn start(&self, port: u16) -> Result<(), String> {
        let out = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            &self.data.to_string_lossy(),
            "-l",
            &self.log.to_string_lossy(),
            "-o",
            &server_options(&self.dir, self.listen, port, &self.extra),
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failure(&out))
        }
    }

    fn failure(&self, out: &Output) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}\nstdout: {}\nstderr: {}\nserver.log (tail):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.join("\n")
        )
    }

    /// Stops the server immediately and deletes the directory.
    fn destroy(&self) {
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if self.data.join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&[
                "stop",
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "-D",
                &self.data.to_string_lossy(),
            ]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `-o` argument for `pg_ctl`: passed through a shell by `pg_ctl`, so the
/// socket directory is single-quoted.
fn server_options(dir: &Path, listen: Ipv4Addr, port: u16, extra: &[(String, String)]) -> String {
    let mut o = format!(
        "-c listen_addresses={listen} -c port={port} -c unix_socket_directories={}",
        shell_quote(&dir.to_string_lossy())
    );
    for (k, v) in SERVER_SETTINGS {
        let _ = write!(o, " -c {k}={v}");
    }
    for (k, v) in extra {
        let _ = write!(o, " -c {k}={}", shell_quote(v));
    }
    o
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An error with its sources (`postgres::Error`'s own text is often just
/// "db error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An error's message, then each `source()`'s, in order.
pub fn chain_parts(e: &dyn std::error::Error) -> Vec<String> {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts
}

/// Asserts that `e` says each thing once (Rust's convention: an error
/// prints its source in its message or returns it from `source()`, not
/// both): no part of its chain repeats what the parts before it said, a
/// trailing parenthesised note such as std's " (os error 111)" aside.
/// Returns the chain joined by ": ", as [`error_chain`] renders it.
pub fn assert_says_each_thing_once(e: &dyn std::error::Error) -> String {
    let parts = chain_parts(e);
    for (n, part) in parts.iter().enumerate().skip(1) {
        let before = parts[..n].join(": ");
        let said = match part.rfind(" (") {
            Some(at) if part.ends_with(')') => &part[..at],
            _ => part.as_str(),
        };
        assert!(
            !said.is_empty() && !before.contains(said),
            "part {n} of the chain repeats what came before it:\n  before: {before:?}\n  part:   {part:?}"
        );
    }
    parts.join(": ")
}

/// Quotes a value for a key=value connection string if needed.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_owned();
    }
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The external server named by `DATABASE_URL` / `PG*` variables, if any is
/// set. `DATABASE_URL` wins; fields it leaves out come from `PG*` variables,
/// then libpq-like defaults.
fn external_from_env() -> Option<Result<TestServer, String>> {
    if !EXTERNAL_VARS.iter().any(|v| env_nonempty(v).is_some()) {
        return None;
    }
    let mut host = None;
    let mut port = None;
    let mut user = None;
    let mut password = None;
    let mut dbname = None;
    let mut source = "PG* environment variables";
    if let Some(url) = env_nonempty("DATABASE_URL") {
        source = "DATABASE_URL";
        let config: postgres::Config = match url.parse() {
            Ok(c) => c,
            // The error text may echo the URL; don't print it (password).
            Err(_) => return Some(Err("DATABASE_URL is not a valid connection string".into())),
        };
        host = config.get_hosts().first().map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
        });
        port = config.get_ports().first().copied();
        user = config.get_user().map(str::to_owned);
        password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        dbname = config.get_dbname().map(str::to_owned);
    }
    let host = host
        .or_else(|| env_nonempty("PGHOST"))
        .unwrap_or_else(|| "localhost".into());
    let port = match port {
        Some(p) => p,
        None => match env_nonempty("PGPORT") {
            Some(p) => match p.parse() {
                Ok(p) => p,
                Err(_) => return Some(Err(format!("PGPORT={p} is not a port number"))),
            },
            None => 5432,
        },
    };
    let user = user
        .or_else(|| env_nonempty("PGUSER"))
        .or_else(|| env_nonempty("USER"))
        .unwrap_or_else(|| "postgres".into());
    let password = password.or_else(|| env_nonempty("PGPASSWORD"));
    let dbname = dbname
        .or_else(|| env_nonempty("PGDATABASE"))
        .unwrap_or_else(|| user.clone());
    Some(Ok(TestServer {
        host,
        port,
        user,
        password,
        dbname,
        kind: Kind::External { source },
    }))
}

/// Directories that may hold PostgreSQL binaries: `$PATH` entries, then
/// `/usr/lib/postgresql/*/bin` from the highest version down.
fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|n| n.parse().ok()).collect();
            Some((version?, e.path().join("bin")))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versioned.into_iter().map(|(_, d)| d));
    dirs
}

/// The first directory holding `initdb`, `pg_ctl` and `postgres` together.
///
/// A PATH entry holding symlinks (e.g. `/usr/local/bin/initdb` ->
/// `/usr/lib/postgresql/15/bin/initdb`) resolves to the real directory, so
/// that [`TestServer::bin`] finds the matching `psql`/`pgbench`.
fn find_server_bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let dir = candidate_bin_dirs().into_iter().find(|d| has_all(d))?;
    let real = std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_all(d));
    Some(real.unwrap_or(dir))
}

fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        // Uid: real effective saved fs
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot pick a free port: {e}"))
}

/// What a private cluster is started as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An ordinary read-write server.
    Primary,
    /// A hot standby that never leaves recovery (`standby.signal`, no primary).
    Standby,
}

fn try_start_private(settings: &[(&str, &str)]) -> Result<TestServer, String> {
    try_start_private_as(settings, Role::Primary, None)
}

/// `at`: the one address and port to listen on (one attempt); by default
/// 127.0.0.1 on a free port (a few attempts).
fn try_start_private_as(
    settings: &[(&str, &str)],
    role: Role,
    at: Option<(Ipv4Addr, u16)>,
) -> Result<TestServer, String> {
    let bin_dir = find_server_bin_dir().ok_or_else(|| {
        "no initdb/pg_ctl/postgres found in PATH or /usr/lib/postgresql/*/bin; install the \
         PostgreSQL server (e.g. `apt-get install postgresql`) or set DATABASE_URL"
            .to_string()
    })?;
    let as_root = running_as_root();

    let dir = std::env::temp_dir().join(format!("pgtx-test-{}-{}", std::process::id(), next_id()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let private = Private {
        data: dir.join("data"),
        log: dir.join("server.log"),
        dir,
        bin_dir,
        as_root,
        extra: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        listen: at.map_or(Ipv4Addr::LOCALHOST, |(host, _)| host),
        ctl: Mutex::new(()),
    };
    // From here on `private` is destroyed on any early return or panic.
    let guard = DestroyOnDrop(Some(private));
    let p = guard.0.as_ref().unwrap();
    spawn_watchdog(p)?;

    if as_root {
        let out = Command::new("chown")
            .arg("postgres:")
            .arg(&p.dir)
            .output()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "running as root, and cannot hand {} to the OS user `postgres` \
                 (PostgreSQL refuses to run as root): {}",
                p.dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }

    let out = p.run(
        "initdb",
        &[
            "-D",
            &p.data.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
    );
    if !out.status.success() {
        let hint = if as_root {
            " (running as root via `runuser -u postgres`: the OS user `postgres` must \
             exist and be able to reach the temp dir)"
        } else {
            ""
        };
        return Err(format!("initdb failed{hint}: {}", p.failure(&out)));
    }
    if role == Role::Standby {
        // Present before the first start, so the server never leaves
        // recovery; with no primary_conninfo and no restore_command it simply
        // waits for WAL that never comes, while hot_standby (on by default)
        // lets read-only sessions in.
        let signal = p.data.join("standby.signal");
        std::fs::write(&signal, "")
            .map_err(|e| format!("cannot create {}: {e}", signal.display()))?;
        if as_root {
            let out = Command::new("chown")
                .arg("postgres:")
                .arg(&signal)
                .output()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot hand {} to the OS user `postgres`: {}",
                    signal.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }

    let mut errors = Vec::new();
    let mut started = None;
    let attempts = if at.is_some() { 1 } else { START_ATTEMPTS };
    for _ in 0..attempts {
        let port = match at {
            Some((_, port)) => port,
            None => free_port()?,
        };
        match p.start(port) {
            Ok(()) => {
                started = Some(port);
                break;
            }
            Err(e) => {
                errors.push(format!("port {port}: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let port = started.ok_or_else(|| {
        format!(
            "pg_ctl start failed {START_ATTEMPTS} times:\n{}",
            errors.join("\n")
        )
    })?;

    let private = guard.disarm();
    Ok(TestServer {
        host: private.listen.to_string(),
        port,
        user: "postgres".into(),
        password: None,
        dbname: "postgres".into(),
        kind: Kind::Private(private),
    })
}

struct DestroyOnDrop(Option<Private>);

impl DestroyOnDrop {
    fn disarm(mut self) -> Private {
        self.0.take().unwrap()
    }
}

impl Drop for DestroyOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.destroy();
        }
    }
}

/// Watchdog script: `$1` test pid, `$2` dir, `$3` data dir, `$4` pg_ctl,
/// `$5` "1" when pg_ctl must run via `runuser -u postgres`.
const WATCHDOG: &str = r#"
pid=$1 dir=$2 data=$3 pg_ctl=$4 as_root=$5
while kill -0 "$pid" 2>/dev/null && [ -d "$dir" ]; do sleep 0.5; done
[ -d "$dir" ] || exit 0
if [ -f "$data/postmaster.pid" ]; then
  if [ "$as_root" = 1 ]; then
    runuser -u postgres -- "$pg_ctl" stop -D "$data" -m immediate -w -t 10
  else
    "$pg_ctl" stop -D "$data" -m immediate -w -t 10
  fi
  if [ -f "$data/postmaster.pid" ]; then
    pm=$(head -n 1 "$data/postmaster.pid")
    [ -n "$pm" ] && kill -9 "$pm"
  fi
fi
rm -rf "$dir"
"#;

/// Spawns a detached shell loop (own process group, so a Ctrl-C to the test
/// doesn't kill it) that removes the cluster once this process is gone, or
/// exits quietly once the directory has been removed by `Drop`.
fn spawn_watchdog(p: &Private) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("pgtx-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(&p.dir)
        .arg(&p.data)
        .arg(p.bin_dir.join("pg_ctl"))
        .arg(if p.as_root { "1" } else { "0" })
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot spawn the cleanup watchdog: {e}"))
}

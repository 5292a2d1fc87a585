//! A PgBouncer of the test's own in front of a test server, in
//! `pool_mode = transaction` with a small pool, so that its clients really
//! take turns on the same few server connections.
//!
//! [`Bouncer::start`] writes a `pgbouncer.ini` into a fresh temporary
//! directory (listening on a free loopback port, `auth_type = trust` with
//! an `auth_file` naming the server's user, every database of the server
//! through the `*` entry), starts `pgbouncer` as a child process (as the
//! OS user `postgres` when running as root: PgBouncer refuses to run as
//! root) and returns once it answers a query. Dropping the `Bouncer` stops
//! it and removes the directory; a detached watchdog does the same if the
//! test process dies first (a `static` is never dropped), as for the
//! server's clusters.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::TestServer;

/// How many times a start is tried, each on another port, when the port
/// picked was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// How long PgBouncer may take to answer its first query.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running PgBouncer, stopped on drop.
pub struct Bouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
    user: String,
}

/// Whether `pgbouncer` is installed (for callers that can do without).
pub fn available() -> bool {
    find_pgbouncer().is_some()
}

impl Bouncer {
    /// Starts PgBouncer in front of `server` with `pool_mode = transaction`
    /// and at most `pool_size` server connections per database and user.
    ///
    /// # Panics
    ///
    /// If `pgbouncer` is not installed (`bash scripts/test`, README's test
    /// command, installs it), `server` is not on loopback, or PgBouncer
    /// does not start.
    pub fn start(server: &TestServer, pool_size: u32) -> Bouncer {
        let program = find_pgbouncer().unwrap_or_else(|| {
            panic!(
                "pgbouncer not found in PATH, /usr/sbin or /usr/bin: install it \
                 (bash scripts/test, README's test command, does)"
            )
        });
        let upstream = server
            .loopback_addr()
            .expect("the test server listens on loopback");
        let as_root = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "pgtx-pgbouncer-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        spawn_watchdog(&dir);
        // The auth file names the user without a password: with trust,
        // PgBouncer only needs to know the name, and the server trusts
        // loopback connections too.
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"{}\" \"\"\n", server.user()),
        )
        .expect("write userlist.txt");
        if as_root {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&dir)
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "cannot hand {} to the OS user postgres: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let ini = dir.join("pgbouncer.ini");
            std::fs::write(&ini, config(&dir, port, upstream.port(), pool_size))
                .expect("write pgbouncer.ini");
            let mut command = Command::new(&program);
            if as_root {
                command.args(["-u", "postgres"]);
            }
            let mut child = command
                .arg(&ini)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            let probe = dsn(port, server.user(), "postgres");
            match wait_until_ready(&mut child, &probe, &dir) {
                Ok(()) => {
                    return Bouncer {
                        child,
                        dir,
                        port,
                        user: server.user().to_owned(),
                    };
                }
                Err(why) => {
                    failures.push(format!("port {port}: {why}"));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let log = read_log(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        panic!(
            "pgbouncer did not start ({START_ATTEMPTS} attempts):\n{}\npgbouncer.log:\n{log}",
            failures.join("\n")
        );
    }

    /// Key=value connection string for database `dbname` through PgBouncer.
    pub fn dsn_for(&self, dbname: &str) -> String {
        dsn(self.port, &self.user, dbname)
    }

    /// The port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("pgbouncer.log:\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dsn(port: u16, user: &str, dbname: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} dbname={dbname}")
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
}

/// Waits until a query through PgBouncer is answered (which also proves
/// that PgBouncer reaches the server), or it exits.
fn wait_until_ready(child: &mut Child, dsn: &str, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("pgbouncer exited ({status}):\n{}", read_log(dir)));
        }
        let last = match postgres::Client::connect(dsn, postgres::NoTls) {
            Ok(mut client) => match client.simple_query("SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("no answer within {READY_WITHIN:?}: {last}"));
        }
        // Starting up: there is nothing to wait on but the port itself.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pgbouncer.ini` for a PgBouncer on `port` in front of the server on
/// `upstream` (loopback).
fn config(dir: &Path, port: u16, upstream: u16, pool_size: u32) -> String {
    let dir = dir.display();
    let mut ini = String::new();
    let _ = write!(
        ini,
        "[databases]\n\
         * = host=127.0.0.1 port={upstream}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 500\n\
         max_db_connections = {pool_size}\n\
         server_idle_timeout = 0\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n\
         admin_users = postgres\n"
    );
    ini
}

fn find_pgbouncer() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

fn next_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            Some(line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Watchdog script: `$1` test pid, `$2` dir. Once the test process is
/// gone, stops the PgBouncer whose pid file is in the directory, and
/// removes it; exits quietly once `Drop` removed the directory.
const WATCHDOG: &str = r#"
pid=$1 dir=$2
while kill -0 "$pid" 2>/dev/null && [ -d "$dir" ]; do sleep 0.5; done
[ -d "$dir" ] || exit 0
if [ -f "$dir/pgbouncer.pid" ]; then
  bouncer=$(head -n 1 "$dir/pgbouncer.pid")
  [ -n "$bouncer" ] && kill -9 "$bouncer"
fi
rm -rf "$dir"
"#;

/// A detached shell loop (own process group, so a Ctrl-C to the test does
/// not kill it) that cleans up after a test process that died.
fn spawn_watchdog(dir: &Path) {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("pgtx-pgbouncer-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .expect("spawn the pgbouncer cleanup watchdog");
}

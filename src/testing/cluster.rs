//! Private throwaway clusters: `initdb` into a temporary directory,
//! `pg_ctl` to start, stop and restart, and a watchdog that removes the
//! cluster once the process is gone (statics never drop, and a test
//! process may panic or abort).
//!
//! When the process runs as root (PostgreSQL refuses to), the directory is
//! handed to the OS user `postgres` and `initdb`/`pg_ctl` run through
//! `runuser -u postgres --`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::env::EXTERNAL_VARS;
use super::{Kind, TestServer};

/// Settings every private cluster is started with (besides port, listen
/// address and socket directory): quick and disposable (no fsync), room for
/// many connections and prepared transactions.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("max_prepared_transactions", "20"),
    ("max_connections", "300"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
];

/// How many times a private cluster start is retried (each time on a new
/// port) before giving up.
pub(super) const START_ATTEMPTS: usize = 5;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique in this process (for directory and database names).
pub(super) fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A private cluster's directory and how to run its programs.
pub(super) struct Private {
    /// Temporary directory: holds `data/`, the unix socket and `server.log`.
    pub(super) dir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) log: PathBuf,
    pub(super) bin_dir: PathBuf,
    as_root: bool,
    /// Extra `-c` settings it was started with.
    pub(super) extra: Vec<(String, String)>,
    /// The one address it listens on (`listen_addresses`).
    pub(super) listen: Ipv4Addr,
    /// Serialises start/stop/restart.
    pub(super) ctl: Mutex<()>,
}

/// What a private cluster is started as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// An ordinary read-write server.
    Primary,
    /// A hot standby that never leaves recovery (`standby.signal`, no primary).
    Standby,
    /// A streaming standby of the server at this address: a base backup
    /// of it (`pg_basebackup -R`), which keeps following its WAL.
    ReplicaOf(Ipv4Addr, u16),
}

impl Private {
    /// Runs a PostgreSQL program (as user `postgres` when we are root).
    fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
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
            .map_err(|e| format!("cannot run {}: {e}", path.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        self.run("pg_ctl", args)
    }

    /// Starts the cluster on `port` and waits until it accepts connections.
    pub(super) fn start(&self, port: u16) -> Result<(), String> {
        self.pg_ctl_with_options("start", &[], port)
    }

    /// `pg_ctl <action> <extra> -w -t 60 -D … -l … -o <options>`: what
    /// went wrong, with the end of the server's log, if it failed.
    fn pg_ctl_with_options(&self, action: &str, extra: &[&str], port: u16) -> Result<(), String> {
        let data = self.data.to_string_lossy();
        let log = self.log.to_string_lossy();
        let options = server_options(&self.dir, self.listen, port, &self.extra);
        let mut args = vec![action];
        args.extend_from_slice(extra);
        args.extend(["-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options]);
        let out = self.pg_ctl(&args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failure(&out))
        }
    }

    /// `pg_ctl restart -m immediate` on `port`: every connection is killed
    /// without a clean shutdown (crash recovery runs).
    pub(super) fn restart_immediate(&self, port: u16) -> Result<(), String> {
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        self.pg_ctl_with_options("restart", &["-m", "immediate"], port)
            .map_err(|failure| format!("pg_ctl restart failed: {failure}"))
    }

    /// `pg_ctl stop -m fast`.
    pub(super) fn stop(&self) -> Result<(), String> {
        self.stop_with("fast")
    }

    /// `pg_ctl stop -m immediate`: the server exits at once, as after a
    /// crash; its sessions end without a word.
    pub(super) fn stop_immediate(&self) -> Result<(), String> {
        self.stop_with("immediate")
    }

    /// `pg_ctl promote -w`: a standby becomes a primary and takes writes.
    pub(super) fn promote(&self) -> Result<(), String> {
        self.control("promote", &[])
    }

    fn stop_with(&self, mode: &str) -> Result<(), String> {
        self.control("stop", &["-m", mode])
    }

    /// `pg_ctl <action> <extra> -w -t 60 -D …` on the running cluster,
    /// serialised with the other start/stop calls: what went wrong, if it
    /// failed.
    fn control(&self, action: &str, extra: &[&str]) -> Result<(), String> {
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let data = self.data.to_string_lossy();
        let mut args = vec![action];
        args.extend_from_slice(extra);
        args.extend(["-w", "-t", "60", "-D", &data]);
        let out = self.pg_ctl(&args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl {action} failed: {}", self.failure(&out)))
        }
    }

    /// Starts it again after [`stop`](Self::stop), on `port`.
    pub(super) fn start_again(&self, port: u16) -> Result<(), String> {
        let _guard = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        self.start(port)
            .map_err(|e| format!("pg_ctl start failed: {e}"))
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
    pub(super) fn destroy(&self) {
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

/// Directories that may hold PostgreSQL binaries: `$PATH` entries, then
/// `/usr/lib/postgresql/*/bin` from the highest version down.
pub(super) fn candidate_bin_dirs() -> Vec<PathBuf> {
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

pub(super) fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot pick a free port: {e}"))
}

/// `at`: the one address and port to listen on (one attempt); by default
/// 127.0.0.1 on a free port (a few attempts).
pub(super) fn try_start_private_as(
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
    let p = guard.get();
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

    if let Role::ReplicaOf(host, port) = role {
        base_backup(p, host, port)?;
    } else {
        init(p)?;
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

/// `initdb`: a new cluster in `p.data`.
fn init(p: &Private) -> Result<(), String> {
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
    )?;
    if !out.status.success() {
        let hint = if p.as_root {
            " (running as root via `runuser -u postgres`: the OS user `postgres` must \
             exist and be able to reach the temp dir)"
        } else {
            ""
        };
        return Err(format!("initdb failed{hint}: {}", p.failure(&out)));
    }
    Ok(())
}

/// `pg_basebackup -R` from the server at `host:port` into `p.data`: a copy
/// that starts as a standby streaming from it (`standby.signal`, and
/// `primary_conninfo` in `postgresql.auto.conf`).
fn base_backup(p: &Private, host: Ipv4Addr, port: u16) -> Result<(), String> {
    let out = p.run(
        "pg_basebackup",
        &[
            "-D",
            &p.data.to_string_lossy(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-h",
            &host.to_string(),
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ],
    )?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("pg_basebackup failed: {}", p.failure(&out)))
    }
}

struct DestroyOnDrop(Option<Private>);

impl DestroyOnDrop {
    fn get(&self) -> &Private {
        match &self.0 {
            Some(p) => p,
            None => unreachable!("disarmed only when done"),
        }
    }

    fn disarm(mut self) -> Private {
        match self.0.take() {
            Some(p) => p,
            None => unreachable!("disarmed once"),
        }
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

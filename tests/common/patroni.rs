//! A two-node PostgreSQL cluster managed by Patroni (the HA manager people
//! run), with a one-node etcd as its store, all on loopback: for the
//! switchover and failover tests. Debian's `patroni` and `etcd-server`,
//! which `scripts/setup` installs.
//!
//! Each cluster has a directory of its own; PostgreSQL refuses to run as
//! root, so as root Patroni runs as the OS user `postgres` (through
//! `setpriv`, so that the child is Patroni itself). Dropping the cluster
//! kills Patroni, stops each postmaster at once and etcd, and removes the
//! directory. Timings are short (ttl 10 s, loop_wait 1 s) and
//! `primary_start_timeout: 0` makes Patroni fail over when the primary's
//! postmaster dies rather than restart it in place.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCOPE: &str = "pgtx-test";

/// Etcd, two Patroni nodes, and the directory they live in.
pub struct PatroniCluster {
    dir: PathBuf,
    etcd: Child,
    nodes: Vec<Node>,
}

struct Node {
    name: String,
    dir: PathBuf,
    pg_port: u16,
    api_port: u16,
    patroni: Option<Child>,
}

/// The PostgreSQL server binaries Patroni runs: Debian's, highest version
/// first (scripts/setup installs them).
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (Debian's PostgreSQL server package)")
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql/*/bin")
        .1
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The HTTP status of `GET path` on Patroni's REST API at `port`, or 0 if
/// it does not answer.
fn api_status(port: u16, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0_u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return 0;
    }
    // "HTTP/1.0 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "Patroni cluster: never {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

impl PatroniCluster {
    /// Starts etcd, then node 0 (which bootstraps the cluster and becomes
    /// its primary), then node 1 (a synchronous standby); returns once
    /// Patroni reports them so.
    pub fn start() -> PatroniCluster {
        let root = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "pgtx-patroni-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("etcd")).expect("cluster dir");
        let (etcd_client, etcd_peer) = (free_port(), free_port());
        let etcd = Command::new("etcd")
            .arg("--name=etcd0")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=etcd0=http://127.0.0.1:{etcd_peer}"
            ))
            .args(["--heartbeat-interval=50", "--election-timeout=250"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("etcd runs (scripts/setup installs etcd-server)");
        let mut cluster = PatroniCluster {
            dir: dir.clone(),
            etcd,
            nodes: Vec::new(),
        };
        for n in 0..2 {
            let node_dir = dir.join(format!("node{n}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let node = Node {
                name: format!("node{n}"),
                dir: node_dir,
                pg_port: free_port(),
                api_port: free_port(),
                patroni: None,
            };
            std::fs::write(node.dir.join("patroni.yml"), node.config(etcd_client))
                .expect("patroni.yml");
            cluster.nodes.push(node);
        }
        if root {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .args(cluster.nodes.iter().map(|n| &n.dir))
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        wait_until("etcd answered", Duration::from_secs(30), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, etcd_client)).is_ok()
        });
        cluster.start_patroni(0);
        wait_until("node0 became primary", Duration::from_secs(90), || {
            cluster.is_primary(0)
        });
        cluster.start_patroni(1);
        cluster.wait_healthy(0);
        cluster
    }

    fn start_patroni(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let config = node.dir.join("patroni.yml");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(node.dir.join("patroni.log"))
            .expect("patroni log");
        let mut command = if running_as_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                "patroni",
            ]);
            c
        } else {
            Command::new("patroni")
        };
        let child = command
            .arg(&config)
            .env("HOME", &node.dir)
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("patroni runs (scripts/setup installs it)");
        node.patroni = Some(child);
    }

    /// A connection string listing both nodes, as clients of a Patroni
    /// cluster list its servers.
    pub fn dsn(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres password=postgres \
             dbname=postgres connect_timeout=5 {extra}",
            self.nodes[0].pg_port, self.nodes[1].pg_port
        )
    }

    /// A plain client on node `n`.
    pub fn admin(&self, n: usize) -> postgres::Client {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres",
                self.nodes[n].pg_port
            ),
            postgres::NoTls,
        )
        .expect("connect to a node")
    }

    pub fn port(&self, n: usize) -> u16 {
        self.nodes[n].pg_port
    }

    fn is_primary(&self, n: usize) -> bool {
        api_status(self.nodes[n].api_port, "/primary") == 200
    }

    /// The node Patroni has as primary now, if one.
    pub fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.is_primary(n))
    }

    /// Waits until `primary` is the primary and the other node its
    /// streaming synchronous standby, as Patroni reports them; how long.
    pub fn wait_healthy(&self, primary: usize) -> Duration {
        let standby = 1 - primary;
        wait_until(
            &format!("node{primary} primary with node{standby} its sync standby"),
            Duration::from_secs(120),
            || {
                self.is_primary(primary)
                    && api_status(self.nodes[standby].api_port, "/replica") == 200
                    && api_status(self.nodes[standby].api_port, "/sync") == 200
            },
        )
    }

    /// `patronictl switchover` from the primary to the other node; returns
    /// once the other node is primary.
    pub fn switchover(&self) -> usize {
        let from = self.primary().expect("a primary");
        let to = 1 - from;
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(self.nodes[from].dir.join("patroni.yml"))
            .args(["switchover", "--leader", &self.nodes[from].name])
            .args(["--candidate", &self.nodes[to].name, "--force", SCOPE])
            .env("PYTHONWARNINGS", "ignore")
            .output()
            .expect("patronictl runs");
        let said = String::from_utf8_lossy(&out.stdout);
        // patronictl exits 0 even when the switchover is refused.
        assert!(
            said.contains("Successfully switched over"),
            "switchover: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            "the candidate became primary",
            Duration::from_secs(60),
            || self.is_primary(to),
        );
        to
    }

    /// Kills the primary's postmaster (SIGKILL), as a crash; returns the
    /// node that was primary.
    pub fn kill_primary(&self) -> usize {
        let primary = self.primary().expect("a primary");
        let pid_file = self.nodes[primary].dir.join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
        let pid = pid.lines().next().expect("a pid").trim().to_owned();
        let out = Command::new("kill")
            .args(["-KILL", &pid])
            .output()
            .expect("kill");
        assert!(out.status.success(), "kill: {out:?}");
        primary
    }

    /// The end of each node's Patroni log, for a failure's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir.join("patroni.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "{}:\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Node {
    fn config(&self, etcd_client: u16) -> String {
        let dir = self.dir.display();
        format!(
            r#"scope: {SCOPE}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_client}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    primary_start_timeout: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 100
        shared_buffers: 16MB
        wal_keep_size: 64MB
        fsync: 'off'
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums
    - auth: trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  parameters:
    unix_socket_directories: '{dir}'
  pg_hba:
    - local all all trust
    - local replication all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
    rewind:
      username: postgres
      password: postgres
watchdog:
  mode: off
"#,
            name = self.name,
            bin_dir = pg_bin_dir().display(),
            api = self.api_port,
            pg = self.pg_port,
        )
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut patroni) = node.patroni.take() {
                let _ = patroni.kill();
                let _ = patroni.wait();
            }
        }
        for node in &self.nodes {
            stop_postmaster(&node.dir.join("data"));
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGQUIT to the postmaster of `data` (an immediate shutdown), and a
/// moment for it to go.
fn stop_postmaster(data: &Path) {
    let Ok(pid) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pid.lines().next().map(str::trim) else {
        return;
    };
    let _ = Command::new("kill").args(["-QUIT", pid]).output();
    let gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
}

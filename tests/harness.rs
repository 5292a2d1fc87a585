//! Tests of the test harness itself: the real-PostgreSQL server helper and the
//! TCP fault proxy in `tests/common`.

mod common;

use common::eventually;
use common::proxy::Proxy;
use common::server::TestServer;
use postgres::{Client, NoTls};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

fn connect(dsn: &str) -> Client {
    Client::connect(dsn, NoTls)
        .unwrap_or_else(|e| panic!("connect failed: {}", common::server::error_chain(&e)))
}

fn select_1(client: &mut Client) -> Result<i32, postgres::Error> {
    client.query_one("SELECT 1", &[]).map(|row| row.get(0))
}

fn current_database(client: &mut Client) -> String {
    client
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0)
}

/// A server the proxy may front: the shared one if it is on loopback,
/// otherwise a private cluster.
fn proxied_server() -> &'static TestServer {
    static FALLBACK: OnceLock<TestServer> = OnceLock::new();
    let shared = TestServer::shared();
    if shared.loopback_addr().is_some() {
        shared
    } else {
        FALLBACK.get_or_init(TestServer::start_private)
    }
}

fn proxy_for(server: &TestServer) -> Proxy {
    Proxy::start(server.loopback_addr().expect("server on loopback"))
}

#[test]
fn shared_server_answers_select_1() {
    let server = TestServer::shared();
    eprintln!("using {}", server.describe());
    assert!(
        server.describe().contains(&server.port().to_string()),
        "the description names the server: {}",
        server.describe()
    );
    let mut client = connect(&server.dsn());
    assert_eq!(select_1(&mut client).unwrap(), 1);
    assert_eq!(current_database(&mut client), server.dbname());
    let mut admin = server.admin();
    assert_eq!(select_1(&mut admin).unwrap(), 1);
    // The same server is handed out every time.
    assert!(std::ptr::eq(server, TestServer::shared()));
}

#[test]
fn private_cluster_has_expected_dsn_settings_and_tools() {
    let server = TestServer::shared();
    if !server.is_private() {
        eprintln!("skipped: shared server is external ({})", server.describe());
        return;
    }
    assert_eq!(
        server.dsn(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            server.port()
        )
    );
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(server.user(), "postgres");
    let mut via_socket = connect(&server.socket_dsn().expect("private cluster has a socket"));
    assert_eq!(select_1(&mut via_socket).unwrap(), 1);
    for (name, want) in [
        ("max_prepared_transactions", "20"),
        ("max_connections", "300"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("shared_buffers", "32MB"),
        ("listen_addresses", "127.0.0.1"),
        ("server_encoding", "UTF8"),
    ] {
        let got: String = via_socket
            .query_one("SELECT current_setting($1)", &[&name])
            .unwrap()
            .get(0);
        assert_eq!(got, want, "setting {name}");
    }
    for tool in ["psql", "pgbench", "pg_ctl"] {
        let path = server
            .bin(tool)
            .unwrap_or_else(|| panic!("{tool} not found"));
        assert!(path.is_file(), "{}", path.display());
    }
    assert!(server.bin("no-such-program").is_none());
}

#[test]
fn fresh_databases_are_distinct() {
    let server = TestServer::shared();
    let dsn_a = server.fresh_database("Harness-A");
    let dsn_b = server.fresh_database("Harness-A");
    assert_ne!(dsn_a, dsn_b);
    let mut a = connect(&dsn_a);
    let mut b = connect(&dsn_b);
    let name_a = current_database(&mut a);
    let name_b = current_database(&mut b);
    assert_ne!(name_a, name_b);
    for name in [&name_a, &name_b] {
        assert!(name.starts_with("harness_a_"), "{name}");
        assert_eq!(name, &name.to_lowercase());
    }
    a.batch_execute("CREATE TABLE only_in_a (x int)").unwrap();
    let visible_in_b: bool = b
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(!visible_in_b);
}

#[test]
fn restart_immediate_kills_connections_and_server_comes_back() {
    let server = TestServer::start_private();
    let dir = server.dir().expect("private").to_path_buf();
    let port = server.port();
    let mut old = connect(&server.dsn());
    assert_eq!(select_1(&mut old).unwrap(), 1);
    let pid_before = server.postmaster_pid().expect("postmaster running");

    server.restart_immediate();
    assert_eq!(server.port(), port);
    assert!(
        select_1(&mut old).is_err(),
        "query on a connection from before the restart should fail"
    );
    assert_ne!(server.postmaster_pid(), Some(pid_before));
    let mut new = connect(&server.dsn());
    assert_eq!(select_1(&mut new).unwrap(), 1);

    server.stop();
    assert!(select_1(&mut new).is_err());
    assert!(Client::connect(&server.dsn(), NoTls).is_err());
    server.start();
    let mut again = connect(&server.dsn());
    assert_eq!(select_1(&mut again).unwrap(), 1);

    drop(again);
    drop(server);
    assert!(!dir.exists(), "Drop should remove {}", dir.display());
}

#[test]
fn terminate_backends_kills_sessions() {
    let server = TestServer::shared();
    let dsn = server.fresh_database("harness_term");
    let mut one = connect(&dsn);
    let mut two = connect(&dsn);
    let db = current_database(&mut one);
    assert_eq!(select_1(&mut two).unwrap(), 1);

    assert_eq!(server.terminate_backends(&db), 2);
    assert!(select_1(&mut one).is_err());
    assert!(select_1(&mut two).is_err());
    assert_eq!(server.terminate_backends(&db), 0);
    let mut three = connect(&dsn);
    assert_eq!(select_1(&mut three).unwrap(), 1);
}

#[test]
fn proxy_cut_breaks_connections_and_accepts_new_ones() {
    let server = proxied_server();
    let proxy = proxy_for(server);
    let mut client = connect(&server.dsn_via(proxy.addr()));
    assert_eq!(select_1(&mut client).unwrap(), 1);
    assert_eq!(proxy.connections(), 1);

    proxy.cut();
    assert!(
        select_1(&mut client).is_err(),
        "query after cut() should fail"
    );
    assert!(eventually(Duration::from_secs(5), || proxy.connections() == 0));

    let mut fresh = connect(&server.dsn_via(proxy.addr()));
    assert_eq!(select_1(&mut fresh).unwrap(), 1);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.total_connections(), 2);
}

#[test]
fn proxy_stall_holds_queries_until_resume() {
    let server = proxied_server();
    let proxy = proxy_for(server);
    let mut client = connect(&server.dsn_via(proxy.addr()));
    assert_eq!(select_1(&mut client).unwrap(), 1);

    proxy.stall();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let result = select_1(&mut client).map_err(|e| e.to_string());
        tx.send(result).unwrap();
        client
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "a query through a stalled proxy must not complete"
    );
    assert_eq!(proxy.connections(), 1, "stall must not close connections");

    proxy.resume();
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("query completes after resume()");
    assert_eq!(result, Ok(1));
    let mut client = worker.join().unwrap();
    assert_eq!(select_1(&mut client).unwrap(), 1);
}

#[test]
fn proxy_threads_end_when_dropped() {
    let server = proxied_server();
    let proxy = proxy_for(server);
    let mut client = connect(&server.dsn_via(proxy.addr()));
    proxy.stall();
    // Drop must not hang on a stalled connection, and must close it.
    drop(proxy);
    assert!(select_1(&mut client).is_err());
}

#[test]
#[should_panic(expected = "only connects to loopback")]
fn proxy_refuses_non_loopback_targets() {
    let _ = Proxy::start("192.0.2.1:5432".parse::<SocketAddr>().unwrap());
}

const CHILD_ENV: &str = "PGTX_HARNESS_ABORT_CHILD";

/// Whether process `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !(state.starts_with('Z') || state.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// The child half of `watchdog_cleans_up_after_abort`, run in a copy of
/// this test binary: starts a private cluster, reports it, and aborts
/// without running any destructor.
fn child_start_cluster_and_abort() -> ! {
    let server = TestServer::start_private();
    let mut client = server.admin();
    assert_eq!(select_1(&mut client).unwrap(), 1);
    println!("PGTX_DIR={}", server.dir().unwrap().display());
    println!("PGTX_PM={}", server.postmaster_pid().unwrap());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::process::abort();
}

#[test]
fn watchdog_cleans_up_after_abort() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_start_cluster_and_abort();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "watchdog_cleans_up_after_abort",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "child should have aborted\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, value)| value.trim()))
            .unwrap_or_else(|| {
                panic!(
                    "child printed no {key}\nstdout: {stdout}\nstderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_owned()
    };
    let dir = field("PGTX_DIR=");
    let postmaster: u32 = field("PGTX_PM=").parse().unwrap();
    let dir = Path::new(&dir);
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()
            && !process_alive(postmaster)),
        "watchdog did not stop postmaster {postmaster} and remove {} in time",
        dir.display()
    );
}

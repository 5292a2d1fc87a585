//! A primary and its streaming standby: which server a connection goes to
//! for each `target_session_attrs`, against psql's choice on the same host
//! list, and how `load_balance_hosts=random` spreads connections over the
//! servers that qualify.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

use common::server::TestServer;
use pgtx::{Error, ManagedConnection, Pool, SessionTarget, SqlState, TxOptions};

/// A primary, its streaming standby, and a port where nothing listens.
struct Servers {
    primary: TestServer,
    standby: TestServer,
    down: u16,
}

/// The binary's primary and standby, shared by the tests that only
/// connect to them (none stops, promotes or writes to them).
fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let primary = TestServer::start_private();
        let standby = primary.start_replica();
        // Nothing listens on a port a listener was bound to and let go of.
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Servers {
            primary,
            standby,
            down,
        }
    })
}

/// What each letter of a host list stands for.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Primary,
    Standby,
    Down,
}

impl Kind {
    fn port(self) -> u16 {
        let servers = servers();
        match self {
            Kind::Primary => servers.primary.port(),
            Kind::Standby => servers.standby.port(),
            Kind::Down => servers.down,
        }
    }
}

/// A connection string listing `kinds` in order, with `extra` settings.
fn host_list(kinds: &[Kind], extra: &str) -> String {
    let hosts = vec!["127.0.0.1"; kinds.len()].join(",");
    let ports: Vec<String> = kinds.iter().map(|k| k.port().to_string()).collect();
    format!(
        "host={hosts} port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
        ports.join(",")
    )
}

/// The port of the server psql connects to with `dsn`, or `None` if it
/// connects to none.
fn psql_choice(dsn: &str) -> Option<u16> {
    let psql = servers()
        .primary
        .bin("psql")
        .expect("psql next to the server");
    let mut command = Command::new(psql);
    command
        .args(["-X", "-A", "-t", "-q", "-w", "-d", dsn, "-c", "SHOW port"])
        .env("PGCONNECT_TIMEOUT", "10");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(&name);
        }
    }
    let out = command.output().expect("psql runs");
    if !out.status.success() {
        return None;
    }
    let port = String::from_utf8_lossy(&out.stdout).trim().parse();
    Some(port.expect("psql printed a port"))
}

/// The port of the server pgtx connects to with `dsn`, or `None` (with the
/// error) if it connects to none.
fn pgtx_choice(dsn: &str) -> Result<u16, String> {
    let manager = ManagedConnection::new(dsn).map_err(|e| e.to_string())?;
    let mut guard = manager.lock().map_err(|e| e.to_string())?;
    let port: String = guard
        .query_one("SHOW port", &[])
        .map_err(|e| e.to_string())?
        .get(0);
    Ok(port.parse().expect("a port"))
}

/// Every list of distinct kinds, of one to three entries, in every order.
fn host_lists() -> Vec<Vec<Kind>> {
    let all = [Kind::Primary, Kind::Standby, Kind::Down];
    let mut lists: Vec<Vec<Kind>> = all.iter().map(|&k| vec![k]).collect();
    for &a in &all {
        for &b in &all {
            if a as u8 == b as u8 {
                continue;
            }
            lists.push(vec![a, b]);
            for &c in &all {
                if c as u8 != a as u8 && c as u8 != b as u8 {
                    lists.push(vec![a, b, c]);
                }
            }
        }
    }
    lists
}

const MODES: [&str; 6] = [
    "any",
    "read-write",
    "read-only",
    "primary",
    "standby",
    "prefer-standby",
];

#[test]
fn each_target_session_attrs_chooses_the_server_psql_chooses() {
    let servers = servers();
    let mut compared = 0;
    for mode in MODES {
        for list in host_lists() {
            let dsn = host_list(&list, &format!("target_session_attrs={mode}"));
            let psql = psql_choice(&dsn);
            let pgtx = pgtx_choice(&dsn);
            assert_eq!(
                pgtx.as_ref().ok(),
                psql.as_ref(),
                "{mode} over {list:?} (primary {}, standby {}, down {}): pgtx {pgtx:?}, psql {psql:?}",
                servers.primary.port(),
                servers.standby.port(),
                servers.down,
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6 * 15);
}

#[test]
fn a_refused_server_is_named_with_libpqs_reason() {
    for (mode, list, reason) in [
        ("read-write", [Kind::Standby], "session is read-only"),
        ("read-only", [Kind::Primary], "session is not read-only"),
        ("primary", [Kind::Standby], "server is in hot standby mode"),
        (
            "standby",
            [Kind::Primary],
            "server is not in hot standby mode",
        ),
    ] {
        let dsn = host_list(&list, &format!("target_session_attrs={mode}"));
        let e = pgtx_choice(&dsn).expect_err(mode);
        assert!(e.contains(reason), "{mode}: {e}");
    }
}

/// Opens `n` connections with `dsn` (one manager each, kept open) and
/// counts them per server from each server's own `pg_stat_activity`.
fn spread(dsn: &str, n: usize) -> HashMap<&'static str, i64> {
    let servers = servers();
    // A name of its own per call: the backends of an earlier call may not
    // have exited yet.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("spread-{}-{call}", std::process::id());
    let dsn = format!("{dsn} application_name={name}");
    let managers: Vec<ManagedConnection> = (0..n)
        .map(|_| {
            let manager = ManagedConnection::new(&dsn).expect("settings");
            manager
                .lock()
                .expect("connect")
                .execute("SELECT 1", &[])
                .expect("query");
            manager
        })
        .collect();
    let count = |server: &TestServer| -> i64 {
        server
            .admin()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .expect("count")
            .get(0)
    };
    // Sessions turned down on the way (a server that did not qualify)
    // close as pgtx moves on: waited for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let counts = loop {
        let counts = HashMap::from([
            ("primary", count(&servers.primary)),
            ("standby", count(&servers.standby)),
        ]);
        let total: i64 = counts.values().sum();
        if total == i64::try_from(n).expect("n") || std::time::Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    drop(managers);
    counts
}

#[test]
fn load_balance_hosts_random_spreads_connections_over_the_servers_that_qualify() {
    let list = [Kind::Primary, Kind::Standby];
    // Any server: both get some. Fewer than 6 of 40 on one side happens
    // about once in 700,000 runs.
    let any = spread(&host_list(&list, "load_balance_hosts=random"), 40);
    assert_eq!(any["primary"] + any["standby"], 40, "{any:?}");
    assert!(any["primary"] >= 6 && any["standby"] >= 6, "{any:?}");
    // Only the standby qualifies: every connection goes there, whatever
    // order the shuffle tried them in.
    let standby = spread(
        &host_list(
            &list,
            "load_balance_hosts=random target_session_attrs=prefer-standby",
        ),
        20,
    );
    assert_eq!((standby["primary"], standby["standby"]), (0, 20));
    let primary = spread(
        &host_list(
            &list,
            "load_balance_hosts=random target_session_attrs=read-write",
        ),
        20,
    );
    assert_eq!((primary["primary"], primary["standby"]), (20, 0));
}

/// The port of the server a read-only transaction on `pool` ran on.
fn read_on(pool: &Pool) -> Result<i32, Error> {
    pool.transaction_with(TxOptions::new().read_only(true), |mut tx| {
        let port: i32 = tx.query_one("SELECT inet_server_port()", &[])?.get(0);
        tx.commit_returning(port)
    })
}

/// A pool for writes and one for reads, from one host list.
fn split_pools(list: &[Kind]) -> (Pool, Pool) {
    let servers = ManagedConnection::builder(&host_list(list, ""));
    let writes = servers
        .clone()
        .target(SessionTarget::ReadWrite)
        .pool(2)
        .build()
        .expect("settings");
    let reads = servers
        .target(SessionTarget::PreferStandby)
        .pool(2)
        .build()
        .expect("settings");
    (writes, reads)
}

#[test]
fn one_host_list_gives_a_pool_for_writes_on_the_primary_and_one_for_reads_on_the_standby() {
    let servers = servers();
    let (primary, standby) = (
        i32::from(servers.primary.port()),
        i32::from(servers.standby.port()),
    );
    // Listed either way round, writes find the primary, reads the standby.
    for list in [
        [Kind::Primary, Kind::Standby],
        [Kind::Standby, Kind::Primary],
    ] {
        let (writes, reads) = split_pools(&list);
        let wrote_on = writes
            .transaction(|mut tx| {
                tx.execute("CREATE TEMP TABLE t (n int)", &[])?;
                let port: i32 = tx.query_one("SELECT inet_server_port()", &[])?.get(0);
                tx.commit_returning(port)
            })
            .expect("a write");
        assert_eq!(wrote_on, primary, "{list:?}");
        for _ in 0..4 {
            assert_eq!(read_on(&reads).expect("a read"), standby, "{list:?}");
        }
        // A write sent to the reads pool is refused by the standby, and
        // the pool stays there: it was asked for reads.
        let refused = reads
            .transaction(|mut tx| {
                tx.execute("CREATE TEMP TABLE t (n int)", &[])?;
                tx.commit()
            })
            .expect_err("a standby refuses writes");
        assert_eq!(refused.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        assert_eq!(read_on(&reads).expect("a read"), standby, "{list:?}");
    }
}

#[test]
fn reads_go_to_the_primary_while_the_standby_is_down_and_back_once_it_is_up() {
    let primary = TestServer::start_private();
    let standby = primary.start_replica();
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres connect_timeout=5",
        standby.port(),
        primary.port()
    );
    let reads = ManagedConnection::builder(&dsn)
        .target(SessionTarget::PreferStandby)
        .pool(1)
        .build()
        .expect("settings");
    let port = |server: &TestServer| i32::from(server.port());
    assert_eq!(read_on(&reads).expect("read"), port(&standby));
    standby.stop();
    // The pooled connection to the standby is gone with it; the next one
    // finds no standby and takes the primary (prefer-standby's second pass).
    assert_eq!(read_on(&reads).expect("read"), port(&primary));
    standby.start();
    // A connection stays where it is while it works: a new one (after
    // this one is closed) goes back to the standby.
    reads.close_idle().expect("close");
    assert_eq!(read_on(&reads).expect("read"), port(&standby));
}

#[test]
fn a_server_that_does_not_report_its_role_is_asked_and_chosen_as_psql_chooses() {
    /// The port and last statement of the one session named `name` on
    /// either server, once there is exactly one.
    fn the_one_session(name: &str) -> (i32, String) {
        let servers = servers();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut found = Vec::new();
            for server in [&servers.primary, &servers.standby] {
                for row in server
                    .admin()
                    .query(
                        "SELECT inet_server_port(), query FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&name],
                    )
                    .expect("pg_stat_activity")
                {
                    found.push((row.get(0), row.get(1)));
                }
            }
            if found.len() == 1 || std::time::Instant::now() > deadline {
                assert_eq!(found.len(), 1, "{found:?}");
                return found.remove(0);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    let servers = servers();
    let proxy_for = |server: &TestServer| {
        let proxy = common::proxy::Proxy::start(server.loopback_addr().expect("loopback"));
        proxy.hide_roles();
        proxy
    };
    let (primary, standby) = (proxy_for(&servers.primary), proxy_for(&servers.standby));
    for mode in MODES {
        for (order, (list, ports)) in [
            (
                "primary, standby",
                [primary.addr().port(), standby.addr().port()],
            ),
            (
                "standby, primary",
                [standby.addr().port(), primary.addr().port()],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("unreported_{}_{order}", mode.replace('-', "_"));
            let dsn = format!(
                "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres \
                 target_session_attrs={mode} application_name={name}",
                ports[0], ports[1]
            );
            // psql, told the same things, chooses the same server (`SHOW
            // port` and `inet_server_port()` both name the server's port);
            // under a name of its own, so that its session is not counted.
            let psql = psql_choice(&dsn.replace(&name, &format!("{name}_psql")));
            let manager = ManagedConnection::new(&dsn).expect("settings");
            let guard = manager.lock().expect("a server qualifies");
            // The session ran nothing yet but the question pgtx asked.
            // Sessions pgtx turned down close as it moves on: waited for.
            let (port, asked) = the_one_session(&name);
            assert_eq!(
                psql,
                Some(u16::try_from(port).expect("a port")),
                "{mode} over {list}"
            );
            let expected = match mode {
                "any" => "",
                "read-write" | "read-only" => "SHOW transaction_read_only",
                _ => "SELECT pg_catalog.pg_is_in_recovery()",
            };
            assert_eq!(asked, expected, "{mode} over {list}");
            drop(guard);
        }
    }
}

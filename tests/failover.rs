//! Failover with `target_session_attrs=read-write`: writes find the new
//! primary, and pgtx never keeps writing to a server that refuses writes.
//! Proved from the servers' own view (the rows each one holds, its
//! sessions), with a real streaming standby promoted under load.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::server::TestServer;
use common::write_outcome::{Outcome, Tally, Writers, write};
use pgtx::{ConnectionSource, Error, ManagedConnection, Pool, ReconnectPolicy};

/// A connection string listing `servers` in order, for writes.
fn writers(servers: &[&TestServer], extra: &str) -> String {
    let hosts = vec!["127.0.0.1"; servers.len()].join(",");
    let ports: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
    format!(
        "host={hosts} port={} user=postgres dbname=postgres connect_timeout=5 \
         target_session_attrs=read-write {extra}",
        ports.join(",")
    )
}

fn count_rows(server: &TestServer) -> i64 {
    server
        .admin()
        .query_one("SELECT count(*) FROM writes", &[])
        .expect("count")
        .get(0)
}

/// The sessions named `application_name` on `server`, once they number
/// `expected` (a session that is closing lingers a moment), or after 10 s
/// of waiting for that.
fn sessions_become(server: &TestServer, application_name: &str, expected: i64) -> i64 {
    let mut admin = server.admin();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application_name],
            )
            .expect("sessions")
            .get(0);
        if count == expected || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Turns `server` read-only for every session, as an HA tool fencing an
/// old primary does (`ALTER SYSTEM` + reload), and waits until a new
/// session sees it.
fn fence(server: &TestServer) {
    let mut admin = server.admin();
    admin
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .expect("fence");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on: String = server
            .admin()
            .query_one("SHOW default_transaction_read_only", &[])
            .expect("show")
            .get(0);
        if on == "on" {
            return;
        }
        assert!(Instant::now() < deadline, "the reload never took effect");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn two_writable_servers() -> (TestServer, TestServer) {
    let (a, b) = (TestServer::start_private(), TestServer::start_private());
    for server in [&a, &b] {
        server
            .admin()
            .batch_execute("CREATE TABLE writes (id bigint PRIMARY KEY)")
            .expect("table");
    }
    (a, b)
}

#[test]
fn a_manager_refused_a_write_as_read_only_takes_the_next_one_to_the_writable_server() {
    let (a, b) = two_writable_servers();
    let manager = ManagedConnection::new(&writers(&[&a, &b], "application_name=fenced_manager"))
        .expect("settings");
    write(&manager, 1).expect("first write, on a");
    fence(&a);
    // The session on `a` learns of the fence with its next statement: that
    // write is refused (the transaction is read-only now), and is the last
    // one sent there.
    let refused = write(&manager, 2).expect_err("a refuses writes now");
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );
    for id in 3..=6 {
        write(&manager, id).expect("written on b");
    }
    assert_eq!((count_rows(&a), count_rows(&b)), (1, 4));
    assert_eq!(
        sessions_become(&a, "fenced_manager", 0),
        0,
        "its session on a closed"
    );
    assert_eq!(sessions_become(&b, "fenced_manager", 1), 1);
}

#[test]
fn a_write_refused_by_the_sessions_own_read_only_transaction_replaces_nothing() {
    let (a, b) = two_writable_servers();
    let pool =
        Pool::new(&writers(&[&a, &b], "application_name=own_read_only"), 2).expect("settings");
    let backend = |pool: &Pool| -> (i32, i32) {
        pool.transaction(|mut tx| {
            let row = tx.query_one("SELECT pg_backend_pid(), inet_server_port()", &[])?;
            tx.commit_returning((row.get(0), row.get(1)))
        })
        .expect("a transaction")
    };
    let before = backend(&pool);
    assert_eq!(before.1, i32::from(a.port()));
    for _ in 0..3 {
        let refused = pool
            .transaction_with(pgtx::TxOptions::new().read_only(true), |mut tx| {
                tx.execute("INSERT INTO writes VALUES (1)", &[])?;
                tx.commit()
            })
            .expect_err("a READ ONLY transaction refuses writes");
        assert_eq!(
            refused.code(),
            Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        // The server still takes writes: the same session goes on.
        assert_eq!(backend(&pool), before);
    }
    write(&pool, 2).expect("written on a");
    assert_eq!((count_rows(&a), count_rows(&b)), (1, 0));
}

#[test]
fn a_pool_gives_up_every_connection_on_a_fenced_server_once_one_write_is_refused() {
    let (a, b) = two_writable_servers();
    let pool = Pool::new(&writers(&[&a, &b], "application_name=fenced_pool"), 4).expect("settings");
    // Four threads write at once, each holding its connection until all
    // four have written: one write on each member. The port each wrote on.
    let on_every_member = |first_id: i64| -> Vec<Result<i32, Error>> {
        let barrier = TimedBarrier::new(4);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4_i64)
                .map(|i| {
                    let barrier = &barrier;
                    let pool = &pool;
                    s.spawn(move || {
                        pool.transaction(|mut tx| {
                            let written = tx
                                .execute("INSERT INTO writes VALUES ($1)", &[&(first_id + i)])
                                .and_then(|_| tx.query_one("SELECT inet_server_port()", &[]));
                            // Waited for whatever the write came to.
                            barrier.wait();
                            let port: i32 = written?.get(0);
                            tx.commit_returning(port)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect()
        })
    };
    let ports = |results: Vec<Result<i32, Error>>| -> Vec<i32> {
        results.into_iter().map(|r| r.expect("written")).collect()
    };
    // Four connections open on `a`, each with a row written.
    let ports_before = ports(on_every_member(1));
    assert!(
        ports_before.iter().all(|&p| p == i32::from(a.port())),
        "{ports_before:?}"
    );
    fence(&a);
    // One write is refused; the pool learns from it for all its members.
    let refused = write(&pool, 10).expect_err("a refuses writes now");
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );
    // Every member, the three that never met the refusal included, now
    // writes on `b`: none is refused.
    let ports_after = ports(on_every_member(20));
    assert!(
        ports_after.iter().all(|&p| p == i32::from(b.port())),
        "{ports_after:?}"
    );
    assert_eq!((count_rows(&a), count_rows(&b)), (4, 4));
    assert_eq!(
        sessions_become(&a, "fenced_pool", 0),
        0,
        "no pooled connection stays on the fenced server"
    );
}

/// A barrier that gives up after 30 s: a thread that failed before it
/// reached it (its connection could not be opened) must not leave the
/// others waiting for ever.
struct TimedBarrier {
    arrived: std::sync::atomic::AtomicUsize,
    count: usize,
}

impl TimedBarrier {
    fn new(count: usize) -> TimedBarrier {
        TimedBarrier {
            arrived: std::sync::atomic::AtomicUsize::new(0),
            count,
        }
    }

    fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.arrived.load(Ordering::SeqCst) < self.count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// 16 threads write through `source` to a primary with a synchronous
/// standby; the primary dies (`-m immediate`) and the standby is promoted.
/// Every acknowledged write is on the new primary, no failed one is, and
/// writes resume.
fn writes_survive_a_failover(
    primary: &TestServer,
    standby: &TestServer,
    source: &(impl ConnectionSource + Sync),
) {
    let writers = Writers::new(0);
    let wait_for = |what: &str, done: &dyn Fn(&Writers) -> bool| {
        let (timeout, poll) = (Duration::from_secs(60), Duration::from_millis(5));
        writers.wait_for(what, timeout, poll, done, String::new);
    };
    let (killed_at, promoted_at) = std::thread::scope(|s| {
        let _stop = writers.start(s, source, 16, Duration::from_millis(5));
        wait_for("200 writes before the failover", &|w| w.count(true) >= 200);
        primary.stop_immediate();
        let killed_at = Instant::now();
        let before = writers.count(false);
        wait_for("writes failing while no primary is up", &|w| {
            w.count(false) >= before + 16
        });
        standby.promote();
        let promoted_at = Instant::now();
        let ok_before = writers.count(true);
        wait_for("200 writes after the promotion", &|w| {
            w.count(true) >= ok_before + 200
        });
        (killed_at, promoted_at)
    });
    let Tally {
        outcomes,
        counts,
        lost,
        phantom,
    } = writers.tally(&mut standby.admin());
    let first_ok_after_promote = outcomes
        .iter()
        .filter(|(_, o, at)| *o == Outcome::Ok && *at > promoted_at)
        .map(|(_, _, at)| at.duration_since(promoted_at))
        .min();
    eprintln!(
        "failover: primary down {:?} before the promotion; first write acknowledged \
         {first_ok_after_promote:?} after it; outcomes {counts:?}; lost {lost}, phantom {phantom}",
        promoted_at.duration_since(killed_at)
    );
    assert_eq!(lost, 0, "acknowledged writes missing on the new primary");
    assert_eq!(
        phantom, 0,
        "writes reported failed found on the new primary"
    );
}

/// A primary whose commits wait for its standby, the standby, and the table.
fn replicated_pair() -> (TestServer, TestServer) {
    let primary = TestServer::start_private_with(&[
        ("synchronous_standby_names", "*"),
        ("synchronous_commit", "on"),
    ]);
    let standby = primary.start_replica();
    primary
        .admin()
        .batch_execute("CREATE TABLE writes (id bigint PRIMARY KEY)")
        .expect("table");
    primary.wait_for_replay(&standby);
    (primary, standby)
}

#[test]
fn sixteen_threads_on_one_manager_write_through_a_failover_losing_nothing() {
    let (primary, standby) = replicated_pair();
    let manager = ManagedConnection::new(&writers(&[&primary, &standby], "")).expect("settings");
    writes_survive_a_failover(&primary, &standby, &manager);
}

#[test]
fn sixteen_threads_on_a_pool_write_through_a_failover_losing_nothing() {
    let (primary, standby) = replicated_pair();
    let pool = Pool::new(&writers(&[&primary, &standby], ""), 8).expect("settings");
    writes_survive_a_failover(&primary, &standby, &pool);
}

#[test]
fn a_manager_reconnecting_in_the_background_finds_the_promoted_standby() {
    let (primary, standby) = replicated_pair();
    let manager = ManagedConnection::builder(&writers(&[&primary, &standby], ""))
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(50)),
        )
        .build()
        .expect("settings");
    writes_survive_a_failover(&primary, &standby, &manager);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_pool_gives_up_every_connection_on_a_fenced_server_once_one_write_is_refused() {
    use common::aio::outside;
    let (a, b) = outside(two_writable_servers);
    let pool = pgtx::aio::Pool::new(&writers(&[&a, &b], ""), 3).expect("settings");
    let port_of_each = async |first_id: i64| -> Vec<i32> {
        // All three connections held at once, each writing a row.
        let mut guards = Vec::new();
        for _ in 0..3 {
            guards.push(pool.lock().await.expect("a connection"));
        }
        let mut ports = Vec::new();
        for (i, guard) in (0..).zip(guards.iter_mut()) {
            guard
                .execute("INSERT INTO writes VALUES ($1)", &[&(first_id + i)])
                .await
                .expect("written");
            let port: i32 = guard
                .query_one("SELECT inet_server_port()", &[])
                .await
                .expect("port")
                .get(0);
            ports.push(port);
        }
        ports
    };
    assert_eq!(port_of_each(1).await, vec![i32::from(a.port()); 3]);
    outside(|| fence(&a));
    let refused = pool
        .lock()
        .await
        .expect("a connection")
        .execute("INSERT INTO writes VALUES (10)", &[])
        .await
        .expect_err("a refuses writes now");
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );
    assert_eq!(port_of_each(20).await, vec![i32::from(b.port()); 3]);
    assert_eq!(outside(|| (count_rows(&a), count_rows(&b))), (3, 3));
}

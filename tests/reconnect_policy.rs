//! `Builder::reconnect`: only a dead connection starts a reconnection, one
//! per outage however many threads see it; calls fail at once with
//! `ConnectionDead` while the server is down; recovery handlers run once
//! per recovery, a broken one logged; a round of attempts that runs out
//! reports its first and last failure.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use common::proxy::Proxy;
use common::server::TestServer;
use pgtx::{Error, ManagedConnection, ReconnectPolicy};

/// A quick schedule for tests: first attempt at once, then every 50 ms.
fn quick() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .factor(1.0)
        .max_delay(Duration::from_millis(50))
}

fn one(manager: &ManagedConnection) -> pgtx::Result<i32> {
    let mut guard = manager.lock()?;
    Ok(guard.query_one("SELECT 1", &[])?.get(0))
}

/// A private server (the test stops it), and a counter of the sessions
/// pgtx opened on it: the `on_connect` hook counts them. (A proxy would
/// also count the attempts the server refused while starting up.)
fn private_counted() -> (TestServer, Arc<AtomicUsize>, pgtx::Builder) {
    let server = TestServer::start_private();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    let builder = ManagedConnection::builder(&(server.dsn() + " connect_timeout=2")).on_connect(
        move |_conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    );
    (server, sessions, builder)
}

#[test]
fn only_errors_that_mean_the_connection_is_dead_reconnect() {
    let db = Db::new("policy_matching");
    let server = TestServer::shared();
    let proxy = Proxy::start(server.loopback_addr().expect("loopback"));
    let dsn = server.dsn_via(proxy.addr()).replace(
        &format!("dbname={}", server.dbname()),
        &format!("dbname={}", db.name),
    );
    let manager = ManagedConnection::builder(&dsn)
        .reconnect(quick())
        .build()
        .expect("builder");
    assert_eq!(one(&manager).expect("connect"), 1);

    // Statement errors of every other kind leave the connection alone.
    let mut guard = manager.lock().expect("lock");
    guard.execute("SELEC 1", &[]).expect_err("syntax error");
    guard
        .execute("INSERT INTO items VALUES (1, 'a')", &[])
        .expect("insert");
    guard
        .execute("INSERT INTO items VALUES (1, 'a')", &[])
        .expect_err("unique violation");
    guard
        .execute("SELECT 1 / 0", &[])
        .expect_err("division by zero");
    drop(guard);
    let err = manager
        .transaction(|mut tx| {
            tx.execute("SELECT pg_terminate_backend(0)", &[])?;
            tx.execute("SELECT * FROM no_such_table", &[])?;
            tx.commit()
        })
        .expect_err("undefined table");
    assert_eq!(err.code(), Some(&pgtx::SqlState::UNDEFINED_TABLE));
    assert_eq!(one(&manager).expect("same connection"), 1);
    assert_eq!(
        proxy.total_connections(),
        1,
        "no reconnect for statement errors"
    );

    // 57P01 (terminated by an administrator) is a dead connection.
    assert_eq!(server.terminate_backends(&db.name), 1);
    assert_eq!(one(&manager).expect("reconnected at once"), 1);
    assert_eq!(proxy.total_connections(), 2);
}

#[test]
fn while_the_server_is_down_calls_fail_fast_and_one_reconnect_ends_the_outage() {
    let (server, sessions, builder) = private_counted();
    let recoveries = Arc::new(AtomicUsize::new(0));
    let counted = recoveries.clone();
    let manager = builder
        .reconnect(quick())
        .on_reconnect(|_conn| Err("the first handler is broken".into()))
        .on_reconnect(move |conn| {
            conn.query_one("SELECT 1", &[])?;
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .build()
        .expect("builder");
    let log = common::logger::capture();
    assert_eq!(one(&manager).expect("connect"), 1);
    assert_eq!(
        recoveries.load(Ordering::SeqCst),
        0,
        "not on the first connection"
    );

    server.stop();
    // The call that finds the connection dead makes the first attempt: refused.
    let first = one(&manager).expect_err("the server is down");
    assert!(
        matches!(first, Error::Connect(_) | Error::ConnectionLost(_)),
        "{first:?}"
    );
    // Then every call, from every thread, fails at once without connecting.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    let started = Instant::now();
                    let err = one(&manager).expect_err("still down");
                    let took = started.elapsed();
                    assert!(matches!(err, Error::ConnectionDead { .. }), "{err:?}");
                    assert!(err.is_transient());
                    assert!(took < Duration::from_millis(10), "{took:?}");
                }
            });
        }
    });
    let err = manager.transaction(|tx| tx.commit()).expect_err("down");
    match &err {
        Error::ConnectionDead {
            attempts,
            last_failure,
            ..
        } => {
            assert!(*attempts >= 1, "{err}");
            assert!(!last_failure.is_empty(), "{err}");
        }
        other => panic!("expected ConnectionDead: {other:?}"),
    }

    server.start();
    assert!(
        eventually(Duration::from_secs(30), || one(&manager).is_ok()),
        "the connection came back"
    );
    // Many callers saw the outage; one connection ended it, the handlers ran once.
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
    assert_eq!(recoveries.load(Ordering::SeqCst), 1);
    assert!(
        !log.lines_containing("recovery handler #0 failed: the first handler is broken")
            .is_empty(),
        "the broken handler is logged"
    );
    assert_eq!(one(&manager).expect("stays up"), 1);
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
}

#[test]
fn a_round_that_runs_out_reports_its_first_and_last_failure_then_the_next_call_tries_again() {
    let (server, sessions, builder) = private_counted();
    let manager = builder
        .reconnect(quick().max_attempts(Some(3)))
        .build()
        .expect("builder");
    assert_eq!(one(&manager).expect("connect"), 1);
    server.stop();
    one(&manager).expect_err("first attempt, made by the call");
    let mut gave_up = None;
    assert!(eventually(Duration::from_secs(10), || {
        match one(&manager) {
            Err(Error::ConnectionDead { .. }) => false,
            Err(e) => {
                gave_up = Some(e);
                true
            }
            Ok(_) => panic!("the server is down"),
        }
    }));
    match gave_up.expect("an error") {
        Error::ReconnectFailed {
            attempts,
            first,
            last,
        } => {
            assert_eq!(attempts, 3);
            let first = first.expect("more than one attempt");
            assert!(matches!(*first, Error::Connect(_)), "{first:?}");
            assert!(matches!(*last, Error::Connect(_)), "{last:?}");
        }
        other => panic!("expected ReconnectFailed: {other:?}"),
    }
    // The next call makes its own attempt again (a new round).
    let again = one(&manager).expect_err("still down");
    assert!(matches!(again, Error::Connect(_)), "{again:?}");
    server.start();
    assert!(eventually(Duration::from_secs(30), || one(&manager).is_ok()));
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
}

#[test]
fn without_a_policy_every_call_tries_to_connect_itself() {
    let (server, sessions, builder) = private_counted();
    let manager = builder.build().expect("settings");
    assert_eq!(one(&manager).expect("connect"), 1);
    server.stop();
    for _ in 0..3 {
        let err = one(&manager).expect_err("down");
        assert!(
            matches!(err, Error::Connect(_) | Error::ConnectionLost(_)),
            "{err:?}"
        );
    }
    server.start();
    assert_eq!(one(&manager).expect("the next call connects"), 1);
    assert_eq!(sessions.load(Ordering::SeqCst), 2);
}

#[test]
fn dropping_the_manager_during_an_outage_stops_the_reconnection() {
    let (server, sessions, builder) = private_counted();
    let manager = builder.reconnect(quick()).build().expect("builder");
    assert_eq!(one(&manager).expect("connect"), 1);
    server.stop();
    one(&manager).expect_err("down");
    assert!(matches!(one(&manager), Err(Error::ConnectionDead { .. })));
    drop(manager);
    server.start();
    // Nothing reconnects for a manager that is gone: give a thread that
    // was not stopped many of its 50 ms periods to show itself.
    let connected = eventually(Duration::from_millis(500), || {
        sessions.load(Ordering::SeqCst) > 1
    });
    assert!(!connected, "a reconnection thread outlived its manager");
}

#[test]
fn an_on_connect_hook_that_panics_while_reconnecting_in_the_background_is_a_failed_attempt() {
    let server = TestServer::start_private();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let manager = ManagedConnection::builder(&(server.dsn() + " connect_timeout=2"))
        .on_connect(move |_conn| {
            // The second connection is the background thread's first.
            if counted.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("hook bug on the second connection");
            }
            Ok(())
        })
        .reconnect(quick())
        .build()
        .expect("builder");
    let log = common::logger::capture();
    assert_eq!(one(&manager).expect("connect"), 1);
    server.stop();
    one(&manager).expect_err("first attempt, made by the call");
    assert!(matches!(one(&manager), Err(Error::ConnectionDead { .. })));
    server.start();
    // The thread survived its hook's panic and tried again.
    assert!(
        eventually(Duration::from_secs(30), || one(&manager).is_ok()),
        "the manager recovered"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        !log.lines_containing(
            "the on_connect hook panicked while reconnecting in the background: \
             hook bug on the second connection"
        )
        .is_empty(),
        "the panic is logged"
    );
}

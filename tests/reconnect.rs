//! Real faults: a backend killed with `pg_terminate_backend`, a server
//! restarted with `pg_ctl restart -m immediate` or stopped, and a TCP proxy
//! that cuts or stalls the connection. The connection is reopened by the
//! next holder; nothing in flight is reported as saved unless it was.

mod common;

use std::thread;
use std::time::Duration;

use common::eventually;
use common::fixtures::Db;
use common::server::TestServer;
use pgtx::{Error, ManagedConnection, TransactionStatus};

fn backend_pid(manager: &ManagedConnection) -> i32 {
    let mut guard = manager.lock().expect("lock");
    guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

#[test]
fn an_idle_connection_killed_by_the_server_is_reopened_before_anyone_uses_it() {
    let db = Db::new("terminated_idle");
    let manager = db.manager();
    let first = backend_pid(&manager);
    assert_eq!(TestServer::shared().terminate_backends(&db.name), 1);

    // The very first statement of the next holder succeeds: the dead
    // connection was noticed (without a round trip) and replaced.
    let mut guard = manager.lock().expect("reopened");
    guard
        .execute("INSERT INTO items VALUES (1, 'after kill')", &[])
        .expect("autocommit on the new connection");
    let second: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    drop(guard);
    assert_ne!(first, second);
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn a_backend_killed_mid_transaction_loses_the_transaction_truthfully() {
    let db = Db::new("terminated_mid_tx");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'lost')", &[])
        .expect("insert");
    TestServer::shared().terminate_backends(&db.name);

    let err = tx
        .execute("INSERT INTO items VALUES (2, 'lost too')", &[])
        .expect_err("the session is gone");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(tx.status(), TransactionStatus::Unknown);
    let err = tx.commit().expect_err("nothing can be committed");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(db.item_ids().is_empty());

    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (3, 'next holder')", &[])?;
            tx.commit()
        })
        .expect("the next holder reconnects");
    assert_eq!(db.item_ids(), [3]);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn after_an_immediate_server_restart_the_next_holder_reconnects() {
    let server = TestServer::start_private();
    let manager = ManagedConnection::new(&server.dsn()).expect("settings");
    let first = backend_pid(&manager);
    server.restart_immediate();
    assert_ne!(backend_pid(&manager), first);
    let n: i32 = manager
        .transaction(|mut tx| {
            let n = tx.query_one("SELECT 41 + 1", &[])?.get(0);
            Ok::<_, Error>(tx.commit()?.returning(n))
        })
        .expect("works after the restart");
    assert_eq!(n, 42);
}

#[test]
fn a_stopped_server_is_a_connect_error_and_the_manager_recovers_when_it_returns() {
    let server = TestServer::start_private();
    let manager = ManagedConnection::new(&server.dsn()).expect("settings");
    backend_pid(&manager);
    server.stop();
    let err = manager.lock().expect_err("no server");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(manager.status(), TransactionStatus::Closed);
    // The failed attempt released the connection: another thread can try.
    thread::scope(|s| {
        s.spawn(|| assert!(matches!(manager.try_lock(), Err(Error::Connect(_)))));
    });
    server.start();
    backend_pid(&manager);
    assert_eq!(manager.status(), TransactionStatus::Idle);
}

#[test]
fn a_connection_cut_while_commit_is_in_flight_is_commit_outcome_unknown() {
    let db = Db::new("cut_during_commit");
    let (proxy, manager) = db.manager_via_proxy();
    // The first COMMIT on a connection is prepared first (a round trip of
    // its own, which a cut would turn into a plain ConnectionLost: COMMIT
    // not sent). Commit once, so that below COMMIT itself is in flight.
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (0, 'warm-up')", &[])?;
            tx.commit()
        })
        .expect("a first transaction, which prepares COMMIT");
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'in doubt')", &[])
        .expect("insert");

    // COMMIT goes into a stalled link, which is then cut.
    proxy.stall();
    let err = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(200));
            proxy.cut();
        });
        tx.commit().expect_err("the link broke during COMMIT")
    });
    assert!(matches!(err, Error::CommitOutcomeUnknown(_)), "{err:?}");
    assert!(!err.is_transient(), "retrying blindly could commit twice");
    proxy.resume();
    // Here the COMMIT never reached the server, so the server rolled back
    // when the session ended; the client could not have known.
    assert!(
        eventually(Duration::from_secs(5), || db.open_transactions() == 0),
        "the server rolled back when the session ended"
    );
    assert_eq!(db.item_ids(), [0], "only the warm-up committed");
    // The next holder gets a fresh connection through the proxy.
    backend_pid(&manager);
    assert_eq!(proxy.total_connections(), 2);
}

#[test]
fn a_connection_cut_before_commit_is_sent_is_connection_lost() {
    // COMMIT goes as one simple query: once written, a cut leaves its
    // outcome unknown (the next test). A cut that reached the client
    // before COMMIT was written leaves no doubt (COMMIT never left), so it
    // is a plain, retryable ConnectionLost, and the server rolls back.
    let db = Db::new("cut_before_commit");
    let (proxy, manager) = db.manager_via_proxy();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'never committed')", &[])
        .expect("insert");
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(5), || db.open_transactions() == 0),
        "the server rolled back when the session ended"
    );
    let err = tx
        .commit()
        .expect_err("the link broke before COMMIT went out");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(
        eventually(Duration::from_secs(5), || db.open_transactions() == 0),
        "the server rolled back when the session ended"
    );
    assert!(db.item_ids().is_empty());
    assert_eq!(manager.status(), TransactionStatus::Closed);
    backend_pid(&manager);
    assert_eq!(proxy.total_connections(), 2, "the next holder reconnects");
}

#[test]
fn a_connection_cut_between_transactions_is_replaced_transparently() {
    let db = Db::new("cut_idle");
    let (proxy, manager) = db.manager_via_proxy();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'before')", &[])?;
            tx.commit()
        })
        .expect("first");
    proxy.cut();
    thread::sleep(Duration::from_millis(50));
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'after')", &[])?;
            tx.commit()
        })
        .expect("reconnected through the proxy");
    assert_eq!(db.item_ids(), [1, 2]);
    assert_eq!(proxy.total_connections(), 2);
}

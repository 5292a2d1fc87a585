//! The `testing` feature as a user's test suite uses it: a throwaway
//! server of its own (stopped and removed on drop) and a transaction that
//! always rolls back.

use pgtx::testing::{TestServer, rolled_back};
use pgtx::{Error, GenericClient, ManagedConnection};

fn add_item(db: &mut impl GenericClient, id: i32) -> pgtx::Result<u64> {
    db.execute("INSERT INTO items VALUES ($1, 'test')", &[&id])
}

fn count(manager: &ManagedConnection) -> i64 {
    manager
        .lock()
        .expect("lock")
        .query_one("SELECT count(*) FROM items", &[])
        .expect("count")
        .get(0)
}

#[test]
fn a_private_server_serves_fresh_databases_and_is_gone_once_dropped() {
    let server = TestServer::start().expect("a private cluster");
    assert!(server.is_private());
    let dsn = server
        .fresh_database("testing Feature!")
        .expect("a database");
    assert!(dsn.contains("dbname=testing_feature__"), "{dsn}");
    let manager = ManagedConnection::new(&dsn).expect("settings");
    let name: String = manager
        .lock()
        .expect("connect")
        .query_one("SELECT current_database()", &[])
        .expect("ask")
        .get(0);
    assert!(dsn.ends_with(&name), "{dsn} / {name}");
    let dir = server.dir().expect("a directory").to_owned();
    let addr = server.loopback_addr().expect("on loopback");
    drop(manager);
    drop(server);
    assert!(!dir.exists(), "{} removed", dir.display());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens on {addr} any more"
    );
}

#[test]
fn work_in_rolled_back_is_seen_inside_and_gone_after_whatever_it_returns() {
    let server = TestServer::shared().expect("the shared server");
    let manager = ManagedConnection::new(&server.fresh_database("rolled_back").expect("db"))
        .expect("settings");
    manager
        .lock()
        .expect("lock")
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .expect("create");

    let seen: i64 = rolled_back(&manager, |tx| {
        add_item(tx, 1)?;
        let mut sp = tx.savepoint()?;
        add_item(&mut sp, 2)?;
        sp.release()?;
        tx.query_one("SELECT count(*) FROM items", &[])
            .map(|row| row.get(0))
    })
    .expect("ok");
    assert_eq!(seen, 2, "the work is visible inside");
    assert_eq!(count(&manager), 0, "and gone after");

    let failed: Result<(), Error> = rolled_back(&manager, |tx| {
        add_item(tx, 1)?;
        add_item(tx, 1)?; // a duplicate key
        Ok(())
    });
    assert_eq!(
        failed.expect_err("the duplicate").code(),
        Some(&pgtx::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(count(&manager), 0);

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _: Result<(), Error> = rolled_back(&manager, |tx| {
            add_item(tx, 3)?;
            panic!("the test failed");
        });
    }));
    assert!(panicked.is_err());
    assert_eq!(count(&manager), 0, "rolled back on the way out of a panic");
}

#[test]
fn a_private_server_stops_starts_again_and_restarts() {
    let server = TestServer::start().expect("a private cluster");
    server.stop().expect("stop");
    assert!(server.postmaster_pid().is_none(), "stopped");
    server.start_again().expect("start again");
    let mut admin = server.admin().expect("reachable again");
    let one: i32 = admin.query_one("SELECT 1", &[]).expect("answers").get(0);
    assert_eq!(one, 1);
    server.restart_immediate().expect("restart");
    assert!(
        admin.query_one("SELECT 1", &[]).is_err(),
        "the restart killed it"
    );
    assert!(server.admin().is_ok(), "and new connections work");
}

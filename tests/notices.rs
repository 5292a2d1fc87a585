//! `Builder::on_notice`: every notice the server sends on a manager's
//! connections reaches the handler, on a guard, in a transaction and in
//! the `on_connect` hook; a handler that panics changes nothing for the
//! statement that drew the notice.

mod common;

use std::sync::{Arc, Mutex};

use common::fixtures::Db;
use pgtx::ManagedConnection;

/// A manager on `db` whose notices are collected as "severity: message".
fn collecting(db: &Db) -> (ManagedConnection, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(|conn| {
            conn.batch_execute("DO $$ BEGIN RAISE NOTICE 'from the hook'; END $$")?;
            Ok(())
        })
        .on_notice(move |notice| {
            sink.lock().expect("not poisoned").push(format!(
                "{}: {}",
                notice.severity(),
                notice.message()
            ));
        })
        .build()
        .expect("settings");
    (manager, seen)
}

#[test]
fn notices_reach_the_handler_from_the_hook_a_guard_and_a_transaction() {
    let db = Db::new("notices_seen");
    let (manager, seen) = collecting(&db);
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'on a guard %', 1; END $$")
        .expect("notice");
    let mut tx = guard.begin().expect("begin");
    tx.execute("DO $$ BEGIN RAISE WARNING 'in a transaction'; END $$", &[])
        .expect("warning");
    tx.commit().expect("commit");
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        [
            "NOTICE: from the hook",
            "NOTICE: on a guard 1",
            "WARNING: in a transaction"
        ]
    );
}

#[test]
fn a_handler_that_panics_leaves_the_statement_and_the_connection_as_they_were() {
    let db = Db::new("notices_panic");
    let manager = ManagedConnection::builder(&db.dsn)
        .on_notice(|_| panic!("handler bug"))
        .build()
        .expect("settings");
    let log = common::logger::capture();
    manager
        .transaction(|mut tx| {
            tx.execute(
                "DO $$ BEGIN RAISE NOTICE 'boom'; INSERT INTO items VALUES (1, 'kept'); END $$",
                &[],
            )?;
            tx.commit()
        })
        .expect("the statement and the commit went through");
    assert_eq!(db.item_ids(), [1]);
    assert!(
        !log.lines_containing("the on_notice handler panicked: handler bug")
            .is_empty(),
        "the panic is logged"
    );
    assert_eq!(db.open_transactions(), 0);
}

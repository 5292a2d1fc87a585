//! `COPY … FROM STDIN` and `COPY … TO STDOUT` sent through the statement
//! methods, which carry rows and row counts, not copy data: a clear error,
//! nothing copied, and a connection that is ready for the next statement
//! (never one left waiting for copy data that will not come).

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::fixtures::Db;
use pgtx::{Error, ManagedConnection, TransactionStatus};

/// Runs `call` on another thread and waits for it at most a minute, so
/// that a hang fails the test instead of hanging it.
fn within_a_minute<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the call returned (a COPY left the connection waiting for data)")
}

fn assert_copy_refused(e: &Error, stdin: bool, statement: &str) {
    match e {
        Error::CopyRefused {
            statement: named,
            from_stdin,
        } => {
            assert_eq!(*from_stdin, stdin, "{e}");
            assert_eq!(named, statement, "{e}");
        }
        other => panic!("expected CopyRefused, got {other:?}"),
    }
    assert!(e.to_string().contains(statement), "{e}");
}

fn shared_manager(db: &Db) -> &'static ManagedConnection {
    Box::leak(Box::new(db.manager()))
}

#[test]
fn copy_from_stdin_through_execute_fails_at_once_and_the_connection_is_idle() {
    let db = Db::new("copy_in_execute");
    let manager = shared_manager(&db);
    let err = within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        guard.execute("COPY items FROM STDIN", &[]).map(drop)
    })
    .expect_err("COPY FROM STDIN is refused");
    assert_copy_refused(&err, true, "COPY items FROM STDIN");

    // The next holder gets a connection that answers, idle.
    let mut guard = manager.try_lock().expect("the lock was released");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let one: i32 = guard.query_one("SELECT 1", &[]).expect("usable").get(0);
    assert_eq!(one, 1);
    drop(guard);
    assert_eq!(db.open_transactions(), 0);
    assert!(db.item_ids().is_empty(), "nothing was copied");
}

#[test]
fn copy_from_stdin_through_batch_execute_fails_at_once_and_skips_the_rest() {
    let db = Db::new("copy_in_batch");
    let manager = shared_manager(&db);
    let err = within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        guard.batch_execute("COPY items FROM STDIN; INSERT INTO items VALUES (2, 'after')")
    })
    .expect_err("COPY FROM STDIN is refused");
    assert_copy_refused(
        &err,
        true,
        "COPY items FROM STDIN; INSERT INTO items VALUES (2, 'after')",
    );
    let mut guard = manager.try_lock().expect("the lock was released");
    guard
        .execute("INSERT INTO items VALUES (1, 'next')", &[])
        .expect("the connection goes on");
    drop(guard);
    assert_eq!(
        db.item_ids(),
        [1],
        "the statement after the COPY did not run"
    );
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn copy_from_stdin_in_a_transaction_aborts_it_and_nothing_is_committed() {
    let db = Db::new("copy_in_tx");
    let manager = shared_manager(&db);
    let (copy, commit) = within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
            .expect("insert");
        let copy = tx.execute("COPY items FROM STDIN", &[]).map(drop);
        (copy, tx.commit().map(drop))
    });
    assert_copy_refused(&copy.expect_err("refused"), true, "COPY items FROM STDIN");
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(
        db.item_ids().is_empty(),
        "nothing of the transaction committed"
    );
    assert_eq!(db.open_transactions(), 0);
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'next')", &[])?;
            tx.commit()
        })
        .expect("the next transaction works");
    assert_eq!(db.item_ids(), [2]);
}

#[test]
fn copy_to_stdout_is_refused_and_the_transaction_goes_on() {
    let db = Db::new("copy_out_tx");
    let manager = shared_manager(&db);
    let copy = within_a_minute(move || {
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])?;
            let copy = tx.query("COPY (SELECT generate_series(1, 50000)) TO STDOUT", &[]);
            // Its data was read and dropped: the next statement gets its own rows.
            let n: i64 = tx.query_one("SELECT count(*) FROM items", &[])?.get(0);
            assert_eq!(n, 1);
            tx.commit_returning(copy.map(drop))
        })
    })
    .expect("the transaction commits");
    assert_copy_refused(
        &copy.expect_err("refused"),
        false,
        "COPY (SELECT generate_series(1, 50000)) TO STDOUT",
    );
    assert_eq!(db.item_ids(), [1]);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_long_copy_statement_is_named_by_its_beginning() {
    let db = Db::new("copy_long_name");
    let manager = shared_manager(&db);
    let padding = "x".repeat(300);
    let sql = format!("COPY items FROM STDIN /* {padding} */");
    let err = within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        guard.execute(sql.as_str(), &[]).map(drop)
    })
    .expect_err("refused");
    let Error::CopyRefused { statement, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        statement.chars().count(),
        101,
        "100 characters and an ellipsis"
    );
    assert!(statement.starts_with("COPY items FROM STDIN /* xxx"));
}

#[test]
fn a_copy_in_an_on_connect_hook_is_its_own_error_not_the_next_statements() {
    let db = Db::new("copy_in_hook");
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(|conn| {
            let copy = conn.batch_execute("COPY (SELECT 1) TO STDOUT");
            assert!(
                matches!(
                    copy,
                    Err(Error::CopyRefused {
                        from_stdin: false,
                        ..
                    })
                ),
                "{copy:?}"
            );
            Ok(())
        })
        .build()
        .expect("settings");
    let mut guard = manager.lock().expect("the hook went on");
    let one: i32 = guard
        .query_one("SELECT 1", &[])
        .expect("the first statement is not reported as a COPY")
        .get(0);
    assert_eq!(one, 1);
}

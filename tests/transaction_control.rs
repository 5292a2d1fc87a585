//! Transaction control in user SQL: a plain `BEGIN` through a guard is
//! never inherited by the next holder, `COMMIT` and friends never get into
//! a `Tx`, savepoint SQL keeps working, and the status is the server's own
//! word. Every outcome is checked against the server from a second
//! connection (`pg_stat_activity`, committed rows).

mod common;

use std::thread;

use common::fixtures::Db;
use common::logger;
use pgtx::{Error, TransactionStatus, UNFINISHED_TRANSACTION};

/// Lines the fallback logged for this test's database.
fn reports(db: &Db) -> Vec<String> {
    logger::capture()
        .lines_containing(&db.name)
        .into_iter()
        .filter(|l| l.contains(UNFINISHED_TRANSACTION))
        .collect()
}

/// The server's view of one backend: `pg_stat_activity.state`.
fn backend_state(db: &Db, pid: i32) -> String {
    db.admin()
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .expect("read pg_stat_activity")
        .get(0)
}

#[test]
fn a_begin_through_a_guard_is_rolled_back_and_reported_and_the_next_thread_starts_idle() {
    logger::capture();
    let db = Db::new("guard_user_begin");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard.batch_execute("BEGIN").expect("begin");
    guard
        .execute("INSERT INTO items VALUES (1, 'abandoned')", &[])
        .expect("insert");
    assert_eq!(guard.status(), TransactionStatus::InTransaction);
    assert_eq!(manager.status(), TransactionStatus::InTransaction);
    assert_eq!(db.open_transactions(), 1, "the server has the block open");
    drop(guard);

    assert_eq!(db.open_transactions(), 0, "rolled back on release");
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(manager.unfinished_transactions(), 1);
    let lines = reports(&db);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ERROR"), "{lines:?}");

    // Another thread: its autocommit insert commits on its own, and its
    // transaction commits only its own row.
    thread::scope(|s| {
        s.spawn(|| {
            let mut guard = manager.lock().expect("lock");
            assert_eq!(guard.status(), TransactionStatus::Idle);
            guard
                .execute("INSERT INTO items VALUES (2, 'autocommit')", &[])
                .expect("insert");
            assert_eq!(db.item_ids(), vec![2], "committed at once, on its own");
            let mut tx = guard.begin().expect("begin");
            tx.execute("INSERT INTO items VALUES (3, 'own tx')", &[])
                .expect("insert");
            tx.commit().expect("commit");
        });
    });
    assert_eq!(
        db.item_ids(),
        vec![2, 3],
        "the abandoned row never committed"
    );
    assert_eq!(manager.unfinished_transactions(), 1);
}

#[test]
fn a_guard_that_ends_its_own_block_is_not_reported() {
    logger::capture();
    let db = Db::new("guard_user_commit");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'kept')")
        .expect("begin and insert");
    guard.execute("COMMIT", &[]).expect("commit");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    drop(guard);
    assert_eq!(db.item_ids(), vec![1]);
    assert_eq!(manager.unfinished_transactions(), 0);
    assert!(reports(&db).is_empty());
}

#[test]
fn begin_on_a_guard_with_a_user_block_open_rolls_the_block_back_first() {
    logger::capture();
    let db = Db::new("guard_block_then_begin");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'user block')")
        .expect("user block");
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (2, 'pgtx tx')", &[])
        .expect("insert");
    tx.commit().expect("commit");
    assert_eq!(
        db.item_ids(),
        vec![2],
        "the user's block was not committed with it"
    );
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(reports(&db).len(), 1);
}

#[test]
fn a_forgotten_guard_with_a_user_block_is_rolled_back_by_the_next_acquirer() {
    logger::capture();
    let db = Db::new("guard_block_forgotten");
    let manager = pgtx::ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(std::time::Duration::from_millis(100)))
        .build()
        .expect("settings");
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'forgotten')")
        .expect("user block");
    std::mem::forget(guard);
    let mut guard = common::take_over(|| manager.lock());
    assert_eq!(guard.status(), TransactionStatus::Idle);
    guard
        .execute("INSERT INTO items VALUES (2, 'next')", &[])
        .expect("insert");
    drop(guard);
    assert_eq!(db.item_ids(), vec![2]);
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(manager.unfinished_transactions(), 1);
}

/// Every spelling of transaction control, alone or hidden in a batch.
const CONTROL: &[(&str, &str)] = &[
    ("COMMIT", "COMMIT"),
    ("  commit ; ", "COMMIT"),
    ("/* done */ END", "END"),
    ("end transaction", "END"),
    ("ROLLBACK", "ROLLBACK"),
    ("Rollback Work", "ROLLBACK"),
    ("abort", "ABORT"),
    ("BEGIN", "BEGIN"),
    (
        "start transaction isolation level serializable",
        "START TRANSACTION",
    ),
    ("PREPARE TRANSACTION 'pgtx_test'", "PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'pgtx_test'", "COMMIT PREPARED"),
    ("ROLLBACK /* x */ PREPARED 'pgtx_test'", "ROLLBACK PREPARED"),
    ("COMMIT AND CHAIN", "COMMIT AND CHAIN"),
    ("-- first\nCOMMIT -- bye", "COMMIT"),
    (
        "INSERT INTO items VALUES (100, 'a'); COMMIT; INSERT INTO items VALUES (101, 'b')",
        "COMMIT",
    ),
    (
        "DO $$ BEGIN PERFORM 1; END $$; rollback; INSERT INTO items VALUES (102, 'c')",
        "ROLLBACK",
    ),
];

#[test]
fn transaction_control_in_a_tx_is_refused_and_nothing_runs_outside_it() {
    let db = Db::new("tx_control_refused");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'inside')", &[])
        .expect("insert");
    let pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    for (i, (sql, command)) in CONTROL.iter().enumerate() {
        let attempts: [(&str, Result<(), Error>); 4] = [
            ("execute", tx.execute(*sql, &[]).map(drop)),
            ("query", tx.query(*sql, &[]).map(drop)),
            ("batch_execute", tx.batch_execute(sql)),
            ("prepare", tx.prepare(sql).map(drop)),
        ];
        for (method, result) in attempts {
            match result {
                Err(e @ Error::TransactionControl(_)) => assert!(
                    e.to_string().contains(command),
                    "{method}({sql:?}): the error names {command}: {e}"
                ),
                other => panic!("{method}({sql:?}) must be refused: {other:?}"),
            }
        }
        assert_eq!(tx.status(), TransactionStatus::InTransaction, "{sql:?}");
        assert_eq!(backend_state(&db, pid), "idle in transaction", "{sql:?}");
        let id = 10 + i32::try_from(i).expect("few cases");
        tx.execute("INSERT INTO items VALUES ($1, 'still inside')", &[&id])
            .expect("the transaction goes on");
    }
    assert!(
        db.item_ids().is_empty(),
        "nothing committed outside the transaction"
    );
    tx.rollback().expect("rollback");
    assert!(db.item_ids().is_empty(), "everything was inside it");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_statement_prepared_on_a_guard_cannot_be_transaction_control() {
    let db = Db::new("guard_prepare_control");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    for sql in ["COMMIT", "ROLLBACK", "BEGIN", "END"] {
        assert!(
            matches!(guard.prepare(sql), Err(Error::TransactionControl(_))),
            "{sql}"
        );
    }
    // Ordinary statements prepare, and run in a later transaction.
    let insert = guard
        .prepare("INSERT INTO items VALUES ($1, 'prepared')")
        .expect("prepare");
    let mut tx = guard.begin().expect("begin");
    tx.execute(&insert, &[&1_i32]).expect("insert");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1]);
}

#[test]
fn savepoint_sql_works_and_rollback_to_lets_the_transaction_commit() {
    let db = Db::new("savepoint_sql");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .expect("insert");
    tx.batch_execute("SAVEPOINT before_dup").expect("savepoint");
    let dup = tx.execute("INSERT INTO items VALUES (1, 'duplicate')", &[]);
    assert!(dup.is_err(), "duplicate key");
    assert_eq!(tx.status(), TransactionStatus::InError);
    tx.execute("ROLLBACK TO SAVEPOINT before_dup", &[])
        .expect("rollback to");
    assert_eq!(tx.status(), TransactionStatus::InTransaction);
    tx.execute("INSERT INTO items VALUES (2, 'after')", &[])
        .expect("insert");
    tx.batch_execute("RELEASE before_dup").expect("release");
    tx.commit().expect("the recovered transaction commits");
    assert_eq!(db.item_ids(), vec![1, 2]);
}

#[test]
fn the_status_is_the_servers_own_word() {
    let db = Db::new("status_is_server");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    let pid: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    assert_eq!(guard.status(), TransactionStatus::Idle);
    assert_eq!(backend_state(&db, pid), "idle");

    guard.batch_execute("BEGIN").expect("begin");
    assert_eq!(guard.status(), TransactionStatus::InTransaction);
    assert_eq!(backend_state(&db, pid), "idle in transaction");

    assert!(guard.execute("SELECT 1/0", &[]).is_err());
    assert_eq!(guard.status(), TransactionStatus::InError);
    assert_eq!(manager.status(), TransactionStatus::InError);
    assert_eq!(backend_state(&db, pid), "idle in transaction (aborted)");

    guard.batch_execute("ROLLBACK").expect("rollback");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    assert_eq!(backend_state(&db, pid), "idle");
    drop(guard);
    assert_eq!(manager.unfinished_transactions(), 0);
}

/// A failed first `prepare` aborts the transaction before its `BEGIN` went
/// out: a statement sent after it would run, and commit, on its own.
#[test]
fn after_a_failed_first_prepare_nothing_runs_outside_the_transaction() {
    let db = Db::new("failed_first_prepare");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    assert!(tx.prepare("SELEC broken").is_err(), "a syntax error");
    let err = tx
        .execute("INSERT INTO items VALUES (1, 'after')", &[])
        .expect_err("the transaction is aborted");
    assert!(matches!(err, Error::TransactionAborted(Some(_))), "{err:?}");
    assert!(db.item_ids().is_empty(), "nothing committed on its own");
    let err = tx.commit().expect_err("aborted");
    assert!(matches!(err, Error::TransactionAborted(Some(_))), "{err:?}");
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
}

/// In another client encoding the server may read bytes differently from
/// pgtx's lexer (a multibyte character swallowing a quote or backslash), so
/// a transaction refuses SQL text until the encoding is UTF8 again.
#[test]
fn sql_text_in_a_tx_is_refused_while_client_encoding_is_not_utf8() {
    let db = Db::new("foreign_encoding");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("SET client_encoding = 'SJIS'")
        .expect("set encoding");
    let mut tx = guard.begin().expect("begin");
    let err = tx
        .execute("INSERT INTO items VALUES (1, 'x')", &[])
        .expect_err("refused");
    assert!(
        matches!(&err, Error::TransactionControl(m) if m.contains("client_encoding")),
        "{err:?}"
    );
    tx.rollback().expect("rollback");
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("RESET client_encoding")
        .expect("reset through the guard");
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (2, 'utf8 again')", &[])
        .expect("insert");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![2]);
}

#[test]
fn release_returns_unfinished_transaction_for_a_block_the_guards_sql_left_open() {
    logger::capture();
    let db = Db::new("guard_release_block");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'left open')")
        .expect("user block");
    let err = guard.release().expect_err("a block was left open");
    assert!(matches!(err, Error::UnfinishedTransaction), "{err:?}");
    assert_eq!(err.to_string(), UNFINISHED_TRANSACTION);
    assert!(db.item_ids().is_empty(), "rolled back");
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(manager.status(), TransactionStatus::Idle);

    // A clean guard releases with Ok, and the connection is free.
    let mut guard = manager.lock().expect("released");
    guard
        .execute("INSERT INTO items VALUES (2, 'autocommit')", &[])
        .expect("insert");
    guard.release().expect("nothing left open");
    thread::scope(|s| {
        s.spawn(|| drop(manager.try_lock().expect("free")));
    });
    assert_eq!(db.item_ids(), [2]);
    assert_eq!(manager.unfinished_transactions(), 1);
}

#[test]
fn release_of_a_guard_that_was_taken_over_is_lease_revoked_and_frees_nothing() {
    let db = Db::new("guard_release_revoked");
    let manager = pgtx::ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(std::time::Duration::from_millis(100)))
        .build()
        .expect("settings");
    let stale = manager.lock().expect("lock");
    let (taken, holding) = std::sync::mpsc::channel();
    let (done, until_done) = std::sync::mpsc::channel::<()>();
    thread::scope(|s| {
        let manager = &manager;
        s.spawn(move || {
            let _newer = manager.lock().expect("taken over after abandon_after");
            let _ = taken.send(());
            let _ = until_done.recv();
        });
        holding.recv().expect("the other thread took it over");
        assert!(matches!(stale.release(), Err(Error::LeaseRevoked)));
        s.spawn(|| {
            assert!(
                matches!(manager.try_lock(), Err(Error::WouldBlock)),
                "the new holder still has it"
            );
        })
        .join()
        .expect("checker");
        drop(done);
    });
}

//! Transactions through a `ManagedConnection` against a real server: the
//! seed's README cases, commit and rollback, errors, status, options.

mod common;

use common::fixtures::Db;
use pgtx::{Error, IsolationLevel, ManagedConnection, SqlState, TransactionStatus, TxOptions};

#[test]
fn new_does_not_connect_and_displays_like_the_seed() {
    let manager = ManagedConnection::new("postgres:///postgres").expect("the seed's DSN parses");
    assert_eq!(
        manager.to_string(),
        "<ManagedConnection: postgres:///postgres (closed)>"
    );
    assert_eq!(manager.status(), TransactionStatus::Closed);
    assert!(manager.is_closed());

    let db = Db::new("lazy_open");
    let manager = db.manager();
    assert!(db.backends().is_empty(), "new() must not connect");
    let guard = manager.lock().expect("lock opens the connection");
    assert_eq!(db.backends().len(), 1);
    drop(guard);
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert!(manager.to_string().ends_with("(idle)>"), "{manager}");
}

#[test]
fn malformed_settings_are_an_error_naming_the_problem() {
    let err = ManagedConnection::new("host=localhost port=notanumber").expect_err("bad port");
    assert!(matches!(err, Error::Settings(_)), "{err:?}");
    assert!(err.to_string().contains("port"), "{err}");

    let err = ManagedConnection::new("host=localhost colour=blue password=hunter2")
        .expect_err("unknown key");
    assert!(err.to_string().contains("colour"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[test]
fn closure_commit_is_visible_from_another_connection() {
    let db = Db::new("closure_commit");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])?;
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&2_i32, &"two"])?;
            tx.commit()
        })
        .expect("commit");
    assert_eq!(db.item_ids(), [1, 2]);
    assert_eq!(manager.status(), TransactionStatus::Idle);
}

#[test]
fn closure_returns_the_value_it_attaches() {
    let db = Db::new("closure_value");
    let manager = db.manager();
    let (count, note): (i64, String) = manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (7, 'seven')", &[])?;
            let row = tx.query_one("SELECT count(*), max(note) FROM items", &[])?;
            let value = (row.get(0), row.get(1));
            Ok::<_, Error>(tx.commit()?.returning(value))
        })
        .expect("commit");
    assert_eq!((count, note.as_str()), (1, "seven"));
}

#[test]
fn closure_rollback_discards_the_work() {
    let db = Db::new("closure_rollback");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'gone')", &[])?;
            tx.rollback()
        })
        .expect("rollback");
    assert!(db.item_ids().is_empty());
    assert_eq!(
        manager.unfinished_transactions(),
        0,
        "a rollback is a finish"
    );
}

#[derive(Debug)]
enum AppError {
    NotImplemented,
    // Read only through `Debug` when a test fails.
    #[allow(dead_code)]
    Db(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

/// txpostgres' `runInteraction` lost the closure's error when the
/// rollback failed too. Here the rollback cannot fail to roll back: when
/// `ROLLBACK` cannot be sent, the connection is closed (the server rolls
/// back a session that ends), the failure is logged, and the closure's own
/// error comes back unchanged.
#[test]
fn a_closure_error_survives_a_rollback_that_cannot_be_sent() {
    let db = Db::new("rollback_fails");
    let (proxy, manager) = db.manager_via_proxy();
    let log = common::logger::capture();
    let result: Result<(), AppError> = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'never')", &[])?;
        proxy.cut(); // the ROLLBACK that follows cannot reach the server
        Err(AppError::NotImplemented)
    });
    assert!(
        matches!(result, Err(AppError::NotImplemented)),
        "the closure's error, not the rollback's: {result:?}"
    );
    assert!(
        !log.lines_containing("ROLLBACK failed").is_empty(),
        "the failed rollback is reported"
    );
    assert!(manager.is_closed(), "the connection was closed, not reused");
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || db
            .open_transactions()
            == 0),
        "the server rolled the session back"
    );
    assert!(db.item_ids().is_empty());
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'kept')", &[])?;
            tx.commit()
        })
        .expect("a new connection for the next holder");
    assert_eq!(db.item_ids(), [2]);
}

/// The seed's "Dealing with Errors": the transaction is open (status
/// INTRANS), the code raises, the error propagates and the status is idle.
#[test]
fn error_inside_rolls_back_and_propagates_unchanged() {
    let db = Db::new("error_inside");
    let manager = db.manager();
    let result: Result<(), AppError> = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'never')", &[])?;
        assert_eq!(manager.status(), TransactionStatus::InTransaction);
        Err(AppError::NotImplemented)
    });
    assert!(
        matches!(result, Err(AppError::NotImplemented)),
        "{result:?}"
    );
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    // The next holder gets a clean connection.
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'kept')", &[])?;
            tx.commit()
        })
        .expect("commit");
    assert_eq!(db.item_ids(), [2]);
}

/// The seed's "Making Queries": SELECT 1, fetch, commit.
#[test]
fn seed_making_queries() {
    let db = Db::new("seed_queries");
    let manager = db.manager();
    let guard = manager.lock().expect("lock");
    let mut tx = guard.begin().expect("begin");
    let one: i32 = tx.query_one("SELECT 1", &[]).expect("select").get(0);
    assert_eq!(one, 1);
    tx.commit().expect("commit").release();
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn commit_after_a_failed_statement_reports_the_abort_and_writes_nothing() {
    let db = Db::new("commit_after_failure");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .expect("insert");
    let failed = tx
        .execute("INSERT INTO items VALUES (1, 'duplicate')", &[])
        .expect_err("primary key violation");
    assert_eq!(failed.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let shown = failed.to_string();
    assert!(
        shown.contains("duplicate key value") && shown.contains("23505"),
        "the server's message and code, not just \"db error\": {shown}"
    );
    assert_eq!(tx.status(), TransactionStatus::InError);
    // A later statement is refused by the server too.
    assert_eq!(
        tx.execute("INSERT INTO items VALUES (2, 'after')", &[])
            .expect_err("aborted")
            .code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    let err = tx.commit().expect_err("commit must not pretend");
    assert!(matches!(err, Error::TransactionAborted(_)), "{err:?}");
    assert_eq!(
        err.code(),
        Some(&SqlState::UNIQUE_VIOLATION),
        "carries the first error"
    );
    assert!(db.item_ids().is_empty(), "nothing was written");
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn closure_commit_after_a_failed_statement_is_an_error_too() {
    let db = Db::new("closure_commit_after_failure");
    let manager = db.manager();
    let result = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'a')", &[])?;
        // Swallow the error, as careless code does, then commit.
        let _ = tx.execute("SELECT 1/0", &[]);
        tx.commit()
    });
    let err = result.expect_err("aborted");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert!(db.item_ids().is_empty());
}

#[test]
fn a_client_side_error_does_not_abort_the_transaction() {
    let db = Db::new("client_side_error");
    let manager = db.manager();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'a')", &[])?;
            let err = tx
                .query_one("SELECT id FROM items WHERE id = 99", &[])
                .expect_err("no row");
            assert!(err.as_db_error().is_none(), "not a server error: {err}");
            assert_eq!(tx.status(), TransactionStatus::InTransaction);
            tx.commit()
        })
        .expect("the server saw no error, so commit succeeds");
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn a_deferred_constraint_failing_at_commit_is_an_error_and_writes_nothing() {
    let db = Db::new("deferred_constraint");
    db.admin()
        .batch_execute(
            "CREATE TABLE child (parent int REFERENCES items (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .expect("create child");
    let manager = db.manager();
    let err = manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO child VALUES (42)", &[])?;
            tx.commit()
        })
        .expect_err("the foreign key fails at COMMIT");
    assert_eq!(err.code(), Some(&SqlState::FOREIGN_KEY_VIOLATION));
    let children: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM child", &[])
        .expect("count")
        .get(0);
    assert_eq!(children, 0);
    assert_eq!(manager.status(), TransactionStatus::Idle);
}

#[test]
fn status_follows_the_transaction() {
    let db = Db::new("status");
    let manager = db.manager();
    assert_eq!(manager.status(), TransactionStatus::Closed);
    let guard = manager.lock().expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let mut tx = guard.begin().expect("begin");
    assert_eq!(manager.status(), TransactionStatus::InTransaction);
    tx.execute("SELECT 1/0", &[]).expect_err("fails");
    assert_eq!(manager.status(), TransactionStatus::InError);
    tx.rollback().expect("rollback").release();
    assert_eq!(manager.status(), TransactionStatus::Idle);
}

#[test]
fn autocommit_statements_through_the_guard_commit_at_once() {
    let db = Db::new("autocommit");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .execute("INSERT INTO items VALUES ($1, 'auto')", &[&5_i32])
        .expect("insert");
    // Still holding the guard, another connection already sees the row.
    assert_eq!(db.item_ids(), [5]);
    let rows = guard.query("SELECT id FROM items", &[]).expect("query");
    assert_eq!(rows.len(), 1);
    guard
        .batch_execute("INSERT INTO items VALUES (6, 'a'); INSERT INTO items VALUES (7, 'b')")
        .expect("batch");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    drop(guard);
    assert_eq!(db.item_ids(), [5, 6, 7]);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn transaction_options_reach_the_server() {
    let db = Db::new("options");
    let manager = db.manager();
    let options = TxOptions::new()
        .isolation(IsolationLevel::Serializable)
        .read_only(true)
        .deferrable(true);
    let seen: (String, String, String) = manager
        .transaction_with(options, |mut tx| {
            let row = tx.query_one(
                "SELECT current_setting('transaction_isolation'),
                        current_setting('transaction_read_only'),
                        current_setting('transaction_deferrable')",
                &[],
            )?;
            let seen = (row.get(0), row.get(1), row.get(2));
            Ok::<_, Error>(tx.commit()?.returning(seen))
        })
        .expect("read settings");
    assert_eq!(
        (seen.0.as_str(), seen.1.as_str(), seen.2.as_str()),
        ("serializable", "on", "on")
    );

    let err = manager
        .transaction_with(TxOptions::new().read_only(true), |mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'x')", &[])?;
            tx.commit()
        })
        .expect_err("read-only transaction refuses writes");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    assert!(db.item_ids().is_empty());
}

#[test]
fn closing_after_use_ends_the_session_and_the_next_holder_reopens() {
    let db = Db::new("close_after_use");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    let first: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    guard.close().expect("close");
    assert!(manager.is_closed());
    assert_eq!(manager.status(), TransactionStatus::Closed);
    // The server session is gone (close waits for the server to see Terminate).
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || !db
            .backends()
            .contains(&first)),
        "session {first} still there"
    );

    let second: i32 = manager
        .transaction(|mut tx| {
            let pid = tx.query_one("SELECT pg_backend_pid()", &[])?.get(0);
            Ok::<_, Error>(tx.commit()?.close()?.returning(pid))
        })
        .expect("reopened");
    assert_ne!(first, second);
    assert!(manager.is_closed(), "Tx<Done>::close closed it again");

    drop(manager.lock().expect("reopen"));
    assert!(!manager.is_closed());
    manager.close().expect("close");
    assert!(manager.is_closed());
}

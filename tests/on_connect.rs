//! `Builder::on_connect`: the hook runs on every new connection before
//! anyone gets it, and a hook that fails (or leaves a transaction block
//! open) fails that attempt with `Error::OnConnect`, the connection closed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::eventually;
use common::fixtures::Db;
use common::server::{TestServer, assert_says_each_thing_once};
use pgtx::{Error, ManagedConnection};

fn show(manager: &ManagedConnection, setting: &str) -> String {
    manager
        .transaction(|mut tx| {
            let value: String = tx.query_one(&format!("SHOW {setting}"), &[])?.get(0);
            tx.commit_returning(value)
        })
        .expect("show")
}

/// Sessions on `db` whose `application_name` is `name`, from the server's view.
fn sessions_named(db: &Db, name: &str) -> i64 {
    db.admin()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&db.name, &name],
        )
        .expect("pg_stat_activity")
        .get(0)
}

#[test]
fn the_hook_sets_up_every_new_connection_before_anyone_uses_it() {
    let db = Db::new("hook_every");
    db.admin()
        .batch_execute("CREATE SCHEMA app; CREATE TABLE app.things (n int)")
        .expect("schema");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(move |conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            conn.batch_execute("SET search_path = app, public")?;
            conn.execute(
                "SELECT set_config('application_name', $1, false)",
                &[&"hooked"],
            )?;
            Ok(())
        })
        .build()
        .expect("builder");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "building does not connect");

    // The unqualified name resolves through the hook's search_path.
    manager
        .lock()
        .expect("lock")
        .execute("INSERT INTO things VALUES (1)", &[])
        .expect("app.things through the search_path");
    assert_eq!(show(&manager, "application_name"), "hooked");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one connection, one run");
    assert_eq!(sessions_named(&db, "hooked"), 1);

    // A new session (the old one killed) is set up again.
    assert_eq!(TestServer::shared().terminate_backends(&db.name), 1);
    assert_eq!(show(&manager, "search_path"), "app, public");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let n: i64 = db
        .admin()
        .query_one("SELECT count(*) FROM app.things", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn a_failing_hook_fails_the_attempt_closes_the_connection_and_is_retried() {
    let db = Db::new("hook_fails");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(move |conn| {
            conn.batch_execute("SET application_name = 'hook_fails'")?;
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first run fails on the server's word.
                conn.batch_execute("SELECT * FROM no_such_table")?;
            }
            Ok(())
        })
        .build()
        .expect("builder");

    let err = manager.lock().expect_err("the hook failed");
    match &err {
        Error::OnConnect(source) => {
            let db_error = source
                .downcast_ref::<Error>()
                .and_then(Error::as_db_error)
                .expect("the hook's own error is the source");
            assert_eq!(db_error.code(), &pgtx::SqlState::UNDEFINED_TABLE);
        }
        other => panic!("expected OnConnect: {other:?}"),
    }
    assert!(err.to_string().contains("on_connect"), "{err}");
    let chain = assert_says_each_thing_once(&err);
    assert!(
        chain.starts_with("the on_connect hook failed on a new connection: ERROR: ")
            && chain.contains("no_such_table")
            && chain.contains("(SQLSTATE 42P01)"),
        "{chain}"
    );
    assert!(
        eventually(Duration::from_secs(10), || sessions_named(
            &db,
            "hook_fails"
        ) == 0),
        "the failed connection was closed"
    );
    assert!(manager.is_closed());

    // The next call opens another connection; the hook now succeeds.
    manager
        .lock()
        .expect("second attempt")
        .execute("INSERT INTO items VALUES (1, 'after')", &[])
        .expect("insert");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(db.item_ids(), [1]);
    assert_eq!(sessions_named(&db, "hook_fails"), 1);
}

#[test]
fn a_hook_that_leaves_a_transaction_open_is_refused_and_nothing_it_did_is_kept() {
    let db = Db::new("hook_block");
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(|conn| {
            conn.batch_execute("BEGIN; INSERT INTO items VALUES (7, 'from the hook')")?;
            Ok(())
        })
        .build()
        .expect("builder");
    let err = manager.transaction(|tx| tx.commit()).expect_err("refused");
    assert!(matches!(err, Error::OnConnect(_)), "{err:?}");
    // The message says what happened, the source why: each once.
    assert_eq!(
        err.to_string(),
        "the on_connect hook failed on a new connection"
    );
    assert_eq!(
        assert_says_each_thing_once(&err),
        "the on_connect hook failed on a new connection: \
         the on_connect hook left a transaction block open (it must end what it begins)"
    );
    assert!(
        eventually(Duration::from_secs(10), || db.backends().is_empty()),
        "no session left behind"
    );
    assert!(
        db.item_ids().is_empty(),
        "the hook's insert was never committed"
    );
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_panicking_hook_panics_the_caller_and_leaves_the_manager_usable() {
    let db = Db::new("hook_panics");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let manager = ManagedConnection::builder(&db.dsn)
        .on_connect(move |_conn| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("hook bug");
            }
            Ok(())
        })
        .build()
        .expect("builder");
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.lock().map(drop)));
    assert!(panicked.is_err(), "the hook's panic reaches the caller");
    // The lock was released by the unwind and the connection not kept.
    let mut guard = manager
        .lock_timeout(Duration::from_secs(5))
        .expect("not locked for good");
    guard
        .execute("INSERT INTO items VALUES (1, 'after the panic')", &[])
        .expect("insert");
    drop(guard);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(db.item_ids(), [1]);
    assert!(
        eventually(Duration::from_secs(10), || db.backends().len() == 1),
        "only the good connection is left"
    );
}

#[test]
fn the_builder_s_debug_shows_no_password_and_no_hook_internals() {
    let builder = ManagedConnection::builder("host=localhost user=u password=hunter2")
        .on_connect(|_conn| Ok(()));
    let shown = format!("{builder:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("on_connect"), "{shown}");
}

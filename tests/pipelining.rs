//! `BEGIN` is sent lazily, in the same write and the same Sync group as the
//! transaction's first statement: `begin()` itself sends nothing, an empty
//! transaction costs no round trip, and a `BEGIN` that fails keeps its
//! statement from running at all (the server skips to Sync). Everything a
//! transaction did still behaves as if `BEGIN` had gone first.
//!
//! What the server did is proven by asking it: `pg_stat_activity` and the
//! rows seen from a second connection, the session's settings on the same
//! backend, and a proxy counting the client's writes.

mod common;

use std::thread;
use std::time::{Duration, SystemTime};

use common::eventually;
use common::fixtures::Db;
use common::server::TestServer;
use pgtx::{
    Error, Guard, IsolationLevel, ManagedConnection, SqlState, TransactionStatus, TxOptions,
};

fn backend_pid(guard: &mut Guard<'_>) -> i32 {
    guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

/// `pg_stat_activity.state` of backend `pid`, read from another connection.
fn backend_state(db: &Db, pid: i32) -> String {
    db.admin()
        .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .expect("the pgtx backend is in pg_stat_activity")
        .get(0)
}

#[test]
fn begin_sends_nothing_and_the_server_is_idle_until_the_first_statement() {
    let db = Db::new("lazy_begin");
    let manager = db.manager();
    let options = [
        None,
        Some(TxOptions::new().isolation(IsolationLevel::RepeatableRead)),
    ];
    for options in options {
        let how = if options.is_some() {
            "begin_with"
        } else {
            "begin"
        };
        let mut guard = manager.lock().expect("lock");
        let pid = backend_pid(&mut guard);
        assert_eq!(backend_state(&db, pid), "idle");
        let mut tx = match options {
            Some(options) => guard.begin_with(options),
            None => guard.begin(),
        }
        .expect("begin");
        assert_eq!(manager.status(), TransactionStatus::InTransaction, "{how}");
        assert_eq!(
            backend_state(&db, pid),
            "idle",
            "{how}() must send nothing: the server must not be in a transaction yet"
        );
        let one: i32 = tx.query_one("SELECT 1", &[]).expect("select").get(0);
        assert_eq!(one, 1);
        assert_eq!(
            backend_state(&db, pid),
            "idle in transaction",
            "{how}: the first statement opens the transaction"
        );
        tx.commit().expect("commit").release();
        assert_eq!(backend_state(&db, pid), "idle", "{how}: committed");
        assert_eq!(manager.status(), TransactionStatus::Idle);
    }
}

#[test]
fn the_transaction_timestamp_is_the_first_statements_not_begins() {
    let db = Db::new("lazy_timestamp");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    let before: SystemTime = guard
        .query_one("SELECT clock_timestamp()", &[])
        .expect("clock")
        .get(0);
    let mut tx = guard.begin().expect("begin");
    thread::sleep(Duration::from_millis(300));
    let since_begin_ms: f64 = tx
        .query_one(
            "SELECT (extract(epoch FROM now() - $1::timestamptz) * 1000)::float8",
            &[&before],
        )
        .expect("now()")
        .get(0);
    tx.commit().expect("commit").release();
    assert!(
        since_begin_ms >= 250.0,
        "now() is {since_begin_ms:.1} ms after the clock read before begin(), \
         not >= 250 ms: the transaction started at begin(), not at its first statement"
    );
}

#[test]
fn an_empty_transaction_sends_nothing_to_the_server() {
    let db = Db::new("lazy_empty");
    let (proxy, manager) = db.manager_via_proxy();
    manager
        .transaction(|mut tx| {
            tx.query_one("SELECT 1", &[])?;
            tx.commit()
        })
        .expect("warm-up transaction");
    let before = proxy.client_chunks();

    manager
        .lock()
        .expect("lock")
        .begin()
        .expect("begin")
        .commit()
        .expect("commit")
        .release();
    assert_eq!(proxy.client_chunks() - before, 0, "begin + commit");

    manager
        .lock()
        .expect("lock")
        .begin()
        .expect("begin")
        .rollback()
        .expect("rollback")
        .release();
    assert_eq!(proxy.client_chunks() - before, 0, "begin + rollback");

    manager
        .transaction(|tx| tx.commit())
        .expect("closure commit");
    assert_eq!(
        proxy.client_chunks() - before,
        0,
        "transaction(|tx| tx.commit())"
    );
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(manager.unfinished_transactions(), 0);

    // The counter does see this connection's writes.
    let one: i32 = manager
        .lock()
        .expect("lock")
        .query_one("SELECT 1", &[])
        .expect("select")
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(
        proxy.client_chunks() - before,
        1,
        "one autocommit statement"
    );
    assert_eq!(proxy.total_connections(), 1);
}

#[test]
fn a_one_statement_transaction_takes_two_writes() {
    let db = Db::new("lazy_two_writes");
    let (proxy, manager) = db.manager_via_proxy();
    // The first transaction on a connection prepares the text and COMMIT
    // (a round trip each, once per connection).
    let warm: i32 = manager
        .transaction(|mut tx| -> Result<_, Error> {
            let one: i32 = tx.query_one("SELECT $1::int", &[&1_i32])?.get(0);
            Ok(tx.commit()?.returning(one))
        })
        .expect("warm-up");
    assert_eq!(warm, 1);
    let before = proxy.client_chunks();

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let seven: i32 = tx
        .query_one("SELECT $1::int", &[&7_i32])
        .expect("select")
        .get(0);
    tx.commit().expect("commit").release();

    assert_eq!(seven, 7);
    assert_eq!(
        proxy.client_chunks() - before,
        2,
        "BEGIN and the statement in one write, COMMIT in another"
    );
    assert_eq!(proxy.total_connections(), 1);
}

#[test]
fn without_a_statement_cache_a_one_statement_transaction_takes_two_writes() {
    let db = Db::new("lazy_two_writes_uncached");
    let proxy = db.proxy();
    let manager = ManagedConnection::builder(&db.dsn_via(proxy.addr()))
        .statement_cache(false)
        .build()
        .expect("settings");
    // The first run of a text with parameters looks their types up, once
    // per connection.
    let warm: i32 = manager
        .transaction(|mut tx| -> Result<_, Error> {
            let one: i32 = tx.query_one("SELECT $1::int", &[&1_i32])?.get(0);
            Ok(tx.commit()?.returning(one))
        })
        .expect("warm-up");
    assert_eq!(warm, 1);
    let before = proxy.client_chunks();

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let seven: i32 = tx
        .query_one("SELECT $1::int", &[&7_i32])
        .expect("select")
        .get(0);
    tx.commit().expect("commit").release();

    assert_eq!(seven, 7);
    assert_eq!(
        proxy.client_chunks() - before,
        2,
        "BEGIN and the statement in one write, COMMIT in another"
    );
    assert_eq!(proxy.total_connections(), 1);
}

const SET_MARKER: &str = "SELECT set_config('pgtx.marker', 'ran', false)";

/// The error of `BEGIN READ WRITE` on a standby.
fn assert_read_write_refused(err: &Error, context: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{context}: not a server error: {err:?}"));
    assert!(
        db.message().contains("read-write mode"),
        "{context}: the error is not BEGIN READ WRITE's: {err}"
    );
    assert_eq!(
        db.code(),
        &SqlState::FEATURE_NOT_SUPPORTED,
        "{context}: {err}"
    );
}

/// On backend `pid`, the marker was never set: the statement after the
/// failed `BEGIN` did not run.
fn assert_marker_never_set(manager: &ManagedConnection, pid: i32, context: &str) {
    let mut guard = manager.lock().expect("lock");
    assert_eq!(backend_pid(&mut guard), pid, "{context}: the same session");
    let marker: Option<String> = guard
        .query_one("SELECT current_setting('pgtx.marker', true)", &[])
        .expect("read the marker")
        .get(0);
    assert!(
        marker.as_deref().unwrap_or("").is_empty(),
        "{context}: the statement after the failed BEGIN ran outside a transaction \
         (pgtx.marker = {marker:?})"
    );
    assert_eq!(guard.status(), TransactionStatus::Idle, "{context}");
}

#[test]
fn a_failed_begin_keeps_the_first_statement_from_running_at_all() {
    let server = TestServer::start_private_standby();
    let manager = ManagedConnection::new(&server.dsn()).expect("settings");
    failed_begin_keeps_the_first_statement_from_running(&manager);
    // The same without a statement cache, where BEGIN is parsed as the
    // unnamed statement in front of the statement's own Parse.
    let manager = ManagedConnection::builder(&server.dsn())
        .statement_cache(false)
        .build()
        .expect("settings");
    failed_begin_keeps_the_first_statement_from_running(&manager);
}

fn failed_begin_keeps_the_first_statement_from_running(manager: &ManagedConnection) {
    let read_write = TxOptions::new().read_only(false);

    let mut guard = manager.lock().expect("lock");
    let pid = backend_pid(&mut guard);
    // The observation works: in autocommit the setting stays for the session.
    guard
        .query_one("SELECT set_config('pgtx.control', 'ran', false)", &[])
        .expect("set the control");
    let control: Option<String> = guard
        .query_one("SELECT current_setting('pgtx.control', true)", &[])
        .expect("read the control")
        .get(0);
    assert_eq!(control.as_deref(), Some("ran"));

    // Guard form. An eager BEGIN fails in begin_with, a lazy one at the
    // first statement; either way the statement must not run.
    let err = match guard.begin_with(read_write) {
        Err(err) => err,
        Ok(mut tx) => {
            let err = tx
                .query_one(SET_MARKER, &[])
                .expect_err("the BEGIN READ WRITE sent with it fails on a standby");
            let commit = tx
                .commit()
                .expect_err("commit after a failed BEGIN must not succeed");
            assert!(matches!(commit, Error::TransactionAborted(_)), "{commit:?}");
            assert_read_write_refused(&commit, "commit carries the first error");
            err
        }
    };
    assert_read_write_refused(&err, "guard form");
    assert_marker_never_set(manager, pid, "guard form");

    // Closure form.
    let err = manager
        .transaction_with(read_write, |mut tx| {
            tx.query_one(SET_MARKER, &[])?;
            tx.commit()
        })
        .expect_err("BEGIN READ WRITE fails on a standby");
    assert_read_write_refused(&err, "closure form");
    assert_marker_never_set(manager, pid, "closure form");
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn a_failed_first_statement_aborts_the_transaction() {
    let db = Db::new("lazy_first_fails");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let err = tx
        .query_one("SELECT 1/0", &[])
        .expect_err("division by zero");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    assert_eq!(tx.status(), TransactionStatus::InError);
    let err = tx.commit().expect_err("commit after a failed statement");
    assert!(matches!(err, Error::TransactionAborted(_)), "{err:?}");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_failed_second_statement_discards_what_the_first_wrote() {
    let db = Db::new("lazy_second_fails");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'first')", &[])
        .expect("insert");
    let err = tx.execute("SELECT 1/0", &[]).expect_err("division by zero");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    let err = tx.commit().expect_err("aborted");
    assert!(matches!(err, Error::TransactionAborted(_)), "{err:?}");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    assert!(db.item_ids().is_empty(), "the first insert was rolled back");
}

#[test]
fn a_client_side_error_in_the_first_statement_leaves_the_transaction_usable() {
    let db = Db::new("lazy_client_error");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let err = tx
        .query_one("SELECT $1::int", &[&"text"])
        .expect_err("a &str is no int");
    assert!(
        err.as_db_error().is_none(),
        "a client-side error, not the server's: {err}"
    );
    assert_eq!(tx.status(), TransactionStatus::InTransaction);
    tx.execute("INSERT INTO items VALUES (1, 'after')", &[])
        .expect("the transaction is still usable");
    assert!(
        db.item_ids().is_empty(),
        "the insert ran in autocommit: BEGIN was lost with the failed statement"
    );
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn a_connection_lost_before_the_first_statement_is_replaced_for_the_transaction() {
    let db = Db::new("lazy_lost_before");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    let old = backend_pid(&mut guard);
    let mut tx = guard.begin().expect("begin");

    let terminated: bool = db
        .admin()
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&old])
        .expect("terminate")
        .get(0);
    assert!(terminated);
    assert!(
        eventually(Duration::from_secs(5), || !db.backends().contains(&old)),
        "backend {old} still there"
    );

    let new: i32 = tx
        .query_one(
            "INSERT INTO items VALUES (1, 'new session') RETURNING pg_backend_pid()",
            &[],
        )
        .expect("nothing of the transaction had reached the server: it runs on a new connection")
        .get(0);
    assert_ne!(new, old);
    assert!(
        db.item_ids().is_empty(),
        "the insert ran in autocommit on the new connection"
    );
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn transaction_options_travel_with_the_first_statement() {
    let db = Db::new("lazy_options");
    let manager = db.manager();
    let mut tx = manager
        .lock()
        .expect("lock")
        .begin_with(
            TxOptions::new()
                .isolation(IsolationLevel::Serializable)
                .read_only(true),
        )
        .expect("begin");
    let row = tx
        .query_one(
            "SELECT current_setting('transaction_isolation'),
                    current_setting('transaction_read_only')",
            &[],
        )
        .expect("settings");
    let seen: (String, String) = (row.get(0), row.get(1));
    tx.commit().expect("commit").release();
    assert_eq!((seen.0.as_str(), seen.1.as_str()), ("serializable", "on"));

    let mut tx = manager
        .lock()
        .expect("lock")
        .begin_with(TxOptions::new().read_only(true))
        .expect("begin");
    let err = tx
        .execute("INSERT INTO items VALUES (1, 'refused')", &[])
        .expect_err("a read-only transaction refuses writes");
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
    let err = tx.commit().expect_err("aborted");
    assert!(matches!(err, Error::TransactionAborted(_)), "{err:?}");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    assert!(db.item_ids().is_empty());
}

#[test]
fn later_statements_run_in_the_first_statements_transaction() {
    let db = Db::new("lazy_later");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let xact = "SELECT pg_current_xact_id()::text, now()::text";
    let row = tx.query_one(xact, &[]).expect("first");
    let first: (String, String) = (row.get(0), row.get(1));
    tx.execute("INSERT INTO items VALUES (1, 'a')", &[])
        .expect("insert");
    tx.execute("INSERT INTO items VALUES (2, 'b')", &[])
        .expect("insert");
    let row = tx.query_one(xact, &[]).expect("last");
    let last: (String, String) = (row.get(0), row.get(1));
    assert_eq!(first, last, "one transaction id and one transaction start");
    assert!(db.item_ids().is_empty(), "nothing is visible before commit");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1, 2]);
}

#[test]
fn batch_execute_as_the_first_statement_runs_inside_the_transaction() {
    let db = Db::new("lazy_batch");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.batch_execute("INSERT INTO items VALUES (1, 'a'); INSERT INTO items VALUES (2, 'b')")
        .expect("batch");
    assert!(db.item_ids().is_empty(), "the batch ran in autocommit");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1, 2]);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.batch_execute("INSERT INTO items VALUES (3, 'c'); INSERT INTO items VALUES (4, 'd')")
        .expect("batch");
    tx.rollback().expect("rollback").release();
    assert_eq!(db.item_ids(), [1, 2], "the rolled-back batch left nothing");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn prepare_as_the_first_call_then_the_statement_runs_inside_the_transaction() {
    let db = Db::new("lazy_prepare");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let insert = tx
        .prepare("INSERT INTO items VALUES ($1, 'prepared') RETURNING id")
        .expect("prepare");
    let id: i32 = tx.query_one(&insert, &[&1_i32]).expect("insert").get(0);
    assert_eq!(id, 1);
    assert!(db.item_ids().is_empty(), "the insert ran in autocommit");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1]);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let insert = tx
        .prepare("INSERT INTO items VALUES ($1, 'prepared') RETURNING id")
        .expect("prepare");
    tx.query_one(&insert, &[&2_i32]).expect("insert");
    tx.rollback().expect("rollback").release();
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn a_first_statement_larger_than_a_socket_write_goes_out_whole_with_its_begin() {
    // 4 MB of parameter: the socket takes it in several writes, and BEGIN
    // goes in front of the first of them.
    let db = Db::new("lazy_large_write");
    let manager = db.manager();
    let label = "x".repeat(4 << 20);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let stored: i32 = tx
        .query_one(
            "INSERT INTO items VALUES (1, $1) RETURNING length(note)",
            &[&label],
        )
        .expect("insert")
        .get(0);
    assert_eq!(usize::try_from(stored).expect("length"), label.len());
    assert!(db.item_ids().is_empty(), "the insert ran in autocommit");
    tx.commit().expect("commit").release();
    assert_eq!(db.item_ids(), [1]);
    let length: i32 = db
        .admin()
        .query_one("SELECT length(note) FROM items WHERE id = 1", &[])
        .expect("read back")
        .get(0);
    assert_eq!(usize::try_from(length).expect("length"), label.len());
}

#[test]
fn a_first_statement_with_a_large_result_returns_every_row() {
    // Many reads' worth of rows right behind BEGIN's answers, which the
    // driver takes out of the stream.
    let db = Db::new("lazy_large_read");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let rows = tx
        .query(
            "SELECT g, repeat('y', 200) FROM generate_series(1, 50000) AS g",
            &[],
        )
        .expect("query");
    assert_eq!(rows.len(), 50_000);
    let sum: i64 = rows.iter().map(|r| i64::from(r.get::<_, i32>(0))).sum();
    assert_eq!(sum, 50_000 * 50_001 / 2);
    assert!(rows.iter().all(|r| r.get::<_, &str>(1).len() == 200));
    assert_eq!(tx.status(), TransactionStatus::InTransaction);
    tx.commit().expect("commit").release();
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn dropping_prepared_statements_does_not_break_later_transactions() {
    // BEGIN and COMMIT are prepared once per connection; DISCARD ALL and
    // DEALLOCATE drop them with every other prepared statement, and pgtx
    // must notice and prepare them again rather than fail (or, worse,
    // abort the transaction at COMMIT).
    let db = Db::new("lazy_discard");
    let manager = db.manager();
    let insert = |id: i32| {
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, 'x')", &[&id])?;
            tx.commit()
        })
    };
    insert(1).expect("first transaction");
    let pid = backend_pid(&mut manager.lock().expect("lock"));
    manager
        .lock()
        .expect("lock")
        .batch_execute("DISCARD ALL")
        .expect("DISCARD ALL");
    insert(2).expect("after DISCARD ALL");
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (3, 'x')", &[])?;
            tx.batch_execute("DEALLOCATE ALL")?;
            tx.commit()
        })
        .expect("DEALLOCATE ALL inside a transaction, then COMMIT");
    insert(4).expect("after DEALLOCATE ALL");
    manager
        .lock()
        .expect("lock")
        .execute("DEALLOCATE ALL", &[])
        .expect("DEALLOCATE ALL as an extended-protocol statement");
    insert(5).expect("after DEALLOCATE ALL through execute");
    assert_eq!(
        backend_pid(&mut manager.lock().expect("lock")),
        pid,
        "all on one connection"
    );
    assert_eq!(db.item_ids(), [1, 2, 3, 4, 5]);
    assert_eq!(manager.unfinished_transactions(), 0);
}

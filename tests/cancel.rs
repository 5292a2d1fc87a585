//! Cancellation: a `CancelHandle` interrupts the statement running when it
//! is asked, reported as `Error::Cancelled` (not `statement_timeout`'s
//! `Error::Db`), rolls its transaction back, and never reaches the next
//! statement, even when the request arrives after the statement ended.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use pgtx::{CancelHandle, Error, SqlState};

/// The server's view of `db`'s one session: whether it runs `sql` now.
fn running(db: &Db, sql: &str) -> bool {
    db.admin()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state = 'active' AND query = $1",
            &[&sql],
        )
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        == 1
}

/// Cancels once `db`'s session runs `sql`; whether `cancel` said a
/// statement was running.
fn cancel_when_running(db: &Db, cancel: &CancelHandle, sql: &str) -> bool {
    cancel_when_running_at(db, cancel, sql).0
}

/// As [`cancel_when_running`], and when the cancel was asked for.
fn cancel_when_running_at(db: &Db, cancel: &CancelHandle, sql: &str) -> (bool, Instant) {
    assert!(
        eventually(Duration::from_secs(10), || running(db, sql)),
        "{sql} never started"
    );
    let asked = Instant::now();
    (cancel.cancel().expect("cancel delivered"), asked)
}

#[test]
fn a_long_statement_is_cancelled_within_a_second_and_reported_as_cancelled() {
    let db = Db::new("cancel_sleep");
    let manager = db.manager();
    let cancel = manager.cancel_handle();
    let sql = "SELECT pg_sleep(30)";
    let (outcome, took) = thread::scope(|s| {
        let canceller = s.spawn(|| cancel_when_running_at(&db, &cancel, sql));
        let mut guard = manager.lock().expect("lock");
        let outcome = guard.execute(sql, &[]);
        let returned = Instant::now();
        let (delivered, asked) = canceller.join().expect("canceller");
        assert!(delivered, "a statement was running");
        (outcome, returned.saturating_duration_since(asked))
    });
    let err = outcome.expect_err("cancelled");
    match &err {
        Error::Cancelled(_) => {}
        other => panic!("expected Cancelled: {other:?}"),
    }
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(!err.is_transient());
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The connection is fine afterwards: same session, next statement runs.
    let mut guard = manager.lock().expect("lock");
    let one: i32 = guard.query_one("SELECT 1", &[]).expect("after").get(0);
    assert_eq!(one, 1);
}

#[test]
fn a_cancelled_transaction_is_rolled_back_and_leaves_the_table_empty() {
    let db = Db::new("cancel_tx");
    let manager = db.manager();
    let cancel = manager.cancel_handle();
    let sql = "SELECT pg_sleep(30)";
    let outcome = thread::scope(|s| {
        s.spawn(|| cancel_when_running(&db, &cancel, sql));
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'never')", &[])?;
            tx.execute(sql, &[])?;
            tx.commit()
        })
    });
    assert!(matches!(outcome, Err(Error::Cancelled(_))), "{outcome:?}");
    assert!(db.item_ids().is_empty(), "rolled back");
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(
        manager.unfinished_transactions(),
        0,
        "a returned Err is no fallback"
    );

    // Inside a guard-form transaction, commit then reports the abort.
    let outcome = thread::scope(|s| {
        s.spawn(|| cancel_when_running(&db, &cancel, sql));
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (2, 'never')", &[])
            .expect("insert");
        let err = tx.execute(sql, &[]).expect_err("cancelled");
        assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
        tx.commit()
    });
    assert!(
        matches!(outcome, Err(Error::TransactionAborted(_))),
        "{outcome:?}"
    );
    assert!(db.item_ids().is_empty());
}

#[test]
fn statement_timeout_stays_a_database_error_not_a_cancel() {
    let db = Db::new("cancel_timeout");
    let manager = db.manager();
    let mut guard = manager.lock().expect("lock");
    guard
        .batch_execute("SET statement_timeout = '50ms'")
        .expect("set");
    let err = guard
        .execute("SELECT pg_sleep(5)", &[])
        .expect_err("timed out");
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
}

#[test]
fn a_cancel_with_nothing_running_sends_nothing_and_the_next_statement_runs() {
    let db = Db::new("cancel_idle");
    let manager = db.manager();
    let cancel = manager.cancel_handle();
    assert!(!cancel.cancel().expect("before any connection"));
    manager
        .lock()
        .expect("lock")
        .execute("SELECT 1", &[])
        .expect("short statement");
    assert!(!cancel.cancel().expect("idle"), "nothing was running");
    // Not remembered for later: the next holder's statement runs whole.
    let started = Instant::now();
    manager
        .lock()
        .expect("lock")
        .execute("SELECT pg_sleep(0.2)", &[])
        .expect("not cancelled");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

/// The request (held at the proxy) reaches the server only after the
/// statement it was for has ended there: it must not hit the statement
/// sent next.
#[test]
fn a_cancel_arriving_after_its_statement_ended_does_not_hit_the_next_one() {
    let db = Db::new("cancel_late");
    let (proxy, manager) = db.manager_via_proxy();
    let cancel = manager.cancel_handle();
    // A CancelRequest: length 16, code 80877102.
    proxy.hold_on(&[&[0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E]]);
    let first = "SELECT pg_sleep(0.3)";
    let next = "SELECT pg_sleep(0.31)";
    let (first_outcome, next_outcome, delivered) = thread::scope(|s| {
        let canceller = s.spawn(|| cancel_when_running(&db, &cancel, first));
        let worker = s.spawn(|| {
            let mut guard = manager.lock().expect("lock");
            let first_outcome = guard.execute(first, &[]).map(drop);
            let next_outcome = guard.execute(next, &[]).map(drop);
            (first_outcome, next_outcome)
        });
        // The request is held; the first statement ends on the server.
        // The checks are recorded and asserted after the release, so that a
        // failing one cannot leave the canceller stuck on the held request.
        let held = eventually(Duration::from_secs(10), || proxy.is_holding());
        let first_ended = eventually(Duration::from_secs(10), || !running(&db, first));
        let next_waited = !running(&db, next);
        proxy.release();
        let delivered = canceller.join().expect("canceller");
        let (a, b) = worker.join().expect("worker");
        assert!(held, "the cancel request never reached the proxy");
        assert!(first_ended, "the first statement never ended");
        assert!(next_waited, "nothing is sent while a cancel is on its way");
        (a, b, delivered)
    });
    assert!(delivered, "the first statement was running when asked");
    first_outcome.expect("the first statement had ended before the cancel arrived");
    next_outcome.expect("the next statement is never the one cancelled");
}

#[test]
fn a_cancel_handle_outlives_its_manager_harmlessly() {
    let db = Db::new("cancel_dropped");
    let manager = db.manager();
    manager
        .lock()
        .expect("lock")
        .execute("SELECT 1", &[])
        .expect("connect");
    let cancel = manager.cancel_handle();
    drop(manager);
    assert!(!cancel.cancel().expect("nothing to cancel"));
    assert!(format!("{cancel:?}").contains("CancelHandle"));
}

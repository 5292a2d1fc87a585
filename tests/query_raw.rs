//! Rows streamed by `query_raw`: read as they arrive, with bounded memory,
//! inside a transaction or on their own; a stream dropped, forgotten or
//! failing midway leaves the connection ready for the next statement.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::fixtures::Db;
use pgtx::{Error, ManagedConnection, SqlState, TransactionStatus};

fn within_a_minute<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the call returned (a stream left the connection hanging)")
}

fn shared_manager(db: &Db) -> &'static ManagedConnection {
    Box::leak(Box::new(db.manager()))
}

#[test]
fn every_row_arrives_in_order_and_the_count_comes_at_the_end() {
    let db = Db::new("raw_all");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        let mut rows = guard
            .query_raw("SELECT n FROM generate_series(1, $1) n", &[&200_000_i32])
            .expect("query_raw");
        let mut expected = 1;
        for row in rows.by_ref() {
            let n: i32 = row.expect("row").get(0);
            assert_eq!(n, expected);
            expected += 1;
        }
        assert_eq!(expected, 200_001);
        assert_eq!(rows.rows_affected(), Some(200_000));
        drop(rows);
        assert_eq!(guard.status(), TransactionStatus::Idle);
    });
}

#[test]
fn a_stream_dropped_midway_leaves_the_transaction_going() {
    let db = Db::new("raw_dropped");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut rows = tx
            .query_raw(
                "INSERT INTO items SELECT n, 'note' FROM generate_series(1, 50000) n RETURNING id",
                &[],
            )
            .expect("query_raw");
        let first: i32 = rows.next().expect("a row").expect("ok").get(0);
        assert_eq!(first, 1);
        drop(rows);
        let count: i64 = tx
            .query_one("SELECT count(*) FROM items", &[])
            .expect("the transaction goes on")
            .get(0);
        assert_eq!(count, 50_000, "the statement ran to its end");
        tx.rollback().expect("rollback");
    });
    assert!(db.item_ids().is_empty(), "rolled back");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_forgotten_stream_is_ended_by_the_next_statement_and_the_next_holder() {
    let db = Db::new("raw_forgotten");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        let mut rows = guard
            .query_raw("SELECT n FROM generate_series(1, 100000) n", &[])
            .expect("query_raw");
        rows.next().expect("a row").expect("ok");
        std::mem::forget(rows);
        let one: i32 = guard.query_one("SELECT 1", &[]).expect("usable").get(0);
        assert_eq!(one, 1);

        let mut tx = guard.begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
            .expect("insert");
        let rows = tx
            .query_raw("SELECT n FROM generate_series(1, 100000) n", &[])
            .expect("query_raw");
        std::mem::forget(rows);
        tx.commit().expect("commit after a forgotten stream");
    });
    assert_eq!(db.item_ids(), [1]);
    assert_eq!(db.open_transactions(), 0);
    let mut guard = manager.try_lock().expect("released");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let rows = guard
        .query_raw("SELECT n FROM generate_series(1, 100000) n", &[])
        .expect("query_raw");
    std::mem::forget(rows);
    drop(guard);
    let mut guard = manager.try_lock().expect("released");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    assert_eq!(
        guard
            .query_one("SELECT 2", &[])
            .expect("next holder")
            .get::<_, i32>(0),
        2
    );
}

#[test]
fn an_error_midway_ends_the_stream_and_aborts_the_transaction() {
    let db = Db::new("raw_error");
    let manager = shared_manager(&db);
    let (seen, error, commit) = within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
            .expect("insert");
        let rows = tx
            .query_raw(
                "SELECT 1 / (30000 - n) FROM generate_series(1, 50000) n",
                &[],
            )
            .expect("query_raw");
        let mut seen = 0;
        let mut error = None;
        for row in rows {
            match row {
                Ok(_) => seen += 1,
                Err(e) => error = Some(e),
            }
        }
        (seen, error, tx.commit().map(drop))
    });
    let error = error.expect("the division by zero");
    assert_eq!(error.code(), Some(&SqlState::DIVISION_BY_ZERO), "{error}");
    assert!(seen < 30_000, "{seen} rows before the error");
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn prepared_statements_and_unnamed_text_stream_too() {
    let db = Db::new("raw_kinds");
    db.admin()
        .batch_execute("INSERT INTO items SELECT n, 'note ' || n FROM generate_series(1, 1000) n")
        .expect("fill");
    let cached = shared_manager(&db);
    let unnamed: &'static ManagedConnection = Box::leak(Box::new(
        ManagedConnection::builder(&db.dsn)
            .statement_cache(false)
            .build()
            .expect("build"),
    ));
    within_a_minute(move || {
        let mut guard = cached.lock().expect("lock");
        let statement = guard
            .prepare("SELECT note FROM items WHERE id > $1 ORDER BY id")
            .expect("prepare");
        let notes = guard
            .query_raw(&statement, &[&990_i32])
            .expect("query_raw")
            .map(|row| row.map(|r| r.get::<_, String>(0)))
            .collect::<pgtx::Result<Vec<_>>>()
            .expect("rows");
        assert_eq!(notes.len(), 10);
        assert_eq!(notes[0], "note 991");
        drop(guard);
        for _ in 0..2 {
            let mut tx = unnamed.lock().expect("lock").begin().expect("begin");
            let ids = tx
                .query_raw("SELECT id FROM items WHERE id <= $1 ORDER BY id", &[&5_i32])
                .expect("query_raw")
                .map(|row| row.map(|r| r.get::<_, i32>(0)))
                .collect::<pgtx::Result<Vec<_>>>()
                .expect("rows");
            assert_eq!(ids, [1, 2, 3, 4, 5]);
            tx.commit().expect("commit");
        }
    });
}

/// Set in the child process that streams and measures.
const CHILD: &str = "PGTX_RAW_CHILD_DSN";

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn ten_million_rows_stream_in_bounded_memory() {
    const NAME: &str = "ten_million_rows_stream_in_bounded_memory";
    if let Ok(dsn) = std::env::var(CHILD) {
        let manager = ManagedConnection::new(&dsn).expect("settings");
        let mut guard = manager.lock().expect("lock");
        guard.query_one("SELECT 1", &[]).expect("warm up");
        let before = peak_kib();
        let mut count = 0_u64;
        let mut sum = 0_i64;
        for row in guard
            .query_raw(
                "SELECT n, 'a row of some length' FROM generate_series(1, 10000000) n",
                &[],
            )
            .expect("query_raw")
        {
            sum += i64::from(row.expect("row").get::<_, i32>(0));
            count += 1;
        }
        println!("PGTX_RAW {count} {sum} {}", peak_kib() - before);
        return;
    }
    let db = Db::new("raw_memory");
    let out = common::rerun_test(NAME, [(CHILD, db.dsn.as_str())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split("PGTX_RAW ").nth(1))
        .unwrap_or_else(|| panic!("child: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let figures: Vec<u64> = line
        .split(' ')
        .map(|f| f.parse().expect("a number"))
        .collect();
    assert_eq!(figures[0], 10_000_000);
    assert_eq!(figures[1], 10_000_000 * 10_000_001 / 2);
    // Buffered, 10 million such rows take well over a gigabyte.
    assert!(
        figures[2] < 32 * 1024,
        "peak memory grew by {} KiB",
        figures[2]
    );
    println!(
        "10,000,000 rows streamed; peak memory grew by {} KiB",
        figures[2]
    );
}

//! `COPY … FROM STDIN` and `COPY … TO STDOUT` sent through the statement
//! methods, which carry rows and row counts, not copy data: a clear error,
//! nothing copied, and a connection that is ready for the next statement
//! (never one left waiting for copy data that will not come).

mod common;

use std::io::{Read, Write};
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

// ---------------------------------------------------------------------
// COPY through copy_in / copy_out.
// ---------------------------------------------------------------------

/// `n` rows of `items` in COPY's text format, ids from `first`.
fn text_rows(first: i32, n: i32) -> String {
    (first..first + n)
        .map(|id| format!("{id}\tnote {id}\n"))
        .collect()
}

#[test]
fn copy_in_inside_a_transaction_is_committed_with_it() {
    let db = Db::new("copy_in_commit");
    let manager = shared_manager(&db);
    let copied = within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 5000).as_bytes())
            .expect("write");
        let copied = writer.finish().expect("finish");
        let seen: i64 = tx
            .query_one("SELECT count(*) FROM items", &[])
            .expect("count inside")
            .get(0);
        assert_eq!(seen, 5000, "the transaction sees its COPY");
        tx.commit().expect("commit");
        copied
    });
    assert_eq!(copied, 5000);
    assert_eq!(db.item_ids().len(), 5000);
    assert_eq!(db.open_transactions(), 0);
    let note: String = db
        .admin()
        .query_one("SELECT note FROM items WHERE id = 4321", &[])
        .expect("row")
        .get(0);
    assert_eq!(note, "note 4321");
}

#[test]
fn copy_in_as_a_transactions_first_statement_is_undone_by_rollback() {
    let db = Db::new("copy_in_rollback");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 100).as_bytes())
            .expect("write");
        assert_eq!(writer.finish().expect("finish"), 100);
        assert_eq!(tx.status(), TransactionStatus::InTransaction);
        tx.rollback().expect("rollback");
    });
    assert!(db.item_ids().is_empty(), "rolled back");
    assert_eq!(db.open_transactions(), 0);
    // The same with statement_cache(false): tokio-postgres names the
    // statement itself then.
    let manager: &'static ManagedConnection = Box::leak(Box::new(
        ManagedConnection::builder(&db.dsn)
            .statement_cache(false)
            .build()
            .expect("build"),
    ));
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 10).as_bytes())
            .expect("write");
        assert_eq!(writer.finish().expect("finish"), 10);
        tx.rollback().expect("rollback");
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(20, 10).as_bytes())
            .expect("write");
        assert_eq!(writer.finish().expect("finish"), 10);
        tx.commit().expect("commit");
    });
    assert_eq!(db.item_ids(), (20..30).collect::<Vec<_>>());
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn copy_in_through_a_guard_commits_on_its_own() {
    let db = Db::new("copy_in_guard");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        let mut writer = guard
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer.write_all(b"1\tone\n2\ttwo\n").expect("write");
        assert_eq!(writer.finish().expect("finish"), 2);
        assert_eq!(guard.status(), TransactionStatus::Idle);
    });
    assert_eq!(db.item_ids(), [1, 2]);
}

#[test]
fn a_bad_row_fails_the_copy_with_the_servers_error_and_aborts_the_transaction() {
    let db = Db::new("copy_in_bad_row");
    let manager = shared_manager(&db);
    let (finished, commit) = within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1000, 'before')", &[])
            .expect("insert");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(b"1\tone\nnot a number\tbad\n3\tthree\n")
            .expect("buffered");
        let finished = writer.finish();
        (finished, tx.commit().map(drop))
    });
    let e = finished.expect_err("the bad row fails the COPY");
    assert_eq!(
        e.code(),
        Some(&pgtx::SqlState::INVALID_TEXT_REPRESENTATION),
        "{e}"
    );
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(
        db.item_ids().is_empty(),
        "nothing of the transaction committed"
    );
    assert_eq!(db.open_transactions(), 0);
    let mut guard = manager.try_lock().expect("released");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let one: i32 = guard.query_one("SELECT 1", &[]).expect("usable").get(0);
    assert_eq!(one, 1);
}

#[test]
fn a_copy_in_writer_dropped_unfinished_fails_the_copy_aborts_and_is_reported() {
    let db = Db::new("copy_in_dropped");
    let manager = shared_manager(&db);
    let (commit, unfinished) = within_a_minute(move || {
        let before = manager.unfinished_transactions();
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1000, 'before')", &[])
            .expect("insert");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        // More than one chunk, so that some of it reached the server.
        writer
            .write_all(text_rows(1, 20_000).as_bytes())
            .expect("write");
        drop(writer);
        let unfinished = manager.unfinished_transactions() - before;
        (tx.commit().map(drop), unfinished)
    });
    assert_eq!(unfinished, 1, "reported as a fallback");
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(db.item_ids().is_empty(), "nothing committed");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_forgotten_copy_in_writer_is_failed_before_the_guards_next_statement() {
    let db = Db::new("copy_in_forgotten");
    let manager = shared_manager(&db);
    let (count, unfinished) = within_a_minute(move || {
        let before = manager.unfinished_transactions();
        let mut guard = manager.lock().expect("lock");
        let mut writer = guard
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 20_000).as_bytes())
            .expect("write");
        std::mem::forget(writer);
        // The connection is in the middle of the COPY: the next use ends it.
        let count: i64 = guard
            .query_one("SELECT count(*) FROM items", &[])
            .expect("the guard goes on")
            .get(0);
        (count, manager.unfinished_transactions() - before)
    });
    assert_eq!(count, 0, "none of the COPY was stored");
    assert_eq!(unfinished, 1);
    assert!(db.item_ids().is_empty());
}

#[test]
fn a_copy_forgotten_with_its_guard_leaves_the_next_holder_an_idle_connection() {
    let db = Db::new("copy_in_forgotten_guard");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 10).as_bytes())
            .expect("write");
        writer.flush().expect("sent");
        std::mem::forget(writer);
        drop(tx);
    });
    assert_eq!(db.open_transactions(), 0);
    let mut guard = manager.try_lock().expect("released");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    guard
        .execute("INSERT INTO items VALUES (99, 'next')", &[])
        .expect("usable");
    drop(guard);
    assert_eq!(db.item_ids(), [99]);
}

#[test]
fn copy_in_and_copy_out_refuse_what_is_not_their_copy_and_the_connection_goes_on() {
    let db = Db::new("copy_refusals");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let e = tx.copy_in("COMMIT").map(drop).expect_err("refused");
        assert!(matches!(e, Error::NotACopy { .. }), "{e:?}");
        tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
            .expect("the transaction goes on");
        tx.commit().expect("commit");
        let mut guard = manager.lock().expect("lock");
        let e = guard
            .copy_in("COPY nowhere FROM STDIN")
            .map(drop)
            .expect_err("no table");
        assert_eq!(e.code(), Some(&pgtx::SqlState::UNDEFINED_TABLE), "{e}");
        for (sql, copy_in) in [
            ("SELECT 1", false),
            ("COPY items TO STDOUT", true),
            ("COPY items FROM STDIN", false),
        ] {
            let e = if copy_in {
                guard.copy_in(sql).map(drop)
            } else {
                guard.copy_out(sql).map(drop)
            }
            .expect_err("not that COPY");
            assert!(
                matches!(&e, Error::NotACopy { from_stdin, .. } if *from_stdin == copy_in),
                "{e:?}"
            );
            assert!(e.to_string().contains(sql), "{e}");
        }
        // A prepared statement is not read: the server's answer tells.
        let select = guard.prepare("SELECT 1").expect("prepare");
        assert!(guard.copy_in(&select).map(drop).is_err(), "not a COPY");
        assert!(guard.copy_out(&select).map(drop).is_err(), "not a COPY");
        let one: i32 = guard.query_one("SELECT 1", &[]).expect("usable").get(0);
        assert_eq!(one, 1);
    });
    assert_eq!(db.item_ids(), [1]);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn copy_out_reads_every_row_and_a_reader_dropped_early_leaves_the_transaction_going() {
    let db = Db::new("copy_out");
    db.admin()
        .batch_execute("INSERT INTO items SELECT n, 'note ' || n FROM generate_series(1, 20000) n")
        .expect("fill");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut text = String::new();
        tx.copy_out("COPY (SELECT id, note FROM items ORDER BY id) TO STDOUT")
            .expect("copy_out")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, text_rows(1, 20_000));
        // Read a little, then drop: the rest is read and dropped.
        let mut reader = tx
            .copy_out("COPY items TO STDOUT (FORMAT csv)")
            .expect("copy_out");
        let mut first = [0_u8; 16];
        reader.read_exact(&mut first).expect("some");
        drop(reader);
        tx.execute("INSERT INTO items VALUES (0, 'after')", &[])
            .expect("the transaction goes on");
        tx.commit().expect("commit");
    });
    assert_eq!(db.item_ids().len(), 20_001);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn binary_rows_go_in_and_come_out_typed() {
    use pgtx::binary_copy::{BinaryCopyInWriter, BinaryCopyOutIter};
    use pgtx::types::Type;
    let db = Db::new("copy_binary");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let writer = tx
            .copy_in("COPY items (id, note) FROM STDIN (FORMAT binary)")
            .expect("copy_in");
        let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT]).expect("fresh");
        for id in 1..=1000_i32 {
            let note = (id % 7 != 0).then(|| format!("note {id}"));
            writer.write(&[&id, &note]).expect("row");
        }
        let e = writer.write(&[&1_i32]).expect_err("one value short");
        assert!(
            matches!(
                e,
                Error::WrongRowLength {
                    expected: 2,
                    got: 1
                }
            ),
            "{e:?}"
        );
        let e = writer
            .write(&[&"not an int4", &"x"])
            .expect_err("a text for an int4");
        assert!(matches!(e, Error::CopyValue { column: 0, .. }), "{e:?}");
        assert_eq!(writer.finish().expect("finish"), 1000);
        tx.commit().expect("commit");

        let mut guard = manager.lock().expect("lock");
        let reader = guard
            .copy_out("COPY (SELECT id, note FROM items ORDER BY id) TO STDOUT (FORMAT binary)")
            .expect("copy_out");
        let rows = BinaryCopyOutIter::new(reader, &[Type::INT4, Type::TEXT])
            .expect("fresh")
            .collect::<pgtx::Result<Vec<_>>>()
            .expect("read");
        assert_eq!(rows.len(), 1000);
        for (i, row) in rows.iter().enumerate() {
            let id = i as i32 + 1;
            assert_eq!(row.get::<i32>(0), id);
            assert_eq!(
                row.get::<Option<&str>>(1),
                (id % 7 != 0).then(|| format!("note {id}")).as_deref()
            );
        }
    });
    assert_eq!(db.item_ids().len(), 1000);
}

#[test]
fn copy_in_a_savepoint_is_undone_with_it() {
    let db = Db::new("copy_savepoint");
    let manager = shared_manager(&db);
    within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1000, 'kept')", &[])
            .expect("insert");
        let mut sp = tx.savepoint().expect("savepoint");
        let mut writer = sp
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 50).as_bytes())
            .expect("write");
        assert_eq!(writer.finish().expect("finish"), 50);
        sp.rollback().expect("rollback to savepoint");
        tx.commit().expect("commit");
    });
    assert_eq!(db.item_ids(), [1000]);
}

#[test]
fn a_killed_backend_mid_copy_loses_the_connection_and_stores_nothing() {
    let db = Db::new("copy_killed");
    let manager = shared_manager(&db);
    let admin_dsn = db.dsn.clone();
    let (written, finished) = within_a_minute(move || {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        let mut writer = tx
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer
            .write_all(text_rows(1, 1000).as_bytes())
            .expect("write");
        writer.flush().expect("sent");
        let mut admin = postgres::Client::connect(&admin_dsn, postgres::NoTls).expect("admin");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .expect("terminate");
        // Writes may still be taken by the socket; the end cannot succeed.
        let mut written = Ok(());
        for _ in 0..200 {
            written = writer.write_all(text_rows(2000, 1000).as_bytes());
            if written.is_err() {
                break;
            }
        }
        let finished = writer.finish().map(drop);
        drop(tx);
        (written.map_err(|e| e.to_string()), finished)
    });
    assert!(finished.is_err(), "{finished:?} (write: {written:?})");
    assert!(db.item_ids().is_empty());
    let mut guard = manager.lock().expect("reconnects");
    assert_eq!(
        guard
            .query_one("SELECT 1", &[])
            .expect("a new connection")
            .get::<_, i32>(0),
        1
    );
}

#[test]
fn without_a_statement_cache_a_guards_copy_runs_in_a_block_of_its_own_and_leaves_nothing_named() {
    let db = Db::new("copy_unnamed_guard");
    let manager: &'static ManagedConnection = Box::leak(Box::new(
        ManagedConnection::builder(&db.dsn)
            .statement_cache(false)
            .build()
            .expect("build"),
    ));
    within_a_minute(move || {
        let mut guard = manager.lock().expect("lock");
        let mut writer = guard
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer.write_all(b"1\tone\n2\ttwo\n").expect("write");
        assert_eq!(writer.finish().expect("finish"), 2);
        assert_eq!(guard.status(), TransactionStatus::Idle, "committed");

        let mut writer = guard
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer.write_all(b"3\tthree\nbad\trow\n").expect("buffered");
        let e = writer.finish().expect_err("a bad row");
        assert_eq!(
            e.code(),
            Some(&pgtx::SqlState::INVALID_TEXT_REPRESENTATION),
            "{e}"
        );
        assert_eq!(guard.status(), TransactionStatus::Idle, "rolled back");

        let mut writer = guard
            .copy_in("COPY items (id, note) FROM STDIN")
            .expect("copy_in");
        writer.write_all(b"4\tfour\n").expect("write");
        writer.flush().expect("sent");
        drop(writer);
        assert_eq!(guard.status(), TransactionStatus::Idle, "rolled back");

        let mut csv = String::new();
        guard
            .copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT (FORMAT csv)")
            .expect("copy_out")
            .read_to_string(&mut csv)
            .expect("read");
        assert_eq!(csv, "1\n2\n");
        let named: i64 = guard
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .expect("ask")
            .get(0);
        assert_eq!(named, 0, "tokio-postgres' COPY statements were closed");
    });
    assert_eq!(db.item_ids(), [1, 2]);
    assert_eq!(db.open_transactions(), 0);
}

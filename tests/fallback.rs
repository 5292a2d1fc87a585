//! The runtime fallback: what the compiler cannot see (a dropped, panicked
//! or forgotten transaction) is rolled back, reported, and never inherited.
//! Every test proves the data state from a second connection.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use common::logger;
use pgtx::{Error, ManagedConnection, TransactionStatus, UNFINISHED_TRANSACTION};

/// Lines the fallback logged for this test's database.
fn reports(db: &Db) -> Vec<String> {
    logger::capture()
        .lines_containing(&db.name)
        .into_iter()
        .filter(|l| l.contains(UNFINISHED_TRANSACTION))
        .collect()
}

fn insert_then_fail_early(manager: &ManagedConnection) -> Result<(), Error> {
    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO items VALUES (1, 'early return')", &[])?;
    tx.execute("INSERT INTO missing_table VALUES (1)", &[])?; // fails: `?` drops `tx`
    tx.commit()?.release();
    Ok(())
}

#[test]
fn a_tx_dropped_by_an_early_return_is_rolled_back_and_reported() {
    logger::capture();
    let db = Db::new("dropped_early_return");
    let manager = db.manager();
    let err = insert_then_fail_early(&manager).expect_err("the second insert fails");
    assert!(err.as_db_error().is_some(), "{err:?}");
    assert!(db.item_ids().is_empty(), "the first insert was rolled back");
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(manager.unfinished_transactions(), 1);
    let lines = reports(&db);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ERROR"), "{lines:?}");
    // The connection is free and clean for the next holder.
    drop(
        manager
            .lock()
            .expect("free")
            .begin()
            .expect("begin")
            .rollback()
            .expect("rb"),
    );
}

/// The seed's "Dealing with Uncommitted Transactions": leaving without
/// commit or rollback is rolled back and reported with the seed's message.
#[test]
fn seed_uncommitted_transaction_is_rolled_back_with_the_seed_message() {
    logger::capture();
    let db = Db::new("seed_uncommitted");
    let manager = db.manager();
    {
        let mut tx = manager.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (1, 'left open')", &[])
            .expect("insert");
        let _: i32 = tx.query_one("SELECT 1", &[]).expect("select").get(0);
    }
    assert!(db.item_ids().is_empty());
    assert_eq!(manager.unfinished_transactions(), 1);
    let reports = reports(&db);
    assert_eq!(reports.len(), 1);
    assert!(
        reports[0]
            .contains("Did not commit or rollback open transaction before releasing connection."),
        "the seed's words: {reports:?}"
    );
}

#[test]
fn a_panic_in_the_closure_rolls_back_propagates_and_leaves_the_connection_idle() {
    logger::capture();
    let db = Db::new("panic_in_closure");
    let manager = db.manager();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'panicked')", &[])?;
            assert_eq!(manager.status(), TransactionStatus::InTransaction);
            panic!("NotImplementedError");
            #[allow(unreachable_code)]
            tx.commit()
        })
    }));
    let payload = outcome.expect_err("the panic keeps propagating");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"NotImplementedError"));
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(reports(&db).len(), 1);
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'after')", &[])?;
            tx.commit()
        })
        .expect("the next transaction works");
    assert_eq!(db.item_ids(), [2]);
}

#[test]
fn a_panic_in_one_of_sixteen_threads_rolls_back_only_its_own_work() {
    let db = Db::new("panic_one_of_sixteen");
    let manager = db.manager();
    const PER_THREAD: i32 = 20;
    let panicked = AtomicUsize::new(0);
    thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let manager = &manager;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        manager
                            .transaction(|mut tx| {
                                tx.execute(
                                    "INSERT INTO items VALUES ($1, 'x')",
                                    &[&(t * 1000 + i)],
                                )?;
                                if t == 7 && i == PER_THREAD / 2 {
                                    panic!("thread 7 fails mid-transaction");
                                }
                                tx.commit()
                            })
                            .expect("commit");
                    }
                })
            })
            .collect();
        for handle in handles {
            if handle.join().is_err() {
                panicked.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    assert_eq!(panicked.load(Ordering::Relaxed), 1);
    let ids = db.item_ids();
    // 15 threads did everything; thread 7 committed its first PER_THREAD/2.
    assert_eq!(ids.len() as i32, 15 * PER_THREAD + PER_THREAD / 2);
    assert!(
        !ids.contains(&(7000 + PER_THREAD / 2)),
        "the panicked insert is gone"
    );
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(db.open_transactions(), 0);
}

/// How long a hold may run nothing before it counts as forgotten, here:
/// short for the tests, long enough that no test's live hold is ever idle
/// that long by accident.
const ABANDON_AFTER: Duration = Duration::from_secs(1);

/// A manager whose holds count as forgotten after [`ABANDON_AFTER`].
fn quick_to_abandon(db: &Db) -> ManagedConnection {
    ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(ABANDON_AFTER))
        .build()
        .expect("settings")
}

#[test]
fn a_forgotten_tx_is_refused_to_its_own_thread_then_taken_over_after_abandon_after() {
    logger::capture();
    let db = Db::new("forget_same_thread");
    let manager = quick_to_abandon(&db);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(tx);
    assert_eq!(manager.status(), TransactionStatus::InTransaction);

    // At once: the earlier hold may be alive, so it is neither waited for
    // nor taken over.
    let started = Instant::now();
    assert!(matches!(manager.lock(), Err(Error::Reentrant)));
    assert!(matches!(manager.try_lock(), Err(Error::Reentrant)));
    assert_eq!(db.open_transactions(), 1, "the hold is untouched");
    assert_eq!(manager.unfinished_transactions(), 0);

    let mut guard = common::take_over(|| manager.lock());
    assert!(
        started.elapsed() >= ABANDON_AFTER / 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(guard.status(), TransactionStatus::Idle, "not inherited");
    let seen: i64 = guard
        .query_one("SELECT count(*) FROM items", &[])
        .expect("count")
        .get(0);
    assert_eq!(seen, 0, "the new holder does not see the forgotten insert");
    drop(guard);
    assert!(db.item_ids().is_empty());
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(reports(&db).len(), 1);
}

#[test]
fn a_tx_forgotten_on_a_thread_that_exits_is_rolled_back_by_the_next_thread() {
    let db = Db::new("forget_thread_exit");
    let manager = db.manager();
    thread::scope(|s| {
        s.spawn(|| {
            let mut tx = manager.lock().expect("lock").begin().expect("begin");
            tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
                .expect("insert");
            std::mem::forget(tx);
        });
    });
    let started = Instant::now();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'next thread')", &[])?;
            tx.commit()
        })
        .expect("taken over");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting for an exited thread"
    );
    assert_eq!(db.item_ids(), [2]);
    assert_eq!(manager.unfinished_transactions(), 1);
}

/// The holder is alive but will never come back (it waits for the other
/// thread): after `abandon_after` the waiter rolls it back and takes over.
#[test]
fn a_tx_forgotten_on_a_live_thread_is_taken_over_after_abandon_after() {
    let db = Db::new("forget_live_thread");
    let manager = ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(Duration::from_millis(200)))
        .build()
        .expect("settings");
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(tx);
    thread::scope(|s| {
        s.spawn(|| {
            manager
                .transaction(|mut tx| {
                    tx.execute("INSERT INTO items VALUES (2, 'other thread')", &[])?;
                    tx.commit()
                })
                .expect("taken over, no hang");
        });
    });
    assert_eq!(db.item_ids(), [2]);
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_revoked_tx_fails_safely_and_its_commit_saves_nothing() {
    let db = Db::new("revoked_tx");
    let manager = quick_to_abandon(&db);
    let mut stale = manager.lock().expect("lock").begin().expect("begin");
    stale
        .execute("INSERT INTO items VALUES (1, 'stale')", &[])
        .expect("insert");
    // Idle past abandon_after, the earlier holder is taken over.
    let mut guard = common::take_over(|| manager.lock());
    guard
        .execute("INSERT INTO items VALUES (2, 'new holder')", &[])
        .expect("autocommit");
    assert!(matches!(
        stale.execute("INSERT INTO items VALUES (3, 'x')", &[]),
        Err(Error::LeaseRevoked)
    ));
    assert!(matches!(stale.commit(), Err(Error::LeaseRevoked)));
    // The revoked value's drop did not release the new holder's lease.
    thread::scope(|s| {
        s.spawn(|| {
            assert!(matches!(manager.try_lock(), Err(Error::WouldBlock)));
        });
    });
    drop(guard);
    assert_eq!(db.item_ids(), [2]);
    assert_eq!(manager.unfinished_transactions(), 1);
}

#[test]
fn a_forgotten_guard_without_abandon_after_times_out_instead_of_hanging() {
    let db = Db::new("forgotten_guard_timeout");
    let manager = ManagedConnection::builder(&db.dsn)
        .abandon_after(None)
        .build()
        .expect("settings");
    std::mem::forget(manager.lock().expect("lock"));
    thread::scope(|s| {
        s.spawn(|| {
            let started = Instant::now();
            let err = manager
                .lock_timeout(Duration::from_millis(200))
                .expect_err("held by a live thread");
            assert!(matches!(err, Error::LockTimeout(d) if d == Duration::from_millis(200)));
            assert!(started.elapsed() >= Duration::from_millis(200));
        });
    });
    // Never taken over on a live thread: the thread itself is refused.
    assert!(matches!(manager.lock(), Err(Error::Reentrant)));
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn a_closure_that_forgets_its_tx_and_fails_still_rolls_back() {
    let db = Db::new("closure_forgets");
    let manager = db.manager();
    #[derive(Debug)]
    enum AppError {
        GaveUp,
        Db(#[allow(dead_code)] Error), // shown through Debug
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> Self {
            AppError::Db(e)
        }
    }
    let result: Result<(), AppError> = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'forgotten in closure')", &[])?;
        std::mem::forget(tx);
        Err(AppError::GaveUp)
    });
    assert!(matches!(result, Err(AppError::GaveUp)), "{result:?}");
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    // A closure that returns Err gets its own error back; that is not reported.
    assert_eq!(manager.unfinished_transactions(), 0);
    assert_eq!(manager.status(), TransactionStatus::Idle);
    thread::scope(|s| {
        s.spawn(|| drop(manager.try_lock().expect("released by the scope")));
    });
}

#[test]
fn dropping_the_manager_rolls_back_a_forgotten_transaction_and_ends_the_session() {
    logger::capture();
    let db = Db::new("manager_dropped");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(tx);
    drop(manager);
    assert!(db.item_ids().is_empty());
    assert_eq!(reports(&db).len(), 1);
    assert!(
        eventually(Duration::from_secs(5), || db.backends().is_empty()),
        "the session outlived the manager"
    );
}

/// The one report for `db` names `line` of this file as where its
/// transaction was begun (issue 18, item 14).
fn assert_reported_as_begun_at(db: &Db, line: u32) {
    let lines = reports(db);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let at = format!("; begun at {}:{line}:", file!());
    assert!(lines[0].contains(&at), "expected {at:?} in {lines:?}");
}

#[test]
fn the_report_of_a_dropped_tx_names_the_begin_call() {
    logger::capture();
    let db = Db::new("begun_at_dropped");
    let manager = db.manager();
    let guard = manager.lock().expect("lock");
    let begun = line!() + 1;
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'dropped')", &[])
        .expect("insert");
    drop(tx);
    assert!(db.item_ids().is_empty());
    assert_reported_as_begun_at(&db, begun);
}

#[test]
fn the_report_of_a_panicked_tx_names_the_begin_call() {
    logger::capture();
    let db = Db::new("begun_at_panicked");
    let manager = db.manager();
    let guard = manager.lock().expect("lock");
    let begun = line!() + 1;
    let tx = guard.begin_with(pgtx::TxOptions::new()).expect("begin");
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let mut tx = tx;
        tx.execute("INSERT INTO items VALUES (1, 'panicked')", &[])
            .expect("insert");
        panic!("unwinds the open transaction");
    }));
    assert!(outcome.is_err());
    assert!(db.item_ids().is_empty());
    assert_reported_as_begun_at(&db, begun);
}

#[test]
fn the_report_of_a_panicked_closure_names_the_transaction_call() {
    logger::capture();
    let db = Db::new("begun_at_closure");
    let manager = db.manager();
    let begun = line!() + 2;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'panicked')", &[])?;
            panic!("unwinds the closure");
            #[allow(unreachable_code)]
            tx.commit()
        })
    }));
    assert!(outcome.is_err());
    assert!(db.item_ids().is_empty());
    assert_reported_as_begun_at(&db, begun);
}

#[test]
fn the_report_of_a_forgotten_tx_taken_over_names_the_begin_call() {
    logger::capture();
    let db = Db::new("begun_at_forgotten");
    let manager = quick_to_abandon(&db);
    let guard = manager.lock().expect("lock");
    let begun = line!() + 1;
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(tx);
    // The next acquirer (this thread, once the hold looks forgotten) takes
    // it over and reports.
    drop(common::take_over(|| manager.lock()));
    assert!(db.item_ids().is_empty());
    assert_reported_as_begun_at(&db, begun);
    // The next holder's report is about its own transaction, not the old one.
    drop(manager.lock().expect("lock").begin().expect("begin"));
    let lines = reports(&db);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(!lines[1].contains(&format!(":{begun}:")), "{lines:?}");
}

//! One holder at a time: waiting, timeouts, fairness, and the status that
//! any thread can read without waiting.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::fixtures::Db;
use pgtx::{Error, ManagedConnection, TransactionStatus};

#[test]
fn sixteen_threads_hammering_a_counter_lose_no_increment() {
    let db = Db::new("hammer");
    let manager = db.manager();
    let committed = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..50 {
                    let result = manager.transaction(|mut tx| {
                        tx.execute("UPDATE counter SET n = n + 1", &[])?;
                        tx.commit()
                    });
                    if result.is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let committed = committed.load(Ordering::Relaxed);
    assert_eq!(committed, 16 * 50, "every transaction commits");
    assert_eq!(db.counter(), committed as i64);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn try_lock_and_lock_timeout_give_up_while_another_thread_holds_it() {
    let db = Db::new("try_lock");
    let manager = db.manager();
    let guard = manager.lock().expect("lock");
    thread::scope(|s| {
        s.spawn(|| {
            assert!(matches!(manager.try_lock(), Err(Error::WouldBlock)));
            let started = Instant::now();
            let timeout = Duration::from_millis(150);
            assert!(
                matches!(manager.lock_timeout(timeout), Err(Error::LockTimeout(d)) if d == timeout)
            );
            assert!(started.elapsed() >= timeout);
        });
    });
    drop(guard);
    thread::scope(|s| {
        s.spawn(|| drop(manager.try_lock().expect("free after release")));
    });
}

#[test]
fn a_waiter_gets_the_connection_as_soon_as_the_holder_commits() {
    let db = Db::new("handoff");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'first')", &[])
        .expect("insert");
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut guard = manager
                .lock_timeout(Duration::from_secs(10))
                .expect("granted after the commit");
            // The waiter sees the committed row: it got the connection after COMMIT.
            let n: i64 = guard
                .query_one("SELECT count(*) FROM items", &[])
                .expect("count")
                .get(0);
            n
        });
        thread::sleep(Duration::from_millis(50));
        tx.commit().expect("commit").release();
        assert_eq!(waiter.join().expect("no panic"), 1);
    });
}

#[test]
fn the_status_is_readable_while_another_thread_holds_the_connection() {
    let db = Db::new("status_lock_free");
    let manager = db.manager();
    let (to_holder, holder_inbox) = mpsc::channel::<()>();
    let (to_main, main_inbox) = mpsc::channel::<()>();
    let manager = &manager;
    thread::scope(|s| {
        s.spawn(move || {
            let mut tx = manager.lock().expect("lock").begin().expect("begin");
            tx.execute("SELECT 1", &[]).expect("select");
            to_main.send(()).expect("main alive");
            holder_inbox.recv().expect("told to finish");
            tx.rollback().expect("rollback");
        });
        main_inbox.recv().expect("holder began");
        // These return at once although the holder keeps the connection.
        let started = Instant::now();
        assert_eq!(manager.status(), TransactionStatus::InTransaction);
        assert!(!manager.is_closed());
        assert!(
            manager.to_string().ends_with("(in transaction)>"),
            "{manager}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        to_holder.send(()).expect("holder alive");
    });
    assert_eq!(manager.status(), TransactionStatus::Idle);
}

#[test]
fn no_thread_starves_among_sixteen() {
    let db = Db::new("no_starvation");
    let manager = db.manager();
    let per_thread: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
    let stop = Instant::now() + Duration::from_millis(1500);
    thread::scope(|s| {
        for count in &per_thread {
            let manager = &manager;
            s.spawn(move || {
                while Instant::now() < stop {
                    manager
                        .transaction(|mut tx| {
                            tx.execute("UPDATE counter SET n = n + 1", &[])?;
                            tx.commit()
                        })
                        .expect("commit");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let counts: Vec<u64> = per_thread
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = counts.iter().sum();
    assert!(
        counts.iter().all(|&c| c > 0),
        "a thread starved: {counts:?}"
    );
    // Fair within a factor: no thread got less than a tenth of its share.
    let share = total / 16;
    assert!(
        counts.iter().all(|&c| c * 10 >= share),
        "unfair distribution: {counts:?}"
    );
    assert_eq!(db.counter(), total as i64);
}

#[test]
fn many_threads_each_see_their_own_transaction_only() {
    let db = Db::new("isolation_between_holders");
    let manager = db.manager();
    thread::scope(|s| {
        for t in 0..8_i32 {
            let manager = &manager;
            s.spawn(move || {
                for i in 0..10 {
                    manager
                        .transaction(|mut tx| {
                            let id = t * 100 + i;
                            tx.execute("INSERT INTO items VALUES ($1, 'x')", &[&id])?;
                            // Only this thread's own earlier commits (even i) and
                            // this insert are visible: never another holder's
                            // uncommitted or rolled-back rows.
                            let visible: i64 = tx
                                .query_one("SELECT count(*) FROM items WHERE id / 100 = $1", &[&t])?
                                .get(0);
                            // Committed earlier: the even steps before i.
                            let expected = i64::from((i + 1) / 2) + 1;
                            assert_eq!(visible, expected, "thread {t}, step {i}");
                            if i % 2 == 0 {
                                tx.commit()
                            } else {
                                tx.rollback()
                            }
                        })
                        .expect("finish");
                }
            });
        }
    });
    let ids = db.item_ids();
    assert_eq!(ids.len(), 8 * 5);
    assert!(ids.iter().all(|id| id % 2 == 0));
}

#[test]
fn asking_again_inside_a_transaction_scope_is_refused_and_the_transaction_goes_on() {
    let db = Db::new("reentrant_in_scope");
    let manager = db.manager();
    let started = Instant::now();
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'before')", &[])?;
            assert!(matches!(manager.lock(), Err(Error::Reentrant)));
            assert!(matches!(manager.try_lock(), Err(Error::Reentrant)));
            assert!(matches!(
                manager.lock_timeout(Duration::from_secs(5)),
                Err(Error::Reentrant)
            ));
            assert!(matches!(manager.close(), Err(Error::Reentrant)));
            let nested: Result<(), Error> = manager.transaction(|tx| tx.commit());
            assert!(matches!(nested, Err(Error::Reentrant)), "{nested:?}");
            // Untouched: neither revoked nor rolled back.
            tx.execute("INSERT INTO items VALUES (2, 'after')", &[])?;
            assert_eq!(tx.status(), pgtx::TransactionStatus::InTransaction);
            tx.commit()
        })
        .expect("the transaction commits");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after a wait"
    );
    assert_eq!(db.item_ids(), vec![1, 2]);
    assert_eq!(manager.unfinished_transactions(), 0);
    // Another thread still waits for the scope as usual (not refused).
    manager
        .transaction(|mut tx| {
            thread::scope(|s| {
                s.spawn(|| {
                    assert!(matches!(manager.try_lock(), Err(Error::WouldBlock)));
                });
            });
            tx.execute("INSERT INTO items VALUES (3, 'third')", &[])?;
            tx.commit()
        })
        .expect("commit");
    assert_eq!(db.item_ids(), vec![1, 2, 3]);
}

#[test]
fn outside_a_scope_asking_again_is_refused_until_the_hold_looks_forgotten() {
    let db = Db::new("takeover_outside_scope");
    // Long enough that the guard below is never idle that long by accident.
    let manager = ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(Duration::from_secs(1)))
        .build()
        .expect("settings");
    let mut guard = manager.lock().expect("lock");
    guard
        .execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .expect("insert");
    // A helper asking with the guard still in scope: refused at once, and
    // the live guard goes on.
    assert!(matches!(manager.lock(), Err(Error::Reentrant)));
    assert!(matches!(
        manager.lock_timeout(Duration::from_secs(5)),
        Err(Error::Reentrant)
    ));
    guard
        .execute("INSERT INTO items VALUES (2, 'still mine')", &[])
        .expect("the guard still holds the connection");
    let mut tx = guard.begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (3, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(tx);
    let mut guard = common::take_over(|| manager.lock());
    guard
        .execute("INSERT INTO items VALUES (4, 'next')", &[])
        .expect("insert");
    drop(guard);
    assert_eq!(db.item_ids(), vec![1, 2, 4]);
    assert_eq!(manager.unfinished_transactions(), 1);
}

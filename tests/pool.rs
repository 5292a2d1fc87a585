//! `Pool`: N managed connections behind one lock; every guarantee of one
//! manager per connection, proved against the server's view.

mod common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use common::server::TestServer;
use pgtx::{Error, ManagedConnection, Pool, TransactionStatus};

fn pool(db: &Db, size: usize) -> Pool {
    Pool::new(&db.dsn, size).expect("settings")
}

#[test]
fn sixteen_threads_on_a_pool_of_four_commit_every_increment_on_four_connections_at_most() {
    let db = Db::new("pool_hammer");
    let pool = pool(&db, 4);
    let ok = AtomicU64::new(0);
    let most = AtomicU64::new(0);
    let running = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        // One observer, on one connection of its own, samples the sessions.
        s.spawn(|| {
            let mut admin = db.admin();
            while running.load(Ordering::SeqCst) {
                let open: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .expect("pg_stat_activity")
                    .get(0);
                most.fetch_max(open.unsigned_abs(), Ordering::SeqCst);
            }
        });
        let workers: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..25 {
                        let outcome = pool.transaction(|mut tx| {
                            tx.execute("UPDATE counter SET n = n + 1", &[])?;
                            tx.commit()
                        });
                        if outcome.is_ok() {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        // Every worker joined before the observer is stopped, and only then
        // a panic is passed on: a failing worker cannot leave it looping.
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        running.store(false, Ordering::SeqCst);
        for outcome in joined {
            outcome.expect("worker");
        }
    });
    assert_eq!(ok.load(Ordering::SeqCst), 400);
    assert_eq!(db.counter(), 400, "the counter equals the Ok commits");
    assert!(
        most.load(Ordering::SeqCst) >= 1,
        "the observer saw the sessions"
    );
    assert!(
        most.load(Ordering::SeqCst) <= 4,
        "{} sessions",
        most.load(Ordering::SeqCst)
    );
    let state = pool.state();
    assert_eq!(state.size, 4);
    assert_eq!(state.in_use, 0);
    assert_eq!(state.waiting, 0);
    assert_eq!(state.unfinished, 0);
}

#[test]
fn n_slow_statements_on_a_pool_of_n_run_side_by_side() {
    let db = Db::new("pool_parallel");
    let pool = pool(&db, 4);
    // Open the four connections first, so only the statements are timed
    // (four guards held at once, from this thread).
    let guards: Vec<_> = (0..4)
        .map(|_| pool.lock_timeout(Duration::from_secs(10)).expect("lock"))
        .collect();
    drop(guards);
    assert_eq!(db.backends().len(), 4);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                pool.lock()
                    .expect("lock")
                    .execute("SELECT pg_sleep(0.2)", &[])
                    .expect("sleep")
            });
        }
    });
    let took = started.elapsed();
    // One after another would take 0.8 s.
    assert!(took < Duration::from_millis(600), "{took:?}");
}

#[test]
fn connections_open_lazily_and_min_idle_opens_some_at_once() {
    let db = Db::new("pool_lazy");
    let pool = pool(&db, 4);
    assert!(db.backends().is_empty(), "building connects nothing");
    for i in 0..10 {
        pool.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, 'x')", &[&i])?;
            tx.commit()
        })
        .expect("insert");
    }
    assert_eq!(
        db.backends().len(),
        1,
        "one thread at a time needs one connection"
    );
    drop(pool);

    let pool = ManagedConnection::builder(&db.dsn)
        .pool(4)
        .min_idle(2)
        .build()
        .expect("build");
    assert_eq!(db.backends().len(), 2);
    assert_eq!(pool.state().idle, 2);
}

#[test]
fn a_pool_connection_killed_by_the_server_is_replaced_before_anyone_gets_it() {
    let db = Db::new("pool_killed");
    let pool = ManagedConnection::builder(&db.dsn)
        .pool(2)
        .min_idle(2)
        .build()
        .expect("build");
    let before = db.backends();
    assert_eq!(before.len(), 2);
    assert_eq!(TestServer::shared().terminate_backends(&db.name), 2);
    // Both connections in use at once, from this thread.
    let guards: Vec<_> = (0..2)
        .map(|i: i32| {
            let mut guard = pool
                .lock_timeout(Duration::from_secs(10))
                .expect("a live connection");
            guard
                .execute("INSERT INTO items VALUES ($1, 'after')", &[&i])
                .expect("the first statement works");
            guard
        })
        .collect();
    drop(guards);
    assert_eq!(db.item_ids(), [0, 1]);
    let after = db.backends();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "new sessions"
    );
    assert_eq!(pool.state().replaced, 2);
}

#[test]
fn a_forgotten_transaction_on_a_pool_is_rolled_back_and_does_not_shrink_it() {
    let db = Db::new("pool_forgotten");
    let pool = pool(&db, 2);
    // Forgotten on a thread that then ends.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut tx = pool.lock().expect("lock").begin().expect("begin");
            tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
                .expect("insert");
            std::mem::forget(tx);
        });
    });
    // Both connections can be held at once again.
    let guards: Vec<_> = (0..2)
        .map(|_| {
            pool.lock_timeout(Duration::from_secs(10))
                .expect("the pool is whole")
        })
        .collect();
    drop(guards);
    assert!(
        db.item_ids().is_empty(),
        "the forgotten insert was rolled back"
    );
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(pool.state().unfinished, 1);

    // Forgotten on this thread while another thread holds the other
    // connection: asking again is refused at once (the hold may be
    // alive), and once it has run nothing for abandon_after it is taken
    // over.
    let abandoning = ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(Duration::from_secs(1)))
        .pool(2)
        .build()
        .expect("build");
    let held = Barrier::new(2);
    // Dropped on a failed assertion too, so the holder never waits for ever.
    let (done, until_done) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (pool, held) = (&abandoning, &held);
        s.spawn(move || {
            let mut other = pool.lock().expect("the other connection");
            held.wait();
            // A live holder: it keeps running statements, so it never
            // looks abandoned.
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(
                until_done.recv_timeout(Duration::from_millis(50)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ) && Instant::now() < deadline
            {
                other.query_one("SELECT 1", &[]).expect("the live holder");
            }
        });
        held.wait();
        let mut tx = pool.lock().expect("lock").begin().expect("begin");
        tx.execute("INSERT INTO items VALUES (2, 'forgotten too')", &[])
            .expect("insert");
        std::mem::forget(tx);
        assert!(matches!(pool.try_lock(), Err(Error::Reentrant)));
        assert!(matches!(
            pool.lock_timeout(Duration::from_secs(30)),
            Err(Error::Reentrant)
        ));
        let mut again = common::take_over(|| pool.try_lock());
        again
            .execute("INSERT INTO items VALUES (3, 'kept')", &[])
            .expect("insert");
        drop(again);
        drop(done);
    });
    assert_eq!(abandoning.state().unfinished, 1);
    assert_eq!(db.item_ids(), [3]);
    assert_eq!(pool.state().unfinished, 1);
}

#[test]
fn waiting_gives_up_on_time_and_try_lock_never_waits() {
    let db = Db::new("pool_timeout");
    let pool = pool(&db, 1);
    let held = Barrier::new(2);
    // Dropped on a failed assertion too, so the holder never waits for ever.
    let (done, until_done) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (pool, held) = (&pool, &held);
        s.spawn(move || {
            let _guard = pool.lock().expect("lock");
            held.wait();
            let _ = until_done.recv_timeout(Duration::from_secs(60));
        });
        held.wait();
        assert!(matches!(pool.try_lock(), Err(Error::WouldBlock)));
        let started = Instant::now();
        let err = pool
            .lock_timeout(Duration::from_millis(100))
            .expect_err("held");
        assert!(
            matches!(err, Error::LockTimeout(d) if d == Duration::from_millis(100)),
            "{err:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(pool.state().in_use, 1);
        drop(done);
    });
    assert!(pool.try_lock().is_ok());
}

#[test]
fn sql_that_leaves_a_block_open_through_a_pool_guard_is_rolled_back_for_the_next_holder() {
    let db = Db::new("pool_block");
    let pool = pool(&db, 1);
    let mut guard = pool.lock().expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'left open')")
        .expect("plain SQL");
    drop(guard);
    let guard = pool.lock().expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    // The server's view, while the next holder has the connection.
    assert_eq!(
        db.open_transactions(),
        0,
        "no block left open on the server"
    );
    drop(guard);
    assert!(db.item_ids().is_empty());
    assert_eq!(pool.state().unfinished, 1);
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let db = Db::new("pool_fifo");
    let pool = pool(&db, 1);
    let order = parking_lot::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // Inside the scope: a failed assertion drops it, freeing the waiters.
        let holder = pool.lock().expect("lock");
        for i in 0..4 {
            let (pool, order) = (&pool, &order);
            s.spawn(move || {
                let guard = pool.lock().expect("lock");
                order.lock().push(i);
                drop(guard);
            });
            // Each joins the line before the next one starts.
            assert!(eventually(Duration::from_secs(5), || pool.state().waiting == i + 1));
        }
        drop(holder);
    });
    assert_eq!(*order.lock(), [0, 1, 2, 3]);
}

fn pool_fair_after(db: &Db, size: usize, fair_after: Duration) -> Pool {
    ManagedConnection::builder(&db.dsn)
        .pool(size)
        .fair_after(fair_after)
        .build()
        .expect("settings")
}

#[test]
fn a_thread_asking_again_takes_its_connection_back_while_the_first_waiter_has_not_waited_fair_after()
 {
    let db = Db::new("pool_barging");
    let pool = pool_fair_after(&db, 1, Duration::from_secs(60));
    std::thread::scope(|s| {
        let holder = pool.lock().expect("lock");
        let waiter = s.spawn(|| pool.lock().map(drop));
        assert!(eventually(Duration::from_secs(5), || pool.state().waiting == 1));
        drop(holder);
        let again = pool
            .try_lock()
            .expect("taken straight back, ahead of the waiter");
        assert_eq!(pool.state().waiting, 1, "the waiter is still in line");
        drop(again);
        // It is not woken by the release; it looks on its own timer.
        waiter.join().expect("no panic").expect("served");
    });
}

#[test]
fn with_fair_after_zero_a_release_goes_to_the_first_waiter() {
    let db = Db::new("pool_strict_fifo");
    let pool = pool_fair_after(&db, 1, Duration::ZERO);
    let (served, was_served) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let holder = pool.lock().expect("lock");
        let pool = &pool;
        s.spawn(move || {
            let guard = pool.lock().expect("lock");
            let _ = served.send(());
            // Held until the main thread has tried to take it.
            std::thread::sleep(Duration::from_millis(100));
            drop(guard);
        });
        assert!(eventually(Duration::from_secs(5), || pool.state().waiting == 1));
        drop(holder);
        assert!(
            matches!(pool.try_lock(), Err(Error::WouldBlock)),
            "the releasing thread cannot take it back ahead of the waiter"
        );
        was_served
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiter got the connection");
    });
    assert!(pool.try_lock().is_ok());
}

#[test]
fn the_first_waiter_is_served_once_it_has_waited_fair_after_though_the_holder_keeps_asking() {
    let db = Db::new("pool_fair_after");
    let fair_after = Duration::from_millis(100);
    let pool = pool_fair_after(&db, 1, fair_after);
    let served = std::sync::atomic::AtomicBool::new(false);
    let takes = AtomicU64::new(0);
    let (held, is_held) = std::sync::mpsc::channel();
    let waited = std::thread::scope(|s| {
        let (pool, served, takes) = (&pool, &served, &takes);
        let looper = s.spawn(move || {
            let holder = pool.lock().expect("lock");
            let _ = held.send(());
            assert!(eventually(Duration::from_secs(5), || pool.state().waiting == 1));
            drop(holder);
            let until = Instant::now() + Duration::from_secs(30);
            while !served.load(Ordering::SeqCst) && Instant::now() < until {
                let guard = pool.lock().expect("lock");
                takes.fetch_add(1, Ordering::SeqCst);
                drop(guard);
            }
        });
        is_held
            .recv_timeout(Duration::from_secs(10))
            .expect("the looper holds the connection");
        let asked = Instant::now();
        let guard = pool.lock().expect("lock");
        let waited = asked.elapsed();
        served.store(true, Ordering::SeqCst);
        drop(guard);
        looper.join().expect("no panic");
        waited
    });
    assert!(
        takes.load(Ordering::SeqCst) > 1,
        "the holder took the connection back while the waiter was in line"
    );
    assert!(waited >= fair_after / 2, "served after {waited:?}");
    assert!(waited < Duration::from_secs(10), "served after {waited:?}");
}

/// A reconnection schedule for tests: first attempt at once, then every 50 ms.
fn quick() -> pgtx::ReconnectPolicy {
    pgtx::ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(50))
        .factor(1.0)
        .max_delay(Duration::from_millis(50))
        .jitter(0.0)
}

fn backend_pid(guard: &mut pgtx::Guard<'_>) -> i32 {
    guard
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

#[test]
fn a_checkout_waits_for_a_held_connection_while_another_is_in_an_outage() {
    let db = Db::new("pool_outage_one");
    let pool = ManagedConnection::builder(&db.dsn)
        .reconnect(quick())
        .pool(2)
        .build()
        .expect("build");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (took, x_taken) = std::sync::mpsc::channel::<i32>();
    let waited = std::thread::scope(|s| {
        // X's holder lets go only once the checkout is seen waiting (or
        // has failed: the channel's sender is dropped on every path).
        let pool = &pool;
        s.spawn(move || {
            let mut x = pool.lock().expect("x");
            let _ = took.send(backend_pid(&mut x));
            let _ = released.recv();
        });
        let x_pid = x_taken.recv().expect("X's holder took it");
        let mut y = pool.lock().expect("y");
        let y_pid = backend_pid(&mut y);
        drop(y);

        db.allow_connections(false);
        TestServer::shared()
            .admin()
            // Waits until the backend is gone: its goodbye has reached
            // Y's socket before the checkout looks at it.
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&y_pid])
            .expect("terminate y");
        let checkout = s.spawn(|| {
            let started = Instant::now();
            let taken = pool
                .lock_timeout(Duration::from_secs(30))
                .map(|mut g| backend_pid(&mut g));
            (taken, started.elapsed())
        });
        let waiting = eventually(Duration::from_secs(20), || {
            pool.state().waiting == 1 || checkout.is_finished()
        });
        drop(release);
        let (taken, took) = checkout.join().expect("checkout thread");
        assert!(waiting, "the checkout never waited");
        assert_eq!(taken.expect("X, once released"), x_pid);
        took
    });
    assert!(waited < Duration::from_secs(30), "{waited:?}");

    // The outage ends: both connections serve again.
    db.allow_connections(true);
    assert_eq!(db.open_transactions(), 0);
    assert!(
        eventually(Duration::from_secs(20), || {
            let a = pool.lock_timeout(Duration::from_secs(5));
            let b = pool.lock_timeout(Duration::from_secs(5));
            a.is_ok() && b.is_ok()
        }),
        "the pool recovered both connections"
    );
}

#[test]
fn a_checkout_fails_at_once_only_when_every_connection_is_down() {
    let db = Db::new("pool_outage_all");
    let pool = ManagedConnection::builder(&db.dsn)
        .reconnect(quick())
        .pool(2)
        .min_idle(2)
        .build()
        .expect("build");
    db.allow_connections(false);
    assert_eq!(TestServer::shared().terminate_backends(&db.name), 2);

    // The checkout that finds them dead starts both outages.
    let first = pool
        .lock_timeout(Duration::from_secs(30))
        .map(drop)
        .expect_err("no connection can be opened");
    assert!(
        matches!(first, Error::Connect(_) | Error::ConnectionDead { .. }),
        "{first:?}"
    );
    let started = Instant::now();
    let err = pool
        .lock_timeout(Duration::from_secs(30))
        .map(drop)
        .expect_err("every connection is down");
    assert!(matches!(err, Error::ConnectionDead { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    db.allow_connections(true);
    assert!(
        eventually(Duration::from_secs(20), || pool.lock().is_ok()),
        "the pool recovered"
    );
}

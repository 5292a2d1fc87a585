//! What the compiler cannot see on the async front: a `Tx` or a guard lost
//! with `mem::forget` (or kept alive and forgotten about) would hold its
//! connection for good. After `abandon_after` with nothing run while
//! others wait, a waiter takes the connection over: the old connection is
//! shut down from outside, so the server rolls back what was open on it,
//! it is reported as an unfinished transaction, and the old holder is
//! refused from then on. A holder whose statement is running is never
//! taken over. Proven from the server's side.

mod common;

use std::mem;
use std::time::{Duration, Instant};

use common::aio::{begun, eventually, outside};
use common::fixtures::Db;
use pgtx::Error;
use pgtx::aio::ManagedConnection;

const ABANDON_AFTER: Duration = Duration::from_millis(300);

fn manager(db: &Db) -> ManagedConnection {
    ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(ABANDON_AFTER))
        .build()
        .expect("settings")
}

/// Whether backend `pid` is still connected.
fn connected(db: &Db, pid: i32) -> bool {
    outside(|| db.backends()).contains(&pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_tx_is_taken_over_after_abandon_after_and_nothing_of_it_is_committed() {
    let db = outside(|| Db::new("aio_forgotten_tx"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'forgotten')", &[])
        .await
        .expect("insert");
    let old_pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let last_used = Instant::now();
    mem::forget(tx);
    assert_eq!(
        outside(|| db.open_transactions()),
        1,
        "left open on the server"
    );

    let mut guard = tokio::time::timeout(Duration::from_secs(20), manager.lock())
        .await
        .expect("the next lock() is not hung")
        .expect("lock");
    // The session's clock counts whole milliseconds.
    assert!(
        last_used.elapsed() >= ABANDON_AFTER - Duration::from_millis(5),
        "taken over only once abandoned: {:?} after its last statement",
        last_used.elapsed()
    );
    assert_eq!(manager.unfinished_transactions(), 1, "reported");
    assert!(
        eventually(|| !connected(&db, old_pid)).await,
        "the forgotten holder's backend ended"
    );
    assert!(outside(|| db.item_ids()).is_empty(), "nothing committed");
    assert_eq!(outside(|| db.open_transactions()), 0);

    // The new holder has a clean connection of its own.
    let pid: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_ne!(pid, old_pid);
    guard
        .execute("INSERT INTO items VALUES (2, 'after')", &[])
        .await
        .expect("insert");
    drop(guard);
    assert_eq!(outside(|| db.item_ids()), [2]);
    // And the manager goes on handing it out.
    let mut again = manager.try_lock().await.expect("free again");
    again.execute("SELECT 1", &[]).await.expect("runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_taken_over_while_alive_is_refused_and_commits_nothing() {
    let db = outside(|| Db::new("aio_revoked_tx"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'idle too long')", &[])
        .await
        .expect("insert");

    // Another task waits, the holder runs nothing: the waiter takes over.
    let mut guard = tokio::time::timeout(Duration::from_secs(20), manager.lock())
        .await
        .expect("not hung")
        .expect("lock");
    guard
        .execute("INSERT INTO items VALUES (2, 'the new holder')", &[])
        .await
        .expect("insert");

    let refused = tx
        .execute("INSERT INTO items VALUES (3, 'late')", &[])
        .await;
    assert!(matches!(refused, Err(Error::LeaseRevoked)), "{refused:?}");
    let commit = tx.commit().await.map(drop);
    assert!(matches!(commit, Err(Error::LeaseRevoked)), "{commit:?}");
    assert_eq!(
        outside(|| db.item_ids()),
        [2],
        "nothing of the old holder's transaction is committed"
    );
    drop(guard);
    assert_eq!(outside(|| db.open_transactions()), 0);
    // One connection left: the old one was let go, not kept.
    assert!(eventually(|| outside(|| db.backends()).len() == 1).await);
    let mut next = manager.try_lock().await.expect("free");
    next.execute("SELECT 1", &[]).await.expect("runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_statement_runs_past_abandon_after_is_not_taken_over() {
    let db = outside(|| Db::new("aio_busy_holder"));
    let manager = std::sync::Arc::new(manager(&db));
    let mut tx = begun(&*manager).await;
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut guard = manager.lock().await?;
            guard.query_one("SELECT count(*) FROM items", &[]).await
        })
    };
    tx.execute("SELECT pg_sleep(1)", &[])
        .await
        .expect("runs to its end, three times abandon_after");
    tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let counted: i64 = waiter.await.expect("task").expect("waiter").get(0);
    assert_eq!(counted, 1, "the waiter ran after the commit");
    assert_eq!(manager.unfinished_transactions(), 0);
    assert_eq!(outside(|| db.item_ids()), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_pool_guard_is_taken_over_and_the_pool_keeps_its_size() {
    let db = outside(|| Db::new("aio_forgotten_pool"));
    let pool = ManagedConnection::builder(&db.dsn)
        .abandon_after(Some(ABANDON_AFTER))
        .pool(1)
        .build()
        .expect("settings");
    let mut guard = pool.lock().await.expect("lock");
    guard
        .batch_execute("BEGIN; INSERT INTO items VALUES (1, 'forgotten block')")
        .await
        .expect("a block opened by hand");
    mem::forget(guard);

    let mut taken = tokio::time::timeout(Duration::from_secs(20), pool.lock())
        .await
        .expect("not hung")
        .expect("lock");
    taken
        .execute("INSERT INTO items VALUES (2, 'after')", &[])
        .await
        .expect("insert");
    assert!(
        matches!(pool.try_lock().await, Err(Error::WouldBlock)),
        "one connection, held"
    );
    drop(taken);
    assert!(eventually(|| outside(|| db.open_transactions()) == 0).await);
    assert_eq!(
        outside(|| db.item_ids()),
        [2],
        "the forgotten block rolled back"
    );
    for _ in 0..3 {
        let mut guard = pool.try_lock().await.expect("back in the pool");
        guard.execute("SELECT 1", &[]).await.expect("runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_abandon_after_a_forgotten_guard_keeps_the_connection_and_waiters_time_out() {
    let db = outside(|| Db::new("aio_never_abandon"));
    let manager = ManagedConnection::builder(&db.dsn)
        .abandon_after(None)
        .build()
        .expect("settings");
    mem::forget(manager.lock().await.expect("lock"));
    let waited = manager.lock_timeout(Duration::from_millis(500)).await;
    assert!(matches!(waited, Err(Error::LockTimeout(_))), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_runs_past_abandon_after_is_not_taken_over() {
    let db = outside(|| Db::new("aio_slow_commit"));
    outside(|| {
        db.admin()
            .batch_execute(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items
                     DEFERRABLE INITIALLY DEFERRED
                     FOR EACH ROW EXECUTE FUNCTION slow_commit();",
            )
            .expect("a trigger that makes COMMIT take a second")
    });
    let manager = std::sync::Arc::new(manager(&db));
    let mut tx = begun(&*manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'slow to commit')", &[])
        .await
        .expect("insert");
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut guard = manager.lock().await?;
            guard.query_one("SELECT count(*) FROM items", &[]).await
        })
    };
    tx.commit()
        .await
        .expect("a COMMIT three times abandon_after long runs to its end");
    let counted: i64 = waiter.await.expect("task").expect("waiter").get(0);
    assert_eq!(counted, 1, "the waiter ran after the commit");
    assert_eq!(manager.unfinished_transactions(), 0);
    assert_eq!(manager.interrupted_commits(), 0);
    assert_eq!(outside(|| db.item_ids()), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_after_a_takeover_is_refused_and_leaves_the_new_holder_alone() {
    let db = outside(|| Db::new("aio_revoked_stream"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    let mut rows = tx
        .query_raw("SELECT generate_series(1, 1000000)", &[])
        .await
        .expect("a stream");
    assert!(rows.try_next().await.expect("a row").is_some());

    // The stream idles; another task takes the connection over.
    let mut guard = tokio::time::timeout(Duration::from_secs(20), manager.lock())
        .await
        .expect("not hung")
        .expect("lock");

    // The old stream hands out what it had read, then is refused.
    let refused = loop {
        match rows.try_next().await {
            Ok(Some(_)) => {}
            other => break other.map(|_| ()),
        }
    };
    assert!(matches!(refused, Err(Error::LeaseRevoked)), "{refused:?}");
    drop(rows);
    drop(tx);

    // The new holder's statement can still be cancelled: the old stream's
    // failure left its cancel target alone.
    let cancel = manager.cancel_handle();
    let cancelled = tokio::join!(guard.execute("SELECT pg_sleep(30)", &[]), async {
        common::aio::until_running(&db, "SELECT pg_sleep(30)").await;
        cancel.cancel().await
    });
    assert!(
        matches!(cancelled.0, Err(Error::Cancelled(_))),
        "{:?}",
        cancelled.0
    );
    assert!(matches!(cancelled.1, Ok(true)), "{:?}", cancelled.1);
    assert_eq!(
        guard
            .query_one("SELECT 1", &[])
            .await
            .expect("usable")
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_looking_for_an_abandoned_holder_keep_their_place_in_line() {
    let db = outside(|| Db::new("aio_abandon_fifo"));
    let pool = std::sync::Arc::new(
        ManagedConnection::builder(&db.dsn)
            .abandon_after(Some(Duration::from_millis(100)))
            .pool(1)
            .build()
            .expect("settings"),
    );
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut holder = pool.lock().await.expect("lock");
    let mut waiters = Vec::new();
    for name in ["first", "second", "third"] {
        let (in_line, order) = (pool.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = in_line.lock().await.expect("lock");
            order.lock().expect("order").push(name);
            drop(guard);
        }));
        let queued = waiters.len();
        assert!(
            eventually(|| pool.state().waiting == queued).await,
            "{name} waits"
        );
    }
    // Busy six times abandon_after: every waiter looks again and again
    // whether the holder is abandoned, and must not lose its place.
    holder
        .execute("SELECT pg_sleep(0.6)", &[])
        .await
        .expect("runs to its end");
    drop(holder);
    for waiter in waiters {
        waiter.await.expect("waiter");
    }
    assert_eq!(*order.lock().expect("order"), ["first", "second", "third"]);
}

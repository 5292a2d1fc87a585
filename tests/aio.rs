//! The async front (`pgtx::aio`): the blocking API's guarantees on tokio,
//! and cancel safety — a future dropped at any `.await` never hands the
//! next holder a dirty connection, and nothing of an unfinished
//! transaction is committed. Proven from the server's side
//! (`pg_stat_activity`, rows counted from another connection).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::aio::{
    XorShift, begun, eventually, in_block, manager, outside, running, until_running,
};
use common::fixtures::Db;
use pgtx::aio::ManagedConnection;
use pgtx::{Error, TransactionStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_and_a_guard_runs_statements_on_their_own() {
    let db = outside(|| Db::new("aio_basics"));
    let manager = manager(&db);
    let seen: i64 = manager
        .transaction(async |mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, 'one')", &[&1_i32])
                .await?;
            tx.execute("INSERT INTO items VALUES ($1, 'two')", &[&2_i32])
                .await?;
            let seen: i64 = tx
                .query_one("SELECT count(*) FROM items", &[])
                .await?
                .get(0);
            tx.commit_returning(seen).await
        })
        .await
        .expect("commit");
    assert_eq!(seen, 2);
    assert_eq!(outside(|| db.item_ids()), [1, 2]);
    let mut guard = manager.lock().await.expect("lock");
    guard
        .execute("INSERT INTO items VALUES (3, 'autocommit')", &[])
        .await
        .expect("insert");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    let notes = guard
        .simple_query("SELECT note FROM items ORDER BY id")
        .await
        .expect("simple");
    assert!(notes.len() >= 3);
    let e = guard.begin().await.expect("begin");
    let tx = e;
    let mut tx = tx;
    let e = tx.execute("COMMIT", &[]).await.expect_err("refused");
    assert!(matches!(e, Error::TransactionControl(_)), "{e:?}");
    tx.rollback().await.expect("rollback");
    assert_eq!(outside(|| db.item_ids()), [1, 2, 3]);
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_that_fails_rolls_back_and_is_not_reported() {
    let db = outside(|| Db::new("aio_closure_err"));
    let manager = manager(&db);
    let failed: Result<(), Error> = manager
        .transaction(async |mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'kept?')", &[])
                .await?;
            tx.execute("INSERT INTO items VALUES (1, 'duplicate')", &[])
                .await?;
            tx.commit().await
        })
        .await;
    assert_eq!(
        failed.expect_err("duplicate key").code(),
        Some(&pgtx::SqlState::UNIQUE_VIOLATION)
    );
    assert!(outside(|| db.item_ids()).is_empty());
    assert_eq!(outside(|| db.open_transactions()), 0);
    assert_eq!(manager.status(), TransactionStatus::Idle);
    assert_eq!(
        manager.unfinished_transactions(),
        0,
        "the error is the report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_is_rolled_back_at_once_and_reported() {
    let db = outside(|| Db::new("aio_dropped"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'dropped')", &[])
        .await
        .expect("insert");
    assert_eq!(
        outside(|| db.open_transactions()),
        1,
        "idle in transaction while held"
    );
    drop(tx);
    // Nobody asks for the connection again: the rollback happens anyway.
    assert!(
        eventually(|| outside(|| db.open_transactions()) == 0).await,
        "rolled back"
    );
    assert!(eventually(|| manager.unfinished_transactions() == 1).await);
    assert!(outside(|| db.item_ids()).is_empty());
    let mut guard = manager.lock().await.expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    guard.execute("SELECT 1", &[]).await.expect("usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_scope_dropped_mid_closure_is_rolled_back_and_reported_once() {
    let db = outside(|| Db::new("aio_scope_dropped"));
    let manager = manager(&db);
    let (inserted_tx, inserted) = tokio::sync::oneshot::channel();
    let scope = manager.transaction(async |mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'abandoned')", &[])
            .await?;
        let _ = inserted_tx.send(());
        // A request that takes too long: the caller's timeout drops the
        // whole scope here.
        std::future::pending::<()>().await;
        tx.commit().await
    });
    tokio::select! {
        _ = scope => panic!("the scope cannot finish"),
        _ = inserted => {}
    }
    assert!(
        eventually(|| outside(|| db.open_transactions()) == 0).await,
        "rolled back without anyone asking for the connection"
    );
    assert!(eventually(|| manager.unfinished_transactions() == 1).await);
    assert!(outside(|| db.item_ids()).is_empty());
    // A scope whose closure returned its error after dropping its Tx is
    // not counted: its error is its report.
    let failed: Result<(), Error> = manager
        .transaction(async |tx| {
            drop(tx);
            Err(Error::WouldBlock)
        })
        .await;
    assert!(matches!(failed, Err(Error::WouldBlock)), "{failed:?}");
    assert_eq!(
        manager.unfinished_transactions(),
        1,
        "reported once, and only the dropped scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_whose_future_is_dropped_is_cancelled_and_its_transaction_can_only_roll_back() {
    let db = outside(|| Db::new("aio_timeout_stmt"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'before')", &[])
        .await
        .expect("insert");
    let slept = tokio::time::timeout(
        Duration::from_millis(200),
        tx.execute("SELECT pg_sleep(30)", &[]),
    )
    .await;
    assert!(slept.is_err(), "timed out");
    assert_eq!(
        running(&db, "SELECT pg_sleep(30)%"),
        1,
        "still running until the Tx is used"
    );
    let started = Instant::now();
    let commit = tx.commit().await.map(drop);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancelled, not waited for"
    );
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert_eq!(running(&db, "SELECT pg_sleep(30)%"), 0);
    assert!(outside(|| db.item_ids()).is_empty(), "nothing committed");
    assert_eq!(outside(|| db.open_transactions()), 0);

    // Through a guard: the next statement waits for nothing.
    let mut guard = manager.lock().await.expect("lock");
    let slept = tokio::time::timeout(
        Duration::from_millis(200),
        guard.execute("SELECT pg_sleep(30)", &[]),
    )
    .await;
    assert!(slept.is_err());
    let started = Instant::now();
    let one: i32 = guard
        .query_one("SELECT 1", &[])
        .await
        .expect("usable")
        .get(0);
    assert_eq!(one, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(running(&db, "SELECT pg_sleep(30)%"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_mid_statement_leaves_the_next_holder_an_idle_connection() {
    let db = outside(|| Db::new("aio_dropped_guard"));
    let manager = Arc::new(manager(&db));
    let task = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            let mut tx = begun(&*manager).await;
            tx.execute("INSERT INTO items VALUES (1, 'never')", &[])
                .await
                .expect("insert");
            tx.execute("SELECT pg_sleep(30)", &[]).await.map(drop)
        })
    };
    assert!(eventually(|| running(&db, "SELECT pg_sleep(30)%") == 1).await);
    task.abort();
    let _ = task.await;
    let mut guard = manager.lock().await.expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    assert!(
        !in_block(&mut guard).await.expect("ask"),
        "the server has no transaction block open"
    );
    drop(guard);
    assert_eq!(running(&db, "SELECT pg_sleep(30)%"), 0, "cancelled");
    assert!(outside(|| db.item_ids()).is_empty());
    assert_eq!(outside(|| db.open_transactions()), 0);
    assert_eq!(manager.unfinished_transactions(), 1, "reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_future_is_dropped_is_drained_and_counted() {
    let db = outside(|| Db::new("aio_commit_dropped"));
    outside(|| {
        db.admin()
            .batch_execute(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON items
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow();",
            )
            .expect("a slow commit")
    });
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'committed?')", &[])
        .await
        .expect("insert");
    let commit = tokio::time::timeout(Duration::from_millis(200), tx.commit()).await;
    assert!(commit.is_err(), "timed out during COMMIT");
    let mut guard = manager.lock().await.expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    guard.execute("SELECT 1", &[]).await.expect("usable");
    drop(guard);
    assert_eq!(manager.interrupted_commits(), 1);
    assert_eq!(outside(|| db.open_transactions()), 0);
    // The recovery's cancel request reached the COMMIT inside its 1 s
    // trigger: the server did not commit.
    assert!(
        outside(|| db.item_ids()).is_empty(),
        "the interrupted COMMIT was cancelled in its trigger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_transactions_cut_short_at_random_leave_nothing_dirty_or_half_committed() {
    const TASKS: u64 = 16;
    const EACH: u64 = 100;
    let db = outside(|| Db::new("aio_hostile"));
    let manager = Arc::new(manager(&db));
    let committed = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let dirty = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (manager, committed, dirty) = (
            Arc::clone(&manager),
            Arc::clone(&committed),
            Arc::clone(&dirty),
        );
        tasks.push(tokio::spawn(async move {
            let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (task + 1));
            for n in 0..EACH {
                let id = i32::try_from(task * EACH + n).expect("small");
                // Every fourth has all the time it needs (so that some
                // commit however loaded the machine is); the rest 0-20 ms.
                let deadline = if n % 4 == 0 {
                    Duration::from_secs(30)
                } else {
                    Duration::from_micros(random.next() % 20_000)
                };
                let work = async {
                    let mut guard = manager.lock().await?;
                    // Every connection handed out is idle, by the server's word.
                    if in_block(&mut guard).await? {
                        dirty.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut tx = guard.begin().await?;
                    tx.execute("INSERT INTO items VALUES ($1, 'hostile')", &[&id])
                        .await?;
                    if random.next().is_multiple_of(4) {
                        tx.execute("SELECT pg_sleep(0.002)", &[]).await?;
                    }
                    tx.commit().await?;
                    Ok::<_, Error>(())
                };
                if let Ok(Ok(())) = tokio::time::timeout(deadline, work).await {
                    committed.lock().expect("set").insert(id);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    // Whatever the last holder left is tidied by the next use.
    let mut guard = manager.lock().await.expect("lock");
    guard.execute("SELECT 1", &[]).await.expect("usable");
    drop(guard);
    assert!(
        eventually(|| outside(|| db.open_transactions()) == 0).await,
        "no idle in transaction"
    );
    assert_eq!(
        dirty.load(Ordering::Relaxed),
        0,
        "a dirty connection was handed out"
    );
    let present: BTreeSet<i32> = outside(|| db.item_ids()).into_iter().collect();
    let committed = committed.lock().expect("set").clone();
    assert!(
        committed.is_subset(&present),
        "a reported commit is missing"
    );
    let unreported = present.difference(&committed).count() as u64;
    assert!(
        unreported <= manager.interrupted_commits(),
        "{unreported} rows committed without a report ({} interrupted COMMITs)",
        manager.interrupted_commits()
    );
    assert!(
        !committed.is_empty(),
        "some transactions had time to commit"
    );
    println!(
        "{} committed and reported, {unreported} committed by interrupted COMMITs, {} interrupted COMMITs, {} fallbacks",
        committed.len(),
        manager.interrupted_commits(),
        manager.unfinished_transactions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_keep_or_undo_their_own_work_and_a_dropped_one_is_rolled_back() {
    let db = outside(|| Db::new("aio_savepoints"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .await
        .expect("insert");
    let mut kept = tx.savepoint().await.expect("savepoint");
    kept.execute("INSERT INTO items VALUES (2, 'released')", &[])
        .await
        .expect("insert");
    let mut inner = kept.savepoint().await.expect("nested");
    inner
        .execute("INSERT INTO items VALUES (3, 'rolled back')", &[])
        .await
        .expect("insert");
    inner.rollback().await.expect("rollback to savepoint");
    kept.release().await.expect("release");
    let mut failed = tx.savepoint().await.expect("savepoint");
    assert!(
        failed
            .execute("INSERT INTO items VALUES (1, 'duplicate')", &[])
            .await
            .is_err()
    );
    failed.rollback().await.expect("recovers the transaction");
    let mut dropped = tx.savepoint().await.expect("savepoint");
    dropped
        .execute("INSERT INTO items VALUES (4, 'dropped')", &[])
        .await
        .expect("insert");
    drop(dropped);
    // The next statement rolls back to it first.
    let seen: i64 = tx
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(seen, 2);
    let scoped: Result<(), Error> = tx
        .savepoint_scope(async |mut sp| {
            sp.execute("INSERT INTO items VALUES (5, 'scope')", &[])
                .await?;
            Err(Error::UnfinishedTransaction)
        })
        .await;
    assert!(scoped.is_err());
    let answer: i32 = tx
        .savepoint_scope(async |mut sp| {
            sp.execute("INSERT INTO items VALUES (6, 'scope kept')", &[])
                .await?;
            Ok::<_, Error>(sp.release().await?.returning(42))
        })
        .await
        .expect("scope");
    assert_eq!(answer, 42);
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()), [1, 2, 6]);
    assert_eq!(
        manager.unfinished_transactions(),
        1,
        "only the dropped savepoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_are_retried_and_every_transfer_commits_once() {
    use pgtx::{IsolationLevel, RetryPolicy, TxOptions};
    let db = outside(|| Db::new("aio_retry"));
    outside(|| {
        db.admin()
            .batch_execute("INSERT INTO items VALUES (1, '0'), (2, '0')")
            .expect("seed")
    });
    let serializable = TxOptions::default().isolation(IsolationLevel::Serializable);
    // Four writers on one row collide often: enough runs that none gives up.
    let policy = Arc::new(
        RetryPolicy::default()
            .max_attempts(100)
            .initial_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(20)),
    );
    let managers: Vec<_> = (0..4).map(|_| Arc::new(manager(&db))).collect();
    let runs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for manager in &managers {
        let (manager, runs, policy) = (Arc::clone(manager), Arc::clone(&runs), Arc::clone(&policy));
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let attempt = manager
                    .transaction_retrying_with(serializable, &policy, async |mut tx| {
                        let note: String = tx
                            .query_one("SELECT note FROM items WHERE id = 1", &[])
                            .await?
                            .get(0);
                        let n: i64 = note.parse().unwrap_or(0) + 1;
                        tx.execute("UPDATE items SET note = $1 WHERE id = 1", &[&n.to_string()])
                            .await?;
                        let attempt = tx.attempt();
                        tx.commit_returning(attempt).await
                    })
                    .await
                    .expect("committed, after retries if need be");
                runs.fetch_add(u64::from(attempt), Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let note: String = outside(|| {
        db.admin()
            .query_one("SELECT note FROM items WHERE id = 1", &[])
            .expect("read")
            .get(0)
    });
    assert_eq!(note, "40", "every increment committed exactly once");
    let runs = runs.load(Ordering::Relaxed);
    assert!(
        runs > 40,
        "no run was refused and retried ({runs} runs): the test proved nothing"
    );
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_killed_while_idle_is_replaced_before_anyone_gets_it() {
    let db = outside(|| Db::new("aio_reconnect"));
    let manager = manager(&db);
    let mut guard = manager.lock().await.expect("lock");
    let first: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    drop(guard);
    assert_eq!(outside(|| db.server.terminate_backends(&db.name)), 1);
    let mut guard = manager.lock().await.expect("a new connection");
    let second: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_ne!(first, second);
    drop(guard);
    // In a transaction whose BEGIN waits for its first statement, too.
    let tx = begun(&manager).await;
    assert_eq!(outside(|| db.server.terminate_backends(&db.name)), 1);
    let mut tx = tx;
    tx.execute("INSERT INTO items VALUES (1, 'after a kill')", &[])
        .await
        .expect("sent on a new connection: nothing of it had reached the server");
    tx.commit().await.expect("commit");
    assert_eq!(outside(|| db.item_ids()), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_interrupted_after_the_server_ran_it_still_leaves_its_transaction_only_to_roll_back()
 {
    let db = outside(|| Db::new("aio_interrupted_ran"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'first')", &[])
        .await
        .expect("insert");
    // Polled once (the INSERT is written, and the server runs it at once),
    // then dropped before its answer is read; on a busy machine the answer
    // may come within that poll, so again with the next row until one is
    // interrupted.
    let mut interrupted = false;
    for id in 2..100_i32 {
        use std::future::Future;
        let params: [&(dyn pgtx::ToSql + Sync); 1] = [&id];
        let mut statement =
            std::pin::pin!(tx.execute("INSERT INTO items VALUES ($1, 'interrupted?')", &params));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(statement.as_mut().poll(cx))).await;
        if polled.is_pending() {
            interrupted = true;
            break;
        }
    }
    assert!(
        interrupted,
        "no statement's answer was still to come after one poll"
    );
    // A later statement that would succeed must not revive the transaction.
    let after = tx
        .execute("INSERT INTO items VALUES (3, 'after')", &[])
        .await;
    assert!(after.is_err(), "{after:?}");
    let commit = tx.commit().await.map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty(), "nothing committed");
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_savepoint_is_rolled_back_before_commit() {
    let db = outside(|| Db::new("aio_forgotten_savepoint"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .await
        .expect("insert");
    let mut sp = tx.savepoint().await.expect("savepoint");
    sp.execute("INSERT INTO items VALUES (2, 'forgotten')", &[])
        .await
        .expect("insert");
    std::mem::forget(sp);
    tx.commit().await.expect("commit");
    assert_eq!(
        outside(|| db.item_ids()),
        [1],
        "the forgotten savepoint's work is gone"
    );
    assert_eq!(manager.unfinished_transactions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_description_interrupted_in_its_own_block_does_not_swallow_the_guards_next_statements() {
    let db = outside(|| Db::new("aio_interrupted_describe"));
    // Without a statement cache, new SQL text outside a transaction is
    // described in a block of its own (BEGIN, Parse, ROLLBACK).
    let manager = ManagedConnection::builder(&db.dsn)
        .statement_cache(false)
        .build()
        .expect("settings");
    let mut guard = manager.lock().await.expect("lock");
    guard.execute("SELECT 1", &[]).await.expect("connected");
    // Polled once (BEGIN and the description are written), then dropped
    // before the answers are read; new text each time, so that every
    // statement is described, until one is left waiting.
    let mut interrupted = false;
    for n in 0..100_i32 {
        use std::future::Future;
        let sql = format!("SELECT $1::int4 + {n}");
        let params: [&(dyn pgtx::ToSql + Sync); 1] = [&n];
        let mut statement = std::pin::pin!(guard.execute(sql.as_str(), &params));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(statement.as_mut().poll(cx))).await;
        if polled.is_pending() {
            interrupted = true;
            break;
        }
    }
    assert!(
        interrupted,
        "no description was still to come after one poll"
    );
    // The guard's next statements run on their own, as a guard's do: kept
    // once they answered, whatever becomes of the guard.
    let inserted = guard
        .execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .await
        .expect("insert");
    assert_eq!(inserted, 1);
    assert!(
        !in_block(&mut guard).await.expect("status"),
        "no block left open"
    );
    drop(guard);
    assert_eq!(
        outside(|| db.item_ids()),
        [1],
        "the insert reported Ok is kept"
    );
    assert_eq!(manager.unfinished_transactions(), 0);
    assert_eq!(outside(|| db.open_transactions()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_cut_off_mid_write_is_still_cancelled_and_the_connection_kept() {
    let db = outside(|| Db::new("aio_large_interrupted"));
    let manager = manager(&db);
    let mut guard = manager.lock().await.expect("lock");
    let pid: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    // 64 MiB does not fit in the socket's buffers: one poll leaves most of
    // the request to be written. A cancel sent then would find the server
    // still reading it and be ignored; the sleep would then outlast the
    // drain's limit (10 s) and the connection be dropped.
    // Prepared first, so that the next run's first write is the request.
    let sql = "SELECT length($1::text), pg_sleep($2)";
    guard
        .execute(sql, &[&"", &0.0_f64])
        .await
        .expect("prepared");
    let big = "x".repeat(64 << 20);
    {
        use std::future::Future;
        let params: [&(dyn pgtx::ToSql + Sync); 2] = [&big, &60.0_f64];
        let mut statement = std::pin::pin!(guard.execute(sql, &params));
        let polled =
            std::future::poll_fn(|cx| std::task::Poll::Ready(statement.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "a 64 MiB request answered in one poll");
    }
    let after: i32 = guard
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the next statement runs")
        .get(0);
    assert_eq!(
        after, pid,
        "the connection was kept: the sleep was cancelled"
    );
    assert_eq!(running(&db, "%pg_sleep($2)%"), 0, "nothing left running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_handle_cancels_the_running_statement_and_only_when_one_runs() {
    let db = outside(|| Db::new("aio_cancel"));
    let manager = manager(&db);
    let cancel = manager.cancel_handle();
    assert!(
        !cancel.cancel().await.expect("nothing to send"),
        "idle: nothing sent"
    );

    let sql = "SELECT pg_sleep(30)";
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'cancelled with its tx')", &[])
        .await
        .expect("insert");
    let (outcome, delivered) = tokio::join!(tx.execute(sql, &[]), async {
        until_running(&db, sql).await;
        cancel.cancel().await
    });
    let err = outcome.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
    assert!(delivered.expect("delivered"), "a statement was running");
    let commit = tx.commit().await.map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty());
    let mut guard = manager.lock().await.expect("lock");
    let one: i32 = guard
        .query_one("SELECT 1", &[])
        .await
        .expect("after")
        .get(0);
    assert_eq!(one, 1);
    assert!(
        !cancel.cancel().await.expect("idle"),
        "not remembered for later"
    );
}

/// The cancel request (held at a proxy) reaches the server only after the
/// statement it was for has ended, and the `cancel` future was dropped
/// long before: the next statement still waits for the request to arrive,
/// so it is not the one the request hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_future_is_dropped_still_arrives_before_the_next_statement_starts() {
    use std::future::Future;
    let db = outside(|| Db::new("aio_cancel_dropped"));
    let proxy = outside(|| db.proxy());
    let manager = ManagedConnection::new(&db.dsn_via(proxy.addr())).expect("settings");
    let cancel = manager.cancel_handle();
    // A CancelRequest: length 16, code 80877102.
    proxy.hold_on(&[&[0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E]]);
    let first = "SELECT pg_sleep(0.3)";
    let next = "SELECT pg_sleep(0.31)";
    let mut guard = manager.lock().await.expect("lock");
    let worker = async {
        let first_outcome = guard.execute(first, &[]).await.map(drop);
        let next_outcome = guard.execute(next, &[]).await.map(drop);
        (first_outcome, next_outcome)
    };
    let canceller = async {
        until_running(&db, first).await;
        {
            let mut cancelling = std::pin::pin!(cancel.cancel());
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(cancelling.as_mut().poll(cx)))
                    .await;
            assert!(polled.is_pending(), "the request is held at the proxy");
        }
        let held = eventually(|| proxy.is_holding()).await;
        let first_ended = eventually(|| running(&db, first) == 0).await;
        // Time for a next statement that did not wait to reach the server.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next_waited = running(&db, next) == 0;
        proxy.release();
        (held, first_ended, next_waited)
    };
    let ((first_outcome, next_outcome), (held, first_ended, next_waited)) =
        tokio::join!(worker, canceller);
    assert!(held, "the cancel request never reached the proxy");
    assert!(first_ended, "the first statement never ended");
    assert!(next_waited, "nothing is sent while a cancel is on its way");
    first_outcome.expect("the first statement had ended before the cancel arrived");
    next_outcome.expect("the next statement is never the one cancelled");
}

/// tokio's cooperative scheduling makes every socket poll return Pending
/// once a task has spent its budget, and outside a worker (in
/// `Runtime::block_on`, where `#[tokio::main]` runs `main`) wakes it at
/// once: a request reading a large answer in one poll must yield then, not
/// go round for ever. (This test's body runs in `block_on`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_read_without_spinning_on_a_spent_budget() {
    // A spinning read never yields, so no timer of this runtime can end
    // the test: a thread of its own does.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("a large result was still being read after 120 s: spinning");
            std::process::exit(101);
        })
    };
    let db = outside(|| Db::new("aio_large_result"));
    let manager = manager(&db);
    let mut tx = begun(&manager).await;
    tx.execute("SELECT 1", &[]).await.expect("begun");
    let mut read = 0;
    {
        let mut rows = tx
            .query_raw("SELECT n FROM generate_series(1, 200000) AS n", &[])
            .await
            .expect("started");
        while rows.try_next().await.expect("row").is_some() {
            read += 1;
        }
    }
    let all = tx
        .query("SELECT n FROM generate_series(1, 200000) AS n", &[])
        .await
        .expect("rows");
    tx.commit().await.expect("commit");
    done.store(true, Ordering::SeqCst);
    watchdog.join().expect("watchdog");
    assert_eq!((read, all.len()), (200_000, 200_000));
}

/// A deferred constraint trigger that makes every COMMIT of an insert into
/// `items` take `seconds`.
fn slow_commits(db: &Db, seconds: f64) {
    outside(|| {
        db.admin()
            .batch_execute(&format!(
                "CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON items
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_check();"
            ))
            .expect("trigger")
    });
}

/// A cancel asked for while a statement ran, which reaches the server (held
/// at a proxy) only after that statement ended: the COMMIT that follows
/// waits for it, so it never lands on COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_still_on_its_way_never_lands_on_the_commit_that_follows() {
    let db = outside(|| Db::new("aio_cancel_commit"));
    slow_commits(&db, 0.5);
    let proxy = outside(|| db.proxy());
    let manager = ManagedConnection::new(&db.dsn_via(proxy.addr())).expect("settings");
    let cancel = manager.cancel_handle();
    // A CancelRequest: length 16, code 80877102.
    proxy.hold_on(&[&[0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E]]);
    let mut tx = begun(&manager).await;
    tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .await
        .expect("insert");
    let sql = "SELECT pg_sleep(0.3)";
    let worker = async {
        tx.execute(sql, &[])
            .await
            .expect("ended before the cancel arrived");
        tx.commit().await.map(drop)
    };
    let canceller = async {
        until_running(&db, sql).await;
        cancel.cancel().await
    };
    let releaser = async {
        assert!(
            eventually(|| proxy.is_holding()).await,
            "the cancel reached the proxy"
        );
        assert!(
            eventually(|| running(&db, sql) == 0).await,
            "the statement ended"
        );
        // Time for a COMMIT that did not wait to reach its slow trigger.
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.release();
    };
    let (committed, delivered, ()) = tokio::join!(worker, canceller, releaser);
    assert!(
        delivered.expect("delivered"),
        "the statement was running when asked"
    );
    committed.expect("COMMIT is never the statement a cancel lands on");
    assert_eq!(outside(|| db.item_ids()), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_dropped_during_its_commit_is_reported_as_an_interrupted_commit_not_a_rollback() {
    let db = outside(|| Db::new("aio_scope_commit_dropped"));
    slow_commits(&db, 0.3);
    let manager = manager(&db);
    let scope = manager.transaction(async |mut tx| {
        tx.execute("INSERT INTO items VALUES (1, 'committed?')", &[])
            .await?;
        tx.commit().await
    });
    let cut = tokio::time::timeout(Duration::from_millis(150), scope).await;
    assert!(cut.is_err(), "dropped during its slow COMMIT");
    assert!(eventually(|| manager.interrupted_commits() == 1).await);
    let committed = outside(|| db.item_ids());
    assert!(committed.len() <= 1);
    assert_eq!(
        manager.unfinished_transactions(),
        0,
        "an interrupted COMMIT is reported with what the server did, not as rolled back"
    );
    assert_eq!(outside(|| db.open_transactions()), 0);
}

//! Pipelines on the async front: K statements and `COMMIT` in one round
//! trip, all or nothing, and cancel-safe — a pipeline's future dropped at
//! any point never commits part of it and never hands the next holder a
//! dirty connection. Proven from the server's side.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::aio::{XorShift, eventually, in_block, manager, outside, running, until_running};
use common::fixtures::Db;
use pgtx::aio::ManagedConnection;
use pgtx::{Error, Pipeline, TransactionStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_commits_in_a_spawned_task_and_hands_back_each_result() {
    let db = outside(|| Db::new("aio_pipe_commit"));
    let manager = Arc::new(manager(&db));
    let task = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move {
            let tx = manager.lock().await?.begin().await?;
            let mut pipeline = Pipeline::new();
            let inserted = pipeline.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')", &[]);
            let read = pipeline.query("SELECT id FROM items ORDER BY id", &[]);
            let (_done, results) = tx.commit_pipeline(&pipeline).await?;
            let ids: Vec<i32> = results
                .get(read)
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            Ok::<_, pgtx::Error>((results.get(inserted).copied(), ids))
        })
    };
    let (inserted, ids) = task.await.expect("not panicked").expect("committed");
    assert_eq!(inserted, Some(2));
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(outside(|| db.item_ids()), vec![1, 2]);
    let mut guard = manager.lock().await.expect("lock");
    assert_eq!(guard.status(), TransactionStatus::Idle);
    assert!(!in_block(&mut guard).await.expect("asked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_commits_nothing_and_a_run_pipeline_aborts_the_transaction() {
    let db = outside(|| Db::new("aio_pipe_fail"));
    let manager = manager(&db);
    let tx = manager
        .lock()
        .await
        .expect("lock")
        .begin()
        .await
        .expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'a')", &[]);
    pipeline.execute("INSERT INTO items VALUES (1, 'again')", &[]);
    pipeline.execute("INSERT INTO items VALUES (2, 'b')", &[]);
    let err = tx
        .commit_pipeline(&pipeline)
        .await
        .map(drop)
        .expect_err("dup");
    assert!(
        matches!(
            err,
            Error::PipelineFailed {
                index: 1,
                skipped: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty());

    let mut tx = manager
        .lock()
        .await
        .expect("lock")
        .begin()
        .await
        .expect("begin");
    let err = tx.run_pipeline(&pipeline).await.expect_err("dup");
    assert!(
        matches!(err, Error::PipelineFailed { index: 1, .. }),
        "{err:?}"
    );
    let commit = tx.commit().await.map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert!(outside(|| db.item_ids()).is_empty());
    let mut guard = manager.lock().await.expect("lock");
    assert!(!in_block(&mut guard).await.expect("asked"));
}

/// The future of `commit_pipeline` dropped while its second statement
/// runs: the statement is cancelled on the server, nothing commits, the
/// interrupted COMMIT is reported, and the next holder starts idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_pipeline_dropped_mid_statement_commits_nothing() {
    let db = outside(|| Db::new("aio_pipe_dropped"));
    let manager = manager(&db);
    let tx = manager
        .lock()
        .await
        .expect("lock")
        .begin()
        .await
        .expect("begin");
    let mut pipeline = Pipeline::new();
    pipeline.execute("INSERT INTO items VALUES (1, 'before')", &[]);
    pipeline.execute("SELECT pg_sleep(30)", &[]);
    pipeline.execute("INSERT INTO items VALUES (2, 'after')", &[]);
    tokio::select! {
        done = tx.commit_pipeline(&pipeline) => panic!("the sleep cannot end: {:?}", done.map(drop)),
        () = until_running(&db, "%pg_sleep(30)%") => {}
    }
    let mut guard = manager.lock().await.expect("lock");
    assert!(
        !in_block(&mut guard).await.expect("asked"),
        "handed out idle"
    );
    drop(guard);
    assert_eq!(running(&db, "%pg_sleep(30)%"), 0, "cancelled on the server");
    assert!(outside(|| db.item_ids()).is_empty());
    assert_eq!(manager.interrupted_commits(), 1, "reported");
}

/// Many tasks run two-row pipelines on a pool, each cut short at a random
/// deadline: every pipeline is all or nothing (both rows or neither),
/// every one reported committed is there, and at most the interrupted
/// COMMITs committed besides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_cut_short_at_random_are_all_or_nothing() {
    let db = outside(|| Db::new("aio_pipe_hostile"));
    let pool = Arc::new(
        ManagedConnection::builder(&db.dsn)
            .pool(4)
            .build()
            .expect("settings"),
    );
    let committed = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    let dirty = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..8_u64 {
        let (pool, committed, dirty) = (pool.clone(), committed.clone(), dirty.clone());
        tasks.push(tokio::spawn(async move {
            let mut random = XorShift(0x9E37_79B9 + task);
            for n in 0..50_i32 {
                let id = i32::try_from(task).expect("small") * 1000 + n;
                let twin = id + 100_000;
                let deadline = Duration::from_micros(random.next() % 4000);
                let work = async {
                    let mut guard = pool.lock().await?;
                    if in_block(&mut guard).await? {
                        dirty.fetch_add(1, Ordering::Relaxed);
                    }
                    let tx = guard.begin().await?;
                    let mut pipeline = Pipeline::new();
                    pipeline.execute("INSERT INTO items VALUES ($1, 'one')", &[&id]);
                    pipeline.execute("INSERT INTO items VALUES ($1, 'twin')", &[&twin]);
                    tx.commit_pipeline(&pipeline).await.map(drop)
                };
                if let Ok(Ok(())) = tokio::time::timeout(deadline, work).await {
                    committed.lock().insert(id);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("not panicked");
    }
    assert_eq!(
        dirty.load(Ordering::Relaxed),
        0,
        "no holder got a block open"
    );
    assert!(eventually(|| outside(|| db.open_transactions()) == 0).await);
    let present: BTreeSet<i32> = outside(|| db.item_ids()).into_iter().collect();
    for id in &present {
        let other = if *id >= 100_000 {
            id - 100_000
        } else {
            id + 100_000
        };
        assert!(present.contains(&other), "half a pipeline committed: {id}");
    }
    let firsts: BTreeSet<i32> = present.iter().copied().filter(|id| *id < 100_000).collect();
    let committed = committed.lock().clone();
    assert!(committed.is_subset(&firsts), "a reported commit is missing");
    let extra = firsts.difference(&committed).count() as u64;
    assert!(
        extra <= pool.interrupted_commits(),
        "{extra} committed unreported, {} interrupted COMMITs",
        pool.interrupted_commits()
    );
}

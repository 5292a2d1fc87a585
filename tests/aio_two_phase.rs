//! `pgtx::aio::TwoPhase`: the blocking front's distributed transaction on
//! tokio — all or nothing across databases, proven from the server's side
//! (rows counted from another connection, `pg_prepared_xacts`,
//! `pg_stat_activity`) — and what a future dropped in the middle leaves:
//! nothing open, and nothing prepared once it is finished.

mod common;

use common::aio::{eventually, outside};
use common::fixtures::Db;
use common::logger;
use pgtx::aio::{ManagedConnection, TwoPhase};
use pgtx::two_phase::{ParticipantId, Recovery};
use pgtx::{Error, UNFINISHED_TRANSACTION};

/// pgtx's prepared transactions left in `db`'s database.
fn prepared(db: &Db) -> i64 {
    outside(|| {
        db.admin()
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .expect("read pg_prepared_xacts")
            .get(0)
    })
}

fn items(db: &Db) -> Vec<i32> {
    outside(|| db.item_ids())
}

fn open_transactions(db: &Db) -> i64 {
    outside(|| db.open_transactions())
}

async fn insert(dtx: &mut TwoPhase, id: ParticipantId, n: i32) -> pgtx::Result<u64> {
    dtx.tx(id)?
        .execute("INSERT INTO items VALUES ($1, 'two-phase')", &[&n])
        .await
}

fn dbs(prefix: &str) -> [Db; 3] {
    outside(|| ["a", "b", "c"].map(|place| Db::new(&format!("aio_tpc_{prefix}_{place}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_three_databases_run_in_a_spawned_task_is_seen_everywhere() {
    let [a, b, c] = dbs("commit");
    let ma = ManagedConnection::new(&a.dsn).expect("settings");
    let pool = ManagedConnection::builder(&b.dsn)
        .pool(2)
        .build()
        .expect("settings");
    let c_dsn = c.dsn.clone();
    // The coordinator moves into a task of its own: `TwoPhase` and its
    // futures are `Send`.
    let task = tokio::spawn(async move {
        let mut dtx = TwoPhase::new();
        let pa = dtx.join(&ma).await?;
        let pb = dtx.join_pool(&pool).await?;
        let pc = dtx.join_dsn(&c_dsn).await?;
        assert_eq!(dtx.join(&ma).await?, pa, "the same manager twice");
        assert_eq!(dtx.join_dsn(&c_dsn).await?, pc, "the same DSN twice");
        for id in [pa, pb, pc] {
            insert(&mut dtx, id, 7).await?;
        }
        dtx.commit().await?;
        // Everything was let go: the manager and the pool's member are free.
        drop(ma.try_lock().await?);
        assert_eq!(pool.state().in_use, 0, "{:?}", pool.state());
        Ok::<(), pgtx::Error>(())
    });
    task.await.expect("not panicked").expect("committed");
    for db in [&a, &b, &c] {
        assert_eq!(items(db), vec![7], "{}", db.name);
        assert_eq!(prepared(db), 0, "{}", db.name);
        assert_eq!(open_transactions(db), 0, "{}", db.name);
    }
    // The DSN's connection was closed with the transaction.
    assert!(eventually(|| outside(|| c.backends().is_empty())).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_fails_the_vote_and_rolls_every_participant_back() {
    let [a, b, c] = dbs("work_error");
    let mut dtx = TwoPhase::new();
    let mut ids = Vec::new();
    for db in [&a, &b, &c] {
        let id = dtx.join_dsn(&db.dsn).await.expect("join");
        insert(&mut dtx, id, 1).await.expect("insert");
        ids.push(id);
    }
    assert!(
        insert(&mut dtx, ids[2], 1).await.is_err(),
        "a duplicate key"
    );
    let err = dtx.commit().await.expect_err("c's work failed");
    assert!(
        matches!(&err, Error::VoteFailed { participant, .. } if participant.contains(&c.name)),
        "{err:?}"
    );
    for db in [&a, &b, &c] {
        assert!(items(db).is_empty(), "{}", db.name);
        assert_eq!(prepared(db), 0, "{}", db.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_participant_commits_in_one_phase_and_a_rollback_leaves_nothing() {
    let [a, b, _] = dbs("one_phase");
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).await.expect("join");
    insert(&mut dtx, pa, 1).await.expect("insert");
    dtx.notify("pgtx_aio_tpc", "one")
        .expect("a valid notification");
    dtx.commit().await.expect("one phase");
    assert_eq!(items(&a), vec![1]);

    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).await.expect("join");
    let pb = dtx.join_dsn(&b.dsn).await.expect("join");
    insert(&mut dtx, pa, 2).await.expect("insert");
    insert(&mut dtx, pb, 2).await.expect("insert");
    dtx.rollback().await.expect("rolled back");
    assert_eq!(items(&a), vec![1]);
    assert!(items(&b).is_empty());
    assert_eq!(prepared(&a) + prepared(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_coordinator_rolls_back_every_participant_and_reports_it() {
    let log = logger::capture();
    let [a, b, _] = dbs("dropped");
    let (ma, mb) = (
        ManagedConnection::new(&a.dsn).expect("settings"),
        ManagedConnection::new(&b.dsn).expect("settings"),
    );
    {
        let mut dtx = TwoPhase::new();
        let pa = dtx.join(&ma).await.expect("join a");
        let pb = dtx.join(&mb).await.expect("join b");
        insert(&mut dtx, pa, 1).await.expect("insert");
        insert(&mut dtx, pb, 1).await.expect("insert");
    }
    // Rolled back at once on a task: no one waits for it.
    assert!(eventually(|| open_transactions(&a) + open_transactions(&b) == 0).await);
    assert!(items(&a).is_empty() && items(&b).is_empty());
    assert!(
        eventually(|| ma.unfinished_transactions() + mb.unfinished_transactions() == 2).await,
        "both reported"
    );
    let reported = log
        .lines_containing(UNFINISHED_TRANSACTION)
        .into_iter()
        .filter(|l| l.contains(&a.name) || l.contains(&b.name))
        .count();
    assert_eq!(reported, 2);
    drop(ma.lock().await.expect("released"));
    drop(mb.lock().await.expect("released"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_joined_whole_refuses_one_more_instead_of_waiting_for_itself() {
    let [a, _, _] = dbs("reentrant");
    let pool = ManagedConnection::builder(&a.dsn)
        .pool(2)
        .build()
        .expect("settings");
    let mut dtx = TwoPhase::new();
    let first = dtx.join_pool(&pool).await.expect("first member");
    let second = dtx.join_pool(&pool).await.expect("second member");
    assert_ne!(first, second, "two members, two participants");
    let third = dtx.join_pool(&pool).await;
    assert!(matches!(third, Err(Error::Reentrant)), "{third:?}");
    insert(&mut dtx, first, 1).await.expect("insert");
    insert(&mut dtx, second, 2).await.expect("insert");
    dtx.commit().await.expect("both members, two phases");
    assert_eq!(items(&a), vec![1, 2]);
    assert_eq!(prepared(&a), 0);
    assert_eq!(pool.state().idle, 2, "both back in the pool");
}

/// A lent transaction forgotten takes its session with it: the next use
/// takes the connection over from outside (the server rolls back) and
/// fails; the commit then fails its vote and rolls the others back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_lent_transaction_is_taken_over_and_nothing_commits() {
    let [a, b, _] = dbs("forgotten");
    let (ma, mb) = (
        ManagedConnection::new(&a.dsn).expect("settings"),
        ManagedConnection::new(&b.dsn).expect("settings"),
    );
    let mut dtx = TwoPhase::new();
    let pa = dtx.join(&ma).await.expect("join a");
    let pb = dtx.join(&mb).await.expect("join b");
    insert(&mut dtx, pa, 1).await.expect("insert");
    insert(&mut dtx, pb, 1).await.expect("insert");
    std::mem::forget(dtx.tx(pb).expect("lent"));
    assert_eq!(open_transactions(&b), 1, "its transaction is still open");
    let again = dtx.tx(pb).map(drop);
    assert!(matches!(again, Err(Error::LeaseRevoked)), "{again:?}");
    // Shut down from outside: the server rolled it back.
    assert!(eventually(|| outside(|| b.backends().is_empty())).await);
    assert_eq!(mb.unfinished_transactions(), 1);
    let err = dtx.commit().await.expect_err("b's work is gone");
    assert!(matches!(err, Error::VoteFailed { .. }), "{err:?}");
    assert!(items(&a).is_empty() && items(&b).is_empty());
    assert_eq!(prepared(&a) + prepared(&b), 0);
    // Both managers are free again, and b's connection is a new one.
    let mut guard = mb.lock().await.expect("b released");
    let one: i32 = guard.query_one("SELECT 1", &[]).await.expect("new").get(0);
    assert_eq!(one, 1);
    drop(guard);
    drop(ma.lock().await.expect("a released"));
}

/// Installs on `db` a trigger that, when the transaction ends (deferred:
/// at `COMMIT` or `PREPARE TRANSACTION`), waits for advisory lock `key`:
/// a test holding the lock stops the transaction right there.
fn stall_at_the_end(db: &Db, key: i64) {
    outside(|| {
        db.admin()
            .batch_execute(&format!(
                "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER stall AFTER INSERT ON items
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stall();"
            ))
            .expect("install the trigger")
    })
}

/// Sessions of `db` waiting for an advisory lock.
fn stalled(db: &Db) -> i64 {
    outside(|| {
        db.admin()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event = 'advisory'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0)
    })
}

/// Waits until a session of `db` waits for an advisory lock.
async fn until_stalled(db: &Db) {
    assert!(
        eventually(|| stalled(db) > 0).await,
        "{} never stalled",
        db.name
    );
}

/// A `commit` dropped during the votes (a voter's `PREPARE` stalled, an
/// earlier voter prepared already): the decider never commits, so what
/// was prepared is rolled back on a task, and nothing is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_during_the_votes_leaves_nothing_prepared_or_open() {
    let [a, b, c] = dbs("dropped_voting");
    stall_at_the_end(&c, 81);
    let mut holder = outside(|| c.admin());
    outside(|| holder.execute("SELECT pg_advisory_lock(81)", &[])).expect("hold the lock");
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).await.expect("join");
    let pb = dtx.join_dsn(&b.dsn).await.expect("join");
    let pc = dtx.join_dsn(&c.dsn).await.expect("join");
    dtx.decide_on(pa).expect("a decides");
    for id in [pa, pb, pc] {
        insert(&mut dtx, id, 1).await.expect("insert");
    }
    let commit = dtx.commit();
    tokio::select! {
        done = commit => panic!("the vote on c cannot end: {done:?}"),
        () = until_stalled(&c) => {}
    }
    // b was prepared before c's vote began; it is rolled back on a task,
    // and c's stalled PREPARE is cancelled.
    assert!(eventually(|| prepared(&b) == 0).await, "b left prepared");
    assert!(
        eventually(|| stalled(&c) == 0).await,
        "c's PREPARE cancelled"
    );
    outside(|| holder.execute("SELECT pg_advisory_unlock(81)", &[])).expect("unlock");
    outside(|| drop(holder));
    for db in [&a, &b, &c] {
        assert!(
            eventually(|| prepared(db) == 0 && open_transactions(db) == 0).await,
            "{}",
            db.name
        );
        assert!(items(db).is_empty(), "{}", db.name);
    }
}

/// A `commit` dropped while the decider's `COMMIT` runs (stalled by its
/// trigger): the decision is unknown to the coordinator, so the prepared
/// voters are left for `Recovery`, which finds no decision (the
/// interrupted `COMMIT` was cancelled) and rolls them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_dropped_while_deciding_is_left_to_recovery_which_settles_it() {
    let [a, b, c] = dbs("dropped_deciding");
    stall_at_the_end(&a, 82);
    let mut holder = outside(|| a.admin());
    outside(|| holder.execute("SELECT pg_advisory_lock(82)", &[])).expect("hold the lock");
    let mut dtx = TwoPhase::new();
    let pa = dtx.join_dsn(&a.dsn).await.expect("join");
    let pb = dtx.join_dsn(&b.dsn).await.expect("join");
    let pc = dtx.join_dsn(&c.dsn).await.expect("join");
    dtx.decide_on(pa).expect("a decides");
    for id in [pa, pb, pc] {
        insert(&mut dtx, id, 1).await.expect("insert");
    }
    let commit = dtx.commit();
    tokio::select! {
        done = commit => panic!("the decider's COMMIT cannot end: {done:?}"),
        () = until_stalled(&a) => {}
    }
    // The interrupted COMMIT is cancelled (before the lock is let go, or
    // it would commit); the voters stay prepared.
    assert!(
        eventually(|| stalled(&a) == 0).await,
        "a's COMMIT cancelled"
    );
    assert!(eventually(|| open_transactions(&a) == 0).await);
    outside(|| holder.execute("SELECT pg_advisory_unlock(82)", &[])).expect("unlock");
    outside(|| drop(holder));
    assert_eq!(prepared(&b) + prepared(&c), 2, "left for recovery");
    let recovered =
        outside(|| Recovery::new([a.dsn.as_str(), b.dsn.as_str(), c.dsn.as_str()]).run())
            .expect("recovery");
    assert_eq!(recovered.rolled_back.len(), 2, "{recovered:?}");
    assert!(recovered.committed.is_empty(), "{recovered:?}");
    for db in [&a, &b, &c] {
        assert_eq!(prepared(db), 0, "{}", db.name);
        assert!(items(db).is_empty(), "{}", db.name);
    }
}

/// A participant's transaction swapped out of its `TxRef` (`mem::swap`
/// through `DerefMut`) cannot be committed alone, and the coordinator can
/// then no longer commit: nothing commits anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_s_transaction_swapped_out_cannot_commit_alone() {
    let [a, b, c] = dbs("swapped");
    let (ma, mc) = (
        ManagedConnection::new(&a.dsn).expect("settings"),
        ManagedConnection::new(&c.dsn).expect("settings"),
    );
    let mut dtx = TwoPhase::new();
    let pa = dtx.join(&ma).await.expect("join a");
    let pb = dtx.join_dsn(&b.dsn).await.expect("join b");
    insert(&mut dtx, pa, 1).await.expect("insert");
    insert(&mut dtx, pb, 1).await.expect("insert");
    let mut other = mc.lock().await.expect("c").begin().await.expect("begin");
    {
        let mut lent = dtx.tx(pa).expect("lent");
        std::mem::swap(&mut *lent, &mut other);
    }
    let alone = other.commit().await.map(drop);
    assert!(
        matches!(&alone, Err(Error::TransactionControl(_))),
        "{alone:?}"
    );
    let err = dtx
        .commit()
        .await
        .expect_err("a is gone from the coordinator");
    assert!(matches!(err, Error::VoteFailed { .. }), "{err:?}");
    for db in [&a, &b, &c] {
        assert!(items(db).is_empty(), "{}", db.name);
        assert_eq!(prepared(db), 0, "{}", db.name);
        assert!(
            eventually(|| open_transactions(db) == 0).await,
            "{}",
            db.name
        );
    }
    // Both managers are whole again.
    drop(ma.lock().await.expect("a released"));
    drop(mc.lock().await.expect("c released"));
}

/// A lent transaction forgotten while another task waits: the waiter
/// takes the connection over after `abandon_after`; the coordinator,
/// dropped later, leaves the waiter's session alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_participant_taken_over_by_a_waiter_is_not_taken_back() {
    let [a, _, _] = dbs("forgotten_waiter");
    let manager = ManagedConnection::builder(&a.dsn)
        .abandon_after(Some(std::time::Duration::from_millis(200)))
        .build()
        .expect("settings");
    let mut dtx = TwoPhase::new();
    let pa = dtx.join(&manager).await.expect("join");
    insert(&mut dtx, pa, 1).await.expect("insert");
    std::mem::forget(dtx.tx(pa).expect("lent"));
    // The waiter takes it over, and works in a transaction of its own.
    let mut tx = manager
        .lock()
        .await
        .expect("taken over")
        .begin()
        .await
        .expect("begin");
    tx.execute("INSERT INTO items VALUES (2, 'waiter')", &[])
        .await
        .expect("insert");
    // The coordinator finds its session gone and must not touch the waiter's.
    assert!(matches!(dtx.tx(pa).map(drop), Err(Error::LeaseRevoked)));
    drop(dtx);
    tx.commit()
        .await
        .expect("the waiter's transaction is intact");
    assert_eq!(items(&a), vec![2]);
    assert!(eventually(|| open_transactions(&a) == 0).await);
    drop(manager.lock().await.expect("free"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_of_another_coordinator_is_refused() {
    let [a, _, _] = dbs("foreign_id");
    let mut first = TwoPhase::new();
    let mut second = TwoPhase::new();
    let id = first.join_dsn(&a.dsn).await.expect("join");
    assert!(matches!(second.tx(id), Err(Error::InvalidParticipant)));
    assert!(matches!(
        second.decide_on(id),
        Err(Error::InvalidParticipant)
    ));
    first.rollback().await.expect("rolled back");
    second.commit().await.expect("nothing to commit");
}

//! `transaction_retrying`: a whole transaction runs again on a
//! serialization failure (40001) or a deadlock (40P01), whatever error type
//! its closure returns; nothing else is retried, and when the runs allowed
//! are used up the error says how many were made.

mod common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::eventually;
use common::fixtures::Db;
use common::proxy::Withhold;
use pgtx::{Error, IsolationLevel, ManagedConnection, RetryPolicy, SqlState, TxOptions};

#[derive(Debug)]
enum AppError {
    Mine,
    // Read through `Debug` when a test fails.
    #[allow(dead_code)]
    Db(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

fn serializable() -> TxOptions {
    TxOptions::new().isolation(IsolationLevel::Serializable)
}

fn quick() -> RetryPolicy {
    RetryPolicy::default().initial_delay(Duration::from_millis(1))
}

/// Two threads, each on a manager of its own, read the counter, meet, and
/// write it back plus one: the second writer is refused with 40001. The
/// first run of each meets at the barrier; retries do not wait for it.
/// Returns each thread's outcome and how many runs it made.
fn collide(db: &Db, retrying: bool) -> Vec<(Result<(), AppError>, usize)> {
    let managers = [db.manager(), db.manager()];
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = managers
            .iter()
            .map(|manager| {
                let barrier = &barrier;
                s.spawn(move || {
                    let runs = AtomicUsize::new(0);
                    let outcome = if retrying {
                        manager.transaction_retrying_with(serializable(), &quick(), |tx| {
                            increment(tx, runs.fetch_add(1, Ordering::SeqCst), barrier)
                        })
                    } else {
                        manager.transaction_with(serializable(), |tx| {
                            increment(tx, runs.fetch_add(1, Ordering::SeqCst), barrier)
                        })
                    };
                    (outcome, runs.load(Ordering::SeqCst))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

/// Reads the counter and writes it back plus one; the first run (`run`
/// 0) waits at `barrier` in between, for the other thread to read too.
fn increment<'s>(
    mut tx: pgtx::Tx<'s, pgtx::Open>,
    run: usize,
    barrier: &Barrier,
) -> Result<pgtx::Tx<'s, pgtx::Done>, AppError> {
    let n: i64 = tx.query_one("SELECT n FROM counter", &[])?.get(0);
    if run == 0 {
        barrier.wait();
    }
    tx.execute("UPDATE counter SET n = $1", &[&(n + 1)])?;
    Ok(tx.commit()?)
}

#[test]
fn a_real_serialization_conflict_commits_both_exactly_once_with_retry() {
    let db = Db::new("retry_conflict");
    let outcomes = collide(&db, true);
    for (outcome, _) in &outcomes {
        assert!(outcome.is_ok(), "{outcomes:?}");
    }
    let runs: Vec<usize> = outcomes.iter().map(|(_, runs)| *runs).collect();
    assert_eq!(
        runs.iter().sum::<usize>(),
        3,
        "one of them ran twice: {runs:?}"
    );
    assert_eq!(db.counter(), 2, "each increment committed exactly once");
}

#[test]
fn the_same_conflict_fails_one_of_them_without_retry() {
    let db = Db::new("retry_none");
    let outcomes = collide(&db, false);
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|(outcome, _)| outcome.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    match refused[0] {
        AppError::Db(e) => assert_eq!(e.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE)),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.counter(), 1);
}

#[test]
fn a_deadlock_is_retried_and_the_next_run_commits() {
    let db = Db::new("retry_deadlock");
    let manager = db.manager();
    let runs = AtomicUsize::new(0);
    let outcome: Result<(), AppError> = manager.transaction_retrying(&quick(), |mut tx| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        tx.execute("INSERT INTO items VALUES ($1, 'run')", &[&(run as i32)])?;
        if run == 0 {
            tx.batch_execute(
                "DO $$ BEGIN RAISE EXCEPTION 'as if' USING ERRCODE = '40P01'; END $$",
            )?;
        }
        Ok(tx.commit()?)
    });
    outcome.expect("the second run commits");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(db.item_ids(), [1], "the first run's insert was rolled back");
}

#[test]
fn runs_that_are_always_refused_give_up_saying_how_many_were_made() {
    let db = Db::new("retry_exhausted");
    let manager = db.manager();
    let runs = AtomicUsize::new(0);
    let outcome: Result<(), Error> =
        manager.transaction_retrying(&quick().max_attempts(3), |mut tx| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            tx.execute("INSERT INTO items VALUES ($1, 'never')", &[&(run as i32)])?;
            // Caught inside the closure, turned into anything: the server's
            // word still counts.
            let refused = tx.batch_execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
            );
            assert!(refused.is_err());
            Err(Error::WouldBlock)
        });
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    match &outcome {
        Err(Error::RetriesExhausted { attempts, last }) => {
            assert_eq!(*attempts, 3);
            assert_eq!(last.code(), &SqlState::T_R_SERIALIZATION_FAILURE);
            assert_eq!(last.message(), "conflict");
        }
        other => panic!("expected RetriesExhausted: {other:?}"),
    }
    let err = outcome.expect_err("exhausted");
    assert!(err.to_string().contains("3 runs"), "{err}");
    assert_eq!(err.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE));
    assert!(db.item_ids().is_empty(), "no run committed");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn other_errors_are_returned_at_once_unchanged() {
    let db = Db::new("retry_other");
    let manager = db.manager();
    let runs = AtomicUsize::new(0);
    let outcome: Result<(), AppError> = manager.transaction_retrying(&quick(), |mut tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        tx.execute("INSERT INTO items VALUES (1, 'a')", &[])?;
        tx.execute("INSERT INTO items VALUES (1, 'a')", &[])?;
        Ok(tx.commit()?)
    });
    match &outcome {
        Err(AppError::Db(e)) => assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a unique violation is not retried"
    );

    // The closure's own error, on a healthy transaction: not retried either.
    let runs = AtomicUsize::new(0);
    let outcome: Result<(), AppError> = manager.transaction_retrying(&quick(), |mut tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        tx.execute("INSERT INTO items VALUES (2, 'b')", &[])?;
        Err(AppError::Mine)
    });
    assert!(matches!(outcome, Err(AppError::Mine)), "{outcome:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(db.item_ids().is_empty());
}

#[test]
fn a_commit_of_unknown_outcome_is_never_retried() {
    let db = Db::new("retry_unknown");
    let (proxy, manager) = db.manager_via_proxy();
    let insert = "INSERT INTO items VALUES ($1, 'maybe')";
    // A warm-up prepares the INSERT and COMMIT, so that below each is one
    // write: the INSERT's (with BEGIN), then COMMIT's.
    manager
        .transaction(|mut tx| {
            tx.execute(insert, &[&1_i32])?;
            tx.commit()
        })
        .expect("warm-up");
    // The id 0x7a7a7a7a shows in the INSERT's write as "zzzz"; the write
    // after it, COMMIT, is held and the link cut: the outcome is unknown.
    let id = 0x7a7a_7a7a_i32;
    proxy.stall_on_next(&[b"zzzz"], Withhold::Request);
    let runs = AtomicUsize::new(0);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            assert!(eventually(Duration::from_secs(10), || proxy.is_stalled()));
            proxy.cut();
            // A wrong retry must find a working proxy (and fail the run
            // count), not hang on a stalled one.
            proxy.resume();
        });
        manager.transaction_retrying(&quick(), |mut tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            tx.execute(insert, &[&id])?;
            tx.commit()
        })
    });
    proxy.resume();
    assert!(
        matches!(outcome, Err(Error::CommitOutcomeUnknown(_))),
        "{outcome:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "it may have committed: never run again"
    );
}

#[test]
fn with_one_attempt_a_refusal_is_reported_as_exhausted_after_one_run() {
    let db = Db::new("retry_once");
    let manager = ManagedConnection::new(&db.dsn).expect("settings");
    let outcome: Result<(), Error> =
        manager.transaction_retrying(&RetryPolicy::default().max_attempts(1), |mut tx| {
            tx.batch_execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")?;
            tx.commit()
        });
    assert!(
        matches!(outcome, Err(Error::RetriesExhausted { attempts: 1, .. })),
        "{outcome:?}"
    );
}

#[test]
fn each_run_knows_which_run_it_is_and_can_hand_the_count_back() {
    let db = Db::new("retry_attempt");
    let manager = db.manager();
    let mut seen = Vec::new();
    let runs = manager
        .transaction_retrying(&quick(), |mut tx| {
            seen.push(tx.attempt());
            if tx.attempt() < 3 {
                tx.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                )?;
            }
            tx.execute("INSERT INTO items VALUES (1, 'third run')", &[])?;
            let runs = tx.attempt();
            tx.commit_returning(runs)
        })
        .expect("the third run commits");
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(runs, 3);
    assert_eq!(db.item_ids(), [1], "one run committed, once");
    // Any other transaction is a first run, whatever came before.
    let first = manager
        .transaction(|tx| {
            let attempt = tx.attempt();
            tx.commit_returning(attempt)
        })
        .expect("transaction");
    assert_eq!(first, 1);
    let tx = manager.lock().expect("lock").begin().expect("begin");
    assert_eq!(tx.attempt(), 1);
    tx.rollback().expect("rollback");
}

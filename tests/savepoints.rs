//! Savepoints as typestate: `release` keeps, `rollback` undoes and
//! recovers, an unfinished savepoint is rolled back and reported, and the
//! closure form ends it whatever the closure did. Outcomes are read from a
//! second connection.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::fixtures::Db;
use common::logger;
use pgtx::{Error, TransactionStatus, UNFINISHED_TRANSACTION};

fn reports(db: &Db) -> usize {
    logger::capture()
        .lines_containing(&db.name)
        .into_iter()
        .filter(|l| l.contains(UNFINISHED_TRANSACTION) && l.contains("only the savepoint"))
        .count()
}

#[test]
fn a_released_savepoint_commits_with_its_transaction() {
    let db = Db::new("sp_release");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES (2, 'sp')", &[])
        .expect("insert");
    sp.release().expect("release");
    assert!(
        db.item_ids().is_empty(),
        "nothing is committed before the tx"
    );
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 2]);
    assert_eq!(manager.unfinished_transactions(), 0);
}

#[test]
fn a_rolled_back_savepoint_undoes_only_its_work_and_recovers_the_transaction() {
    let db = Db::new("sp_rollback");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES (2, 'sp')", &[])
        .expect("insert");
    assert!(
        sp.execute("INSERT INTO items VALUES (2, 'dup')", &[])
            .is_err()
    );
    assert_eq!(sp.status(), TransactionStatus::InError);
    sp.rollback().expect("rollback to the savepoint");
    assert_eq!(tx.status(), TransactionStatus::InTransaction);
    tx.execute("INSERT INTO items VALUES (3, 'after')", &[])
        .expect("the transaction goes on");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 3]);
}

#[test]
fn releasing_a_failed_savepoint_rolls_it_back_and_says_so() {
    let db = Db::new("sp_release_failed");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES (2, 'sp')", &[])
        .expect("insert");
    assert!(sp.execute("SELECT 1/0", &[]).is_err());
    let err = sp.release().expect_err("release of a failed savepoint");
    assert!(matches!(err, Error::TransactionAborted(Some(_))), "{err:?}");
    assert_eq!(err.code(), Some(&pgtx::SqlState::DIVISION_BY_ZERO));
    tx.execute("INSERT INTO items VALUES (3, 'after')", &[])
        .expect("the transaction goes on");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 3]);
}

#[test]
fn nested_savepoints_end_independently() {
    let db = Db::new("sp_nested");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    let mut outer = tx.savepoint().expect("outer");
    outer
        .execute("INSERT INTO items VALUES (2, 'outer')", &[])
        .expect("insert");
    let mut inner = outer.savepoint().expect("inner");
    inner
        .execute("INSERT INTO items VALUES (3, 'inner')", &[])
        .expect("insert");
    inner.rollback().expect("inner rollback");
    outer
        .execute("INSERT INTO items VALUES (4, 'outer again')", &[])
        .expect("insert");
    outer.release().expect("outer release");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 2, 4]);
}

#[test]
fn a_dropped_savepoint_is_rolled_back_and_reported() {
    logger::capture();
    let db = Db::new("sp_dropped");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    {
        let mut sp = tx.savepoint().expect("savepoint");
        sp.execute("INSERT INTO items VALUES (2, 'dropped')", &[])
            .expect("insert");
    }
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(reports(&db), 1);
    tx.execute("INSERT INTO items VALUES (3, 'after')", &[])
        .expect("insert");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 3]);
}

#[test]
fn a_forgotten_savepoint_is_rolled_back_before_its_transaction_goes_on() {
    logger::capture();
    let db = Db::new("sp_forgotten");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES (2, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(sp);
    tx.execute("INSERT INTO items VALUES (3, 'after')", &[])
        .expect("insert");
    assert_eq!(manager.unfinished_transactions(), 1);
    assert_eq!(reports(&db), 1);
    tx.commit().expect("commit");
    assert_eq!(
        db.item_ids(),
        vec![1, 3],
        "the forgotten work never commits"
    );

    // Forgotten, then committed straight away.
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (4, 'tx')", &[])
        .expect("insert");
    let mut sp = tx.savepoint().expect("savepoint");
    sp.execute("INSERT INTO items VALUES (5, 'forgotten')", &[])
        .expect("insert");
    std::mem::forget(sp);
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), vec![1, 3, 4]);
    assert_eq!(manager.unfinished_transactions(), 2);
}

#[test]
fn savepoint_scope_releases_on_ok_and_rolls_back_on_err_without_a_report() {
    logger::capture();
    let db = Db::new("sp_scope");
    let manager = db.manager();
    let kept: i32 = manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])?;
            let n = tx.savepoint_scope(|mut sp| {
                sp.execute("INSERT INTO items VALUES (2, 'scope ok')", &[])?;
                sp.release_returning(2)
            })?;
            let failed: Result<(), Error> = tx.savepoint_scope(|mut sp| {
                sp.execute("INSERT INTO items VALUES (3, 'scope err')", &[])?;
                sp.execute("INSERT INTO items VALUES (3, 'dup')", &[])?;
                sp.release_returning(())
            });
            assert!(failed.is_err(), "the duplicate fails the closure");
            assert_eq!(tx.status(), TransactionStatus::InTransaction);
            tx.execute("INSERT INTO items VALUES (4, 'after')", &[])?;
            tx.commit_returning(n)
        })
        .expect("transaction");
    assert_eq!(kept, 2);
    assert_eq!(db.item_ids(), vec![1, 2, 4]);
    assert_eq!(
        manager.unfinished_transactions(),
        0,
        "an Err is the closure's own report"
    );
    assert_eq!(reports(&db), 0);
}

#[test]
fn a_panic_in_a_savepoint_scope_rolls_everything_back_and_is_reported() {
    logger::capture();
    let db = Db::new("sp_scope_panic");
    let manager = db.manager();
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (1, 'tx')", &[])?;
            tx.savepoint_scope(|mut sp| {
                sp.execute("INSERT INTO items VALUES (2, 'sp')", &[])?;
                panic!("boom inside the savepoint");
                #[allow(unreachable_code)]
                sp.release_returning(())
            })?;
            tx.commit()
        })
    }));
    assert!(unwound.is_err(), "the panic continues");
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(reports(&db), 1, "the savepoint's rollback is reported");
    assert!(
        manager.unfinished_transactions() >= 2,
        "savepoint and transaction"
    );
    // The connection is free and clean.
    let guard = manager.try_lock().expect("free");
    assert_eq!(guard.status(), TransactionStatus::Idle);
}

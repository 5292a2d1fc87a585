//! Portals: a query bound inside a transaction, its rows fetched a batch
//! at a time, ended with the transaction.

mod common;

use common::fixtures::Db;
use pgtx::{Error, ManagedConnection, SqlState};

fn numbers(rows: &[pgtx::Row]) -> Vec<i32> {
    rows.iter().map(|r| r.get(0)).collect()
}

#[test]
fn rows_come_a_batch_at_a_time_and_then_none() {
    let db = Db::new("portal_batches");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let portal = tx
        .bind(
            "SELECT n FROM generate_series(1, $1) n ORDER BY n",
            &[&250_i32],
        )
        .expect("bind");
    assert_eq!(
        numbers(&tx.query_portal(&portal, 100).expect("fetch")),
        (1..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        numbers(&tx.query_portal(&portal, 100).expect("fetch")),
        (101..=200).collect::<Vec<_>>()
    );
    assert_eq!(
        numbers(&tx.query_portal(&portal, 100).expect("fetch")),
        (201..=250).collect::<Vec<_>>()
    );
    assert!(tx.query_portal(&portal, 100).expect("fetch").is_empty());
    // Two at once, and "all that are left".
    let a = tx
        .bind("SELECT n FROM generate_series(1, 5) n", &[])
        .expect("bind a");
    let b = tx
        .bind("SELECT n * 10 FROM generate_series(1, 5) n", &[])
        .expect("bind b");
    assert_eq!(numbers(&tx.query_portal(&a, 2).expect("a")), [1, 2]);
    assert_eq!(numbers(&tx.query_portal(&b, 2).expect("b")), [10, 20]);
    assert_eq!(numbers(&tx.query_portal(&a, 0).expect("a rest")), [3, 4, 5]);
    assert_eq!(
        numbers(&tx.query_portal(&b, -1).expect("b rest")),
        [30, 40, 50]
    );
    tx.commit().expect("commit");
}

#[test]
fn fetching_a_few_rows_of_a_huge_result_does_not_read_the_rest() {
    let db = Db::new("portal_early");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    // Reading all of it would take far longer than this.
    tx.execute("SET LOCAL statement_timeout = '3s'", &[])
        .expect("set");
    // In the select list a set-returning function streams (in FROM the
    // server would compute all of it first).
    let portal = tx
        .bind("SELECT generate_series(1, 1000000000)", &[])
        .expect("bind");
    assert_eq!(
        numbers(&tx.query_portal(&portal, 3).expect("fetch")),
        [1, 2, 3]
    );
    tx.commit()
        .expect("commit: the cursor is closed with the transaction");
}

#[test]
fn a_portal_ends_with_its_transaction_and_later_use_sends_nothing() {
    let db = Db::new("portal_closed");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let portal = tx.bind("SELECT 1", &[]).expect("bind");
    tx.commit().expect("commit");
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    // The next transaction's first portal has the same cursor name.
    let _same_name = tx.bind("SELECT 2", &[]).expect("bind");
    let e = tx.query_portal(&portal, 1).expect_err("closed");
    assert!(matches!(e, Error::PortalClosed), "{e:?}");
    tx.execute("INSERT INTO items VALUES (1, 'after')", &[])
        .expect("the transaction goes on");
    tx.commit().expect("commit");
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn transaction_control_is_refused_before_anything_is_sent() {
    let db = Db::new("portal_control");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'kept')", &[])
        .expect("insert");
    let e = tx.bind("SELECT 1; COMMIT", &[]).expect_err("refused");
    assert!(matches!(e, Error::TransactionControl(_)), "{e:?}");
    tx.commit().expect("the transaction goes on");
    assert_eq!(db.item_ids(), [1]);
}

#[test]
fn a_savepoint_released_keeps_its_portals_and_one_rolled_back_closes_them() {
    let db = Db::new("portal_savepoint");
    let manager = db.manager();
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    let mut sp = tx.savepoint().expect("savepoint");
    let kept = sp
        .bind("SELECT n FROM generate_series(1, 3) n", &[])
        .expect("bind");
    assert_eq!(numbers(&sp.query_portal(&kept, 1).expect("fetch")), [1]);
    sp.release().expect("release");
    assert_eq!(numbers(&tx.query_portal(&kept, 5).expect("fetch")), [2, 3]);

    let mut sp = tx.savepoint().expect("savepoint");
    let closed = sp.bind("SELECT 1", &[]).expect("bind");
    sp.rollback().expect("rollback to savepoint");
    let e = tx
        .query_portal(&closed, 1)
        .expect_err("closed by the rollback");
    assert_eq!(e.code(), Some(&SqlState::INVALID_CURSOR_NAME), "{e}");
    let commit = tx.commit().map(drop);
    assert!(
        matches!(commit, Err(Error::TransactionAborted(_))),
        "{commit:?}"
    );
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn portals_work_without_a_statement_cache_and_with_the_same_text_again() {
    let db = Db::new("portal_unnamed");
    db.admin()
        .batch_execute("INSERT INTO items SELECT n, 'note ' || n FROM generate_series(1, 100) n")
        .expect("fill");
    for cache in [true, false] {
        let manager = ManagedConnection::builder(&db.dsn)
            .statement_cache(cache)
            .build()
            .expect("build");
        for _ in 0..3 {
            let mut tx = manager.lock().expect("lock").begin().expect("begin");
            let portal = tx
                .bind("SELECT id FROM items WHERE id > $1 ORDER BY id", &[&90_i32])
                .expect("bind");
            assert_eq!(
                numbers(&tx.query_portal(&portal, 4).expect("fetch")),
                [91, 92, 93, 94]
            );
            tx.commit().expect("commit");
        }
    }
}

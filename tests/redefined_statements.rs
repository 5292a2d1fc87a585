//! SQL can reach named prepared statements where pgtx cannot see it (a
//! `DO` block running `EXECUTE format('DEALLOCATE %I', …)` and then
//! `PREPARE` under the same name). The statements that carry the
//! guarantee (`BEGIN`, `COMMIT`, `SAVEPOINT`, `RELEASE`) must not be
//! among them, and statements dropped behind pgtx's back are prepared
//! again. Every outcome is checked from another connection.

mod common;

use common::fixtures::Db;
use pgtx::{Error, ManagedConnection};

/// Replaces every named prepared statement of the session whose text
/// starts with one of `prefixes` by one that does nothing, as hostile SQL
/// could; returns how many it replaced.
fn redefine(manager: &ManagedConnection, prefixes: &[&str]) -> i64 {
    let mut guard = manager.lock().expect("lock");
    let pattern = prefixes
        .iter()
        .map(|p| format!("^{p}"))
        .collect::<Vec<_>>()
        .join("|");
    let before: i64 = guard
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement ~* $1",
            &[&pattern],
        )
        .expect("count")
        .get(0);
    guard
        .batch_execute(&format!(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT name FROM pg_prepared_statements WHERE statement ~* '{pattern}' LOOP
                 EXECUTE format('DEALLOCATE %I', r.name);
                 EXECUTE format('PREPARE %I AS SELECT 1 WHERE false', r.name);
               END LOOP;
             END $$"
        ))
        .expect("the DO block runs");
    before
}

/// A transaction with a savepoint and two statements, committed: what
/// makes pgtx use every statement of its own.
fn warm_up(manager: &ManagedConnection) {
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&100_i32, &"warm"])?;
            let mut sp = tx.savepoint()?;
            sp.execute("UPDATE items SET note = 'warmer' WHERE id = 100", &[])?;
            sp.release()?;
            tx.commit()
        })
        .expect("warm-up transaction");
}

#[test]
fn pgtx_prepares_none_of_its_own_statements_by_name() {
    let db = Db::new("redefine_none");
    let manager = db.manager();
    warm_up(&manager);
    let redefined = redefine(
        &manager,
        &[
            "BEGIN",
            "START",
            "COMMIT",
            "SAVEPOINT",
            "RELEASE",
            "ROLLBACK",
        ],
    );
    assert_eq!(
        redefined, 0,
        "no statement of pgtx's can be redefined by name"
    );
}

#[test]
fn a_redefined_begin_cannot_make_the_first_statement_commit_on_its_own() {
    let db = Db::new("redefine_begin");
    let manager = db.manager();
    warm_up(&manager);
    redefine(&manager, &["BEGIN", "START"]);

    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES (1, 'first')", &[])
        .expect("insert");
    assert!(
        !db.item_ids().contains(&1),
        "the first statement is not visible before commit"
    );
    tx.rollback().expect("rollback");
    assert_eq!(db.item_ids(), [100], "rolled back");
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_redefined_commit_cannot_report_a_commit_that_did_not_happen() {
    let db = Db::new("redefine_commit");
    let manager = db.manager();
    warm_up(&manager);
    redefine(&manager, &["COMMIT"]);

    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (2, 'second')", &[])?;
            tx.commit()
        })
        .expect("commit");
    assert_eq!(db.item_ids(), [2, 100], "committed, as reported");
    assert_eq!(
        db.open_transactions(),
        0,
        "nothing left idle in transaction"
    );
}

#[test]
fn a_redefined_savepoint_or_release_cannot_lose_or_keep_the_wrong_work() {
    let db = Db::new("redefine_savepoint");
    let manager = db.manager();
    warm_up(&manager);
    redefine(&manager, &["SAVEPOINT", "RELEASE"]);

    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES (3, 'kept')", &[])?;
            let mut sp = tx.savepoint()?;
            sp.execute("INSERT INTO items VALUES (4, 'undone')", &[])?;
            sp.rollback()?;
            let mut sp = tx.savepoint()?;
            sp.execute("INSERT INTO items VALUES (5, 'released')", &[])?;
            sp.release()?;
            tx.commit()
        })
        .expect("transaction");
    assert_eq!(db.item_ids(), [3, 5, 100]);
}

#[test]
fn statements_deallocated_behind_pgtxs_back_are_prepared_again() {
    let db = Db::new("redefine_deallocate_all");
    let manager = db.manager();
    warm_up(&manager);
    manager
        .lock()
        .expect("lock")
        .batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .expect("DEALLOCATE ALL where the tap cannot see it");

    // The first statement of a transaction, cached before: the server
    // skips it with BEGIN's Sync group, and pgtx begins again.
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&6_i32, &"again"])?;
            tx.commit()
        })
        .expect("the next transaction works");
    // And every later one.
    for id in 7..10_i32 {
        manager
            .transaction(|mut tx| {
                tx.execute("INSERT INTO items VALUES ($1, $2)", &[&id, &"later"])?;
                let mut sp = tx.savepoint()?;
                sp.execute("UPDATE items SET note = 'warmer' WHERE id = 100", &[])?;
                sp.release()?;
                tx.commit()
            })
            .expect("later transactions work");
    }
    assert_eq!(db.item_ids(), [6, 7, 8, 9, 100]);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn statements_deallocated_inside_a_transaction_abort_only_that_transaction() {
    let db = Db::new("redefine_deallocate_in_tx");
    let manager = db.manager();
    warm_up(&manager);
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&1_i32, &"one"])
        .expect("insert");
    tx.batch_execute("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
        .expect("DEALLOCATE ALL inside the transaction");
    let stale = tx.execute("INSERT INTO items VALUES ($1, $2)", &[&2_i32, &"two"]);
    let commit = tx.commit();
    match (&stale, &commit) {
        // The server skipped the statement; the transaction is aborted,
        // as after any failed statement, and nothing of it committed.
        (Err(Error::Db(_)), Err(Error::TransactionAborted(_))) => {
            assert_eq!(db.item_ids(), [100]);
        }
        _ => panic!("{stale:?} then {commit:?}"),
    }
    manager
        .transaction(|mut tx| {
            tx.execute("INSERT INTO items VALUES ($1, $2)", &[&3_i32, &"three"])?;
            tx.commit()
        })
        .expect("the next transaction prepares again");
    assert_eq!(db.item_ids(), [3, 100]);
    assert_eq!(db.open_transactions(), 0);
}

#[test]
fn a_first_statement_whose_own_sql_deallocates_a_missing_name_runs_once() {
    let db = Db::new("redefine_not_ours");
    db.admin()
        .batch_execute(
            "CREATE SEQUENCE runs;
             CREATE FUNCTION forget_missing() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
               PERFORM nextval('runs');
               EXECUTE 'DEALLOCATE nosuch';
               RETURN 1;
             END $$;",
        )
        .expect("setup");
    let manager = db.manager();
    // Cached on an earlier run, so the transaction's first statement binds it.
    let failed = manager
        .lock()
        .expect("lock")
        .query_one("SELECT forget_missing()", &[])
        .map(drop)
        .expect_err("nosuch does not exist");
    assert!(failed.to_string().contains("nosuch"), "{failed}");
    let runs = |db: &Db| -> i64 {
        db.admin()
            .query_one("SELECT last_value FROM runs", &[])
            .expect("read the sequence")
            .get(0)
    };
    assert_eq!(runs(&db), 1);
    let err = manager
        .transaction(|mut tx| {
            tx.query_one("SELECT forget_missing()", &[])?;
            tx.commit()
        })
        .expect_err("its own SQL failed");
    assert!(err.to_string().contains("nosuch"), "{err}");
    assert_eq!(
        runs(&db),
        2,
        "the statement's error was its own: it ran once, not again"
    );
    assert_eq!(db.open_transactions(), 0);
}

//! Code written once against `GenericClient` runs on a guard, a
//! transaction and a savepoint with each one's own semantics (proved from
//! a second connection); code written against `ConnectionSource` runs on a
//! manager and on a pool.

mod common;

use common::fixtures::Db;
use pgtx::types::Type;
use pgtx::{ConnectionSource, Error, GenericClient, RetryPolicy};

/// A repository function: knows nothing of which handle it was given.
fn record(db: &mut impl GenericClient, id: i32, note: &str) -> pgtx::Result<i64> {
    db.execute("INSERT INTO items VALUES ($1, $2)", &[&id, &note])?;
    db.execute_typed(
        "UPDATE items SET note = note || $2 WHERE id = $1",
        &[(&id, Type::INT4), (&"!", Type::TEXT)],
    )?;
    let typed = db.query_typed("SELECT count(*) FROM items", &[])?;
    let simple = db.simple_query("SELECT 1")?;
    assert!(!simple.is_empty());
    let counted: i64 = db.query_one("SELECT count(*) FROM items", &[])?.get(0);
    assert_eq!(typed[0].get::<_, i64>(0), counted);
    Ok(counted)
}

#[test]
fn one_repository_function_runs_on_a_guard_a_transaction_and_a_savepoint() {
    let db = Db::new("generic_handles");
    let manager = db.manager();

    let mut guard = manager.lock().expect("lock");
    assert_eq!(record(&mut guard, 1, "guard").expect("guard"), 1);
    assert_eq!(db.item_ids(), [1], "a guard's statement commits on its own");

    let mut tx = guard.begin().expect("begin");
    assert_eq!(record(&mut tx, 2, "rolled back").expect("tx"), 2);
    tx.rollback().expect("rollback");
    assert_eq!(db.item_ids(), [1], "the transaction's rollback undid it");

    manager
        .transaction(|mut tx| {
            record(&mut tx, 3, "kept")?;
            let mut sp = tx.savepoint()?;
            record(&mut sp, 4, "undone with its savepoint")?;
            sp.rollback()?;
            tx.commit()
        })
        .expect("transaction");
    assert_eq!(db.item_ids(), [1, 3]);
    let notes: Vec<String> = db
        .admin()
        .query("SELECT note FROM items ORDER BY id", &[])
        .expect("notes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(notes, ["guard!", "kept!"]);
}

#[test]
fn inside_a_transaction_the_trait_refuses_transaction_control_as_the_handle_does() {
    let db = Db::new("generic_control");
    let manager = db.manager();
    fn end_it(db: &mut impl GenericClient) -> pgtx::Result<()> {
        db.batch_execute("COMMIT")
    }
    let mut tx = manager.lock().expect("lock").begin().expect("begin");
    tx.execute(
        "INSERT INTO items VALUES (1, 'not committed by the trait')",
        &[],
    )
    .expect("insert");
    assert!(matches!(end_it(&mut tx), Err(Error::TransactionControl(_))));
    assert!(db.item_ids().is_empty(), "nothing was committed");
    tx.rollback().expect("rollback");
    assert!(db.item_ids().is_empty());
    assert_eq!(db.open_transactions(), 0);
}

/// Written once against `ConnectionSource`.
fn add_and_count(source: &impl ConnectionSource, id: i32) -> pgtx::Result<i64> {
    source.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES ($1, 'source')", &[&id])?;
        tx.commit()
    })?;
    let runs = source.transaction_retrying(&RetryPolicy::default(), |tx| {
        let attempt = tx.attempt();
        tx.commit_returning(attempt)
    })?;
    assert_eq!(runs, 1);
    let mut guard = source.lock()?;
    Ok(guard.query_one("SELECT count(*) FROM items", &[])?.get(0))
}

#[test]
fn one_function_runs_transactions_on_a_manager_and_on_a_pool() {
    let db = Db::new("generic_sources");
    let manager = db.manager();
    let pool = pgtx::Pool::new(&db.dsn, 2).expect("pool");
    assert_eq!(add_and_count(&manager, 1).expect("manager"), 1);
    assert_eq!(add_and_count(&pool, 2).expect("pool"), 2);
    assert_eq!(db.item_ids(), [1, 2]);
    assert!(
        ConnectionSource::try_lock(&pool).is_ok(),
        "nothing left held"
    );
}

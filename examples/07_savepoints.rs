//! # 07: savepoints, and SQL that cannot escape a transaction
//!
//! Teaches: a transaction nested in a transaction, with its state in its type.
//!
//! - `tx.savepoint()` gives a `Savepoint<'_, Open>` that borrows the `Tx`:
//!   until it is released or rolled back, the compiler refuses any use of
//!   the `Tx`. `release()` keeps its work as part of the transaction;
//!   `rollback()` undoes it, and the transaction goes on even if a
//!   statement inside had failed.
//! - `tx.savepoint_scope(|sp| …)` is the closure form: an `Err` from the
//!   closure rolls back to the savepoint, and the transaction goes on.
//! - A savepoint dropped without `release()` or `rollback()` is rolled back
//!   and reported, like an unfinished transaction.
//! - Plain SQL cannot end the transaction behind pgtx's back: `COMMIT`
//!   inside a `Tx` is refused before it is sent.
//!
//! Prints: each step, the rows a second connection sees at the end, and the
//! count of unfinished work the fallback rolled back.
//!
//! Run it with `cargo run --example 07_savepoints`. It works in a database of
//! its own (`pgtx_example_07_...`) on the throwaway server or on the one
//! named by `DATABASE_URL` / `PG*`.

#[path = "../tests/common/server.rs"]
mod server;

use pgtx::{Error, ManagedConnection};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("pgtx_example_07");
    let manager = ManagedConnection::new(&dsn)?;
    manager
        .lock()?
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL)")?;

    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO orders VALUES (1, 'tea')", &[])?;
    println!("1. inserted order 1 in the transaction");

    // A savepoint whose statement fails: rolling back to it recovers.
    let mut sp = tx.savepoint()?;
    match sp.execute("INSERT INTO orders VALUES (1, 'duplicate')", &[]) {
        Err(e) => println!("2. in a savepoint, a duplicate fails: {e}"),
        Ok(_) => return Err("a duplicate key was accepted".into()),
    }
    println!("   status: {}", sp.status());
    sp.rollback()?;
    println!("   sp.rollback(): status {} again", tx.status());

    // A savepoint that is released: its work stays.
    let mut sp = tx.savepoint()?;
    sp.execute("INSERT INTO orders VALUES (2, 'coffee')", &[])?;
    sp.release()?;
    println!("3. order 2 inserted in a savepoint and released");

    // The closure form: the closure's Err rolls back to the savepoint only.
    let outcome: Result<(), Error> = tx.savepoint_scope(|mut sp| {
        sp.execute("INSERT INTO orders VALUES (3, 'cake')", &[])?;
        sp.execute("INSERT INTO orders VALUES (3, 'cake again')", &[])?;
        sp.release_returning(())
    });
    println!(
        "4. savepoint_scope with a failing closure: {}",
        outcome.map_or_else(|e| format!("Err({e})"), |()| "Ok".to_owned())
    );

    // Dropped unfinished: rolled back and reported.
    {
        let mut sp = tx.savepoint()?;
        sp.execute("INSERT INTO orders VALUES (4, 'forgotten biscuit')", &[])?;
        println!("5. order 4 inserted in a savepoint that is then dropped");
    }

    // SQL cannot commit behind pgtx's back.
    match tx.batch_execute("INSERT INTO orders VALUES (5, 'sneaky'); COMMIT") {
        Err(e @ Error::TransactionControl(_)) => println!("6. refused, nothing sent: {e}"),
        other => return Err(format!("COMMIT inside a Tx was not refused: {other:?}").into()),
    }

    tx.commit()?;
    let mut admin = server.admin_on(&dsn);
    let ids: Vec<i32> = admin
        .query("SELECT id FROM orders ORDER BY id", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("\ncommitted; a second connection sees orders {ids:?}");
    println!(
        "unfinished work rolled back by the fallback: {}",
        manager.unfinished_transactions()
    );
    if ids != [1, 2] {
        return Err(format!("expected orders [1, 2], found {ids:?}").into());
    }
    Ok(())
}

//! # 01: your first transaction
//!
//! Teaches: creating a [`pgtx::ManagedConnection`] (which does not connect
//! yet), running work in `manager.transaction(|tx| ...)`, where the closure
//! must end with `tx.commit()` or `tx.rollback()`, and handing a value out of
//! a transaction with `commit_returning`.
//!
//! Prints: the manager before it has connected (`(closed)`), the rows it
//! inserted and read back, and the manager afterwards (`(idle)`: connected,
//! no transaction open).
//!
//! Run it with `cargo run --example 01_first_transaction`. With no settings it
//! starts a throwaway PostgreSQL cluster (removed when it exits); set
//! `DATABASE_URL` or the `PG*` variables to use your own server instead (it
//! creates and drops the table `pgtx_example_01`).

#[path = "../tests/common/server.rs"]
mod server;

use pgtx::ManagedConnection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());

    // 1. Settings only: nothing is connected until the first transaction.
    let manager = ManagedConnection::new(&server.dsn())?;
    println!("1. created:   {manager}");

    // 2. A transaction that commits. The closure gets a `Tx<Open>` and must
    //    return the `Tx<Done>` that `commit()` (or `rollback()`) gives back:
    //    forgetting to finish it would not compile.
    manager.transaction(|mut tx| {
        tx.batch_execute(
            "DROP TABLE IF EXISTS pgtx_example_01;
             CREATE TABLE pgtx_example_01 (id int PRIMARY KEY, greeting text NOT NULL)",
        )?;
        for (id, greeting) in [(1, "hello"), (2, "bonjour"), (3, "hallo")] {
            tx.execute(
                "INSERT INTO pgtx_example_01 VALUES ($1, $2)",
                &[&id, &greeting],
            )?;
        }
        tx.commit()
    })?;
    println!("2. committed: table pgtx_example_01 created, 3 rows inserted");

    // 3. A transaction that hands a value back: `commit_returning(v)`
    //    commits and attaches `v` to the finished transaction, and
    //    `transaction` returns it. (The long form,
    //    `Ok(tx.commit()?.returning(v))`, does the same, but a closure ending
    //    in `Ok(...)` does not tell the compiler its error type.)
    let greetings: Vec<(i32, String)> = manager.transaction(|mut tx| {
        let rows = tx.query("SELECT id, greeting FROM pgtx_example_01 ORDER BY id", &[])?;
        let greetings = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        tx.commit_returning(greetings)
    })?;
    println!("3. read back:");
    for (id, greeting) in &greetings {
        println!("     {id}: {greeting}");
    }

    // 4. The connection stays open for the next holder, with no transaction.
    println!("4. afterwards: {manager}");

    manager.transaction(|mut tx| {
        tx.batch_execute("DROP TABLE pgtx_example_01")?;
        tx.commit()
    })?;
    println!("done: table dropped");
    Ok(())
}

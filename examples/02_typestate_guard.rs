//! # 02: the guard form, one state at a time
//!
//! Teaches: the steps the closure form of 01 does for you, spelled out.
//! `manager.lock()` waits for the connection and gives a [`pgtx::Guard`]
//! (statements on it are autocommit); `guard.begin()` turns the guard into a
//! `Tx<Open>`; `tx.commit()` turns that into a `Tx<Done>`; dropping it (or
//! `release()`) gives the connection back. Each step consumes the previous
//! value, so a finished transaction cannot be used again: that is checked by
//! the compiler (see `ui-tests/fail/`), not at run time.
//!
//! Prints: the transaction status after each step (`closed`, `idle`,
//! `in transaction`, `idle`), whether another caller could take the
//! connection meanwhile, and a value computed inside the transaction.
//!
//! Run it with `cargo run --example 02_typestate_guard` (a throwaway server
//! is started unless `DATABASE_URL` or `PG*` is set; the table
//! `pgtx_example_02` is created and dropped).

#[path = "../tests/common/server.rs"]
mod server;

use pgtx::{Done, ManagedConnection, Open, Tx};

/// A helper that works inside any open transaction: it borrows the `Tx`, so
/// the caller still decides whether to commit.
fn add_order(tx: &mut Tx<'_, Open>, item: &str, quantity: i32) -> pgtx::Result<u64> {
    tx.execute(
        "INSERT INTO pgtx_example_02 (item, quantity) VALUES ($1, $2)",
        &[&item, &quantity],
    )
}

/// Runs a whole transaction in the guard form and hands back a value the
/// same way the closure form does: on the finished `Tx<Done<T>>`.
fn total_quantity(manager: &ManagedConnection) -> pgtx::Result<i64> {
    let mut tx = manager.lock()?.begin()?;
    let total: i64 = tx
        .query_one("SELECT sum(quantity)::bigint FROM pgtx_example_02", &[])?
        .get(0);
    let done: Tx<'_, Done<i64>> = tx.commit()?.returning(total);
    Ok(done.into_value()) // releases the connection and gives the value
}

/// Whether another thread would find the connection taken right now.
/// (Asked from another thread on purpose: the same thread asking again
/// would be refused as re-entrant, whether the connection is taken or not.)
fn taken(manager: &ManagedConnection) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| matches!(manager.try_lock(), Err(pgtx::Error::WouldBlock)))
            .join()
            .unwrap_or(false)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let manager = ManagedConnection::new(&server.dsn())?;
    println!(
        "0. manager created             status: {}",
        manager.status()
    );

    // 1. Take the connection. It is opened now, because there was none.
    let mut guard = manager.lock()?;
    println!("1. lock()     -> Guard         status: {}", guard.status());
    println!("   taken for other threads: {}", taken(&manager));

    // 2. Statements on the guard are autocommit: each one commits on its own.
    guard.batch_execute(
        "DROP TABLE IF EXISTS pgtx_example_02;
         CREATE TABLE pgtx_example_02 (item text NOT NULL, quantity int NOT NULL)",
    )?;
    println!("2. guard.batch_execute(CREATE) status: {}", guard.status());

    // 3. `begin` consumes the guard: from here on only the `Tx` can be used.
    //    It sends nothing yet: `BEGIN` goes out with the first statement, in
    //    the same network write, so the transaction costs one round trip less
    //    (and if the server refused `BEGIN`, it would skip the statement too).
    let mut tx: Tx<'_, Open> = guard.begin()?;
    println!("3. begin()    -> Tx<Open>      status: {}", tx.status());
    println!("   (nothing sent yet: BEGIN travels with the first statement)");
    add_order(&mut tx, "apples", 3)?;
    add_order(&mut tx, "pears", 4)?;
    println!("   two rows inserted           status: {}", tx.status());

    // 4. `commit` consumes the `Tx<Open>` and returns a `Tx<Done>`, which
    //    still holds the connection but has no statement methods.
    let done: Tx<'_, Done> = tx.commit()?;
    println!(
        "4. commit()   -> Tx<Done>      status: {}",
        manager.status()
    );
    println!("   taken for other threads: {}", taken(&manager));

    // 5. Releasing it (or letting it go out of scope) frees the connection.
    done.release();
    println!(
        "5. release()                   status: {}",
        manager.status()
    );
    println!("   taken for other threads: {}", taken(&manager));

    // 6. The guard form hands values back on `Tx<Done<T>>` too.
    let total = total_quantity(&manager)?;
    println!("6. total quantity, read in a transaction: {total}");
    if total != 7 {
        return Err(format!("expected 3 + 4 = 7, the server says {total}").into());
    }

    // Autocommit straight from a fresh guard, then the connection is released
    // at the end of the statement.
    manager
        .lock()?
        .batch_execute("DROP TABLE pgtx_example_02")?;
    println!("done: table dropped; {manager}");
    Ok(())
}

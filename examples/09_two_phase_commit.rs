//! # 09: one transaction across two databases (two-phase commit)
//!
//! Teaches: moving money from a database to another so that both change or
//! neither does, with [`pgtx::TwoPhase`].
//!
//! - `dtx.join(&manager)` holds a shared connection for the distributed
//!   transaction; `dtx.join_dsn(dsn)` opens one just for it (closed at the
//!   end). `dtx.tx(id)` lends that participant's `Tx<Open>`: statements
//!   work, but only `dtx.commit()` can commit it.
//! - `commit()` prepares the other participants (`PREPARE TRANSACTION`),
//!   commits the deciding one, then `COMMIT PREPARED`s the rest.
//! - A failure before the decision (here: an overdraft caught by a `CHECK`
//!   constraint) rolls back both: neither balance moves.
//! - `dtx.notify(...)` is sent only after everything committed.
//!
//! Prints: the balances on both databases after each transfer, what a
//! listener received, and that `pg_prepared_xacts` is empty.
//!
//! Run it with `cargo run --example 09_two_phase_commit`. It creates two
//! databases of its own (`pgtx_example_09_...`) on the throwaway server or
//! on the one named by `DATABASE_URL` / `PG*`; the server must allow
//! prepared transactions (`max_prepared_transactions` above 0; the
//! throwaway server does).

#[path = "../tests/common/server.rs"]
mod server;

use std::time::Duration;

use pgtx::{ManagedConnection, TwoPhase};
use postgres::fallible_iterator::FallibleIterator;

fn balance(manager: &ManagedConnection) -> pgtx::Result<i64> {
    Ok(manager
        .lock()?
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])?
        .get(0))
}

/// Moves `amount` from bank A to bank B in one distributed transaction.
fn transfer(bank_a: &ManagedConnection, dsn_b: &str, amount: i64) -> pgtx::Result<()> {
    let mut dtx = TwoPhase::new();
    let a = dtx.join(bank_a)?;
    let b = dtx.join_dsn(dsn_b)?;
    dtx.tx(a)?.execute(
        "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
        &[&amount],
    )?;
    dtx.tx(b)?.execute(
        "UPDATE accounts SET balance = balance + $1 WHERE id = 1",
        &[&amount],
    )?;
    dtx.notify("transfers", &format!("moved {amount}"))?;
    dtx.commit()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn_a = server.fresh_database("pgtx_example_09_a");
    let dsn_b = server.fresh_database("pgtx_example_09_b");
    for dsn in [&dsn_a, &dsn_b] {
        server.admin_on(dsn).batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
             INSERT INTO accounts VALUES (1, 100)",
        )?;
    }
    let bank_a = ManagedConnection::new(&dsn_a)?;
    let bank_b = ManagedConnection::new(&dsn_b)?;
    let mut listener = server.admin_on(&dsn_a);
    listener.batch_execute("LISTEN transfers")?;
    println!(
        "start: A has {}, B has {}",
        balance(&bank_a)?,
        balance(&bank_b)?
    );

    transfer(&bank_a, &dsn_b, 30)?;
    println!(
        "\n1. moved 30 in one distributed transaction: A has {}, B has {}",
        balance(&bank_a)?,
        balance(&bank_b)?
    );

    match transfer(&bank_a, &dsn_b, 500) {
        Err(e) => println!("\n2. moving 500 overdraws A, so nothing moves:\n   {e}"),
        Ok(()) => return Err("an overdraft was committed".into()),
    }
    let (a, b) = (balance(&bank_a)?, balance(&bank_b)?);
    println!("   A has {a}, B has {b}");
    if (a, b) != (70, 130) {
        return Err(format!("expected 70 and 130, found {a} and {b}").into());
    }

    let mut heard = Vec::new();
    let mut notifications = listener.notifications();
    let mut arriving = notifications.timeout_iter(Duration::from_millis(500));
    while let Some(n) = arriving.next()? {
        heard.push(n.payload().to_owned());
    }
    println!("\n3. the listener heard {heard:?} (the aborted transfer sent nothing)");

    let left: i64 = server
        .admin_on(&dsn_b)
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])?
        .get(0);
    println!("4. prepared transactions left on the server: {left}");
    if heard != ["moved 30"] || left != 0 {
        return Err("unexpected notifications or prepared transactions".into());
    }
    Ok(())
}

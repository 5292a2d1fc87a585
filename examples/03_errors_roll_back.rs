//! # 03: errors roll back
//!
//! Teaches: what happens to a transaction when something fails.
//!
//! - A statement the server rejects aborts the whole transaction: later
//!   statements fail too, and `commit()` returns
//!   [`pgtx::Error::TransactionAborted`] instead of pretending to succeed.
//! - A `transaction` closure that returns `Err` (your own error type, or a
//!   failed statement propagated with `?`) gets that error back, with the
//!   transaction rolled back and the connection idle for the next holder.
//!
//! Prints: each error as the caller sees it (with its SQLSTATE code), the
//! transaction status, and the row count after each case, which proves that
//! nothing of a failed transaction was saved.
//!
//! Run it with `cargo run --example 03_errors_roll_back` (a throwaway server
//! is started unless `DATABASE_URL` or `PG*` is set; the table
//! `pgtx_example_03` is created and dropped).

#[path = "../tests/common/server.rs"]
mod server;

use std::fmt;

use pgtx::{ManagedConnection, SqlState};

/// An application error type: `transaction` accepts any `E: From<pgtx::Error>`.
#[derive(Debug)]
enum TransferError {
    Db(pgtx::Error),
    InsufficientFunds { balance: i64, wanted: i64 },
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Db(e) => write!(f, "database error: {e}"),
            TransferError::InsufficientFunds { balance, wanted } => {
                write!(f, "insufficient funds: balance {balance}, wanted {wanted}")
            }
        }
    }
}

impl std::error::Error for TransferError {}

impl From<pgtx::Error> for TransferError {
    fn from(e: pgtx::Error) -> Self {
        TransferError::Db(e)
    }
}

fn count(manager: &ManagedConnection) -> pgtx::Result<i64> {
    let row = manager
        .lock()?
        .query_one("SELECT count(*) FROM pgtx_example_03", &[])?;
    Ok(row.get(0))
}

/// The SQLSTATE code and the server's message, when the server sent one.
fn explain(e: &pgtx::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("[{}] {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let manager = ManagedConnection::new(&server.dsn())?;
    manager.lock()?.batch_execute(
        "DROP TABLE IF EXISTS pgtx_example_03;
         CREATE TABLE pgtx_example_03 (id int PRIMARY KEY, amount bigint NOT NULL);
         INSERT INTO pgtx_example_03 VALUES (1, 100)",
    )?;
    println!("start: {} row(s)", count(&manager)?);

    // Case 1: a failing statement aborts the transaction.
    println!("\n1. a statement fails inside a transaction (guard form)");
    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO pgtx_example_03 VALUES (2, 50)", &[])?;
    println!("   inserted id 2                 status: {}", tx.status());
    let duplicate = tx.execute("INSERT INTO pgtx_example_03 VALUES (1, 0)", &[]);
    match &duplicate {
        Err(e) => println!("   insert id 1 again failed: {}", explain(e)),
        Ok(_) => return Err("a duplicate key was accepted".into()),
    }
    println!("   status now: {}", tx.status());
    if let Err(e) = tx.query_one("SELECT 1", &[]) {
        println!("   even SELECT 1 fails now: {}", explain(&e));
    }
    match tx.commit() {
        Err(e @ pgtx::Error::TransactionAborted(_)) => {
            println!("   commit() -> TransactionAborted, carrying the first error:");
            println!("      {}", explain(&e));
        }
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("commit() succeeded after a failed statement".into()),
    }
    println!(
        "   afterwards: status {}, {} row(s): id 2 was not saved",
        manager.status(),
        count(&manager)?
    );

    // Case 2: the closure decides to give up and returns its own error.
    println!("\n2. the closure returns Err (its own error type)");
    let wanted = 500;
    let outcome: Result<i64, TransferError> = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO pgtx_example_03 VALUES (3, $1)", &[&-wanted])?;
        let balance: i64 = tx
            .query_one("SELECT sum(amount)::bigint FROM pgtx_example_03", &[])?
            .get(0);
        if balance < 0 {
            return Err(TransferError::InsufficientFunds {
                balance: balance + wanted,
                wanted,
            });
        }
        Ok(tx.commit()?.returning(balance))
    });
    match outcome {
        Err(e @ TransferError::InsufficientFunds { .. }) => {
            println!("   transaction() -> Err: {e}")
        }
        other => return Err(format!("expected InsufficientFunds, got {other:?}").into()),
    }
    println!(
        "   afterwards: status {}, {} row(s): id 3 was rolled back",
        manager.status(),
        count(&manager)?
    );

    // Case 3: the seed's "error inside" case: a statement fails inside the
    // closure, `?` propagates it, the transaction is rolled back and the
    // connection is idle again.
    println!("\n3. a statement fails inside the closure and `?` propagates it");
    let outcome: pgtx::Result<()> = manager.transaction(|mut tx| {
        tx.execute("INSERT INTO pgtx_example_03 VALUES (4, 1)", &[])?;
        tx.query_one("SELECT 1 / 0", &[])?;
        tx.commit()
    });
    match &outcome {
        Err(e) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => {
            println!("   transaction() -> Err: {}", explain(e));
        }
        other => return Err(format!("expected division_by_zero, got {other:?}").into()),
    }
    println!("   afterwards: {manager}");
    let rows = count(&manager)?;
    println!("   {rows} row(s): id 4 was rolled back");
    if rows != 1 {
        return Err(format!("expected only the seed row, found {rows}").into());
    }

    manager
        .lock()?
        .batch_execute("DROP TABLE pgtx_example_03")?;
    println!("\ndone: table dropped");
    Ok(())
}

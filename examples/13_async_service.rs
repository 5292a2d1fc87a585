//! # 13: pgtx in an async service
//!
//! Teaches: the async API (`pgtx::aio`, feature `aio`) the way a web
//! service uses it, and what happens when a request times out.
//!
//! 1. One `aio::ManagedConnection` shared by request handlers running as
//!    tokio tasks; each transfer runs in `transaction(async |tx| …)`, whose
//!    closure must hand back its `Tx` committed or rolled back.
//! 2. A handler with a request timeout (`tokio::time::timeout`): its future
//!    is dropped in the middle of a statement. The statement is cancelled
//!    on the server, its transaction rolled back, and the next request gets
//!    a clean connection.
//! 3. Many requests at once, some cut short at random: afterwards the
//!    balances add up, and no transaction is left open on the server.
//!
//! Prints: each step's outcome, the balances, and what the server shows.
//!
//! Run it with `cargo run --example 13_async_service`. It works in a
//! database of its own on the throwaway server (or on the one named by
//! `DATABASE_URL` / `PG*`).

#[path = "../tests/common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use pgtx::aio::ManagedConnection;

/// A "handler": moves `amount` from account 1 to account 2, optionally
/// dawdling inside the transaction (a slow query) for `slow`.
async fn transfer(db: &ManagedConnection, amount: i64, slow: Duration) -> pgtx::Result<i64> {
    db.transaction(async |mut tx| {
        tx.execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
            &[&amount],
        )
        .await?;
        if !slow.is_zero() {
            tx.execute("SELECT pg_sleep($1)", &[&slow.as_secs_f64()])
                .await?;
        }
        tx.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = 2",
            &[&amount],
        )
        .await?;
        let left: i64 = tx
            .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
            .await?
            .get(0);
        tx.commit_returning(left).await
    })
    .await
}

/// What the server says: (balance 1, balance 2, sessions idle in a transaction).
async fn server_view(db: &ManagedConnection) -> pgtx::Result<(i64, i64, i64)> {
    let mut guard = db.lock().await?;
    let row = guard
        .query_one(
            "SELECT (SELECT balance FROM accounts WHERE id = 1),
                    (SELECT balance FROM accounts WHERE id = 2),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND state LIKE 'idle in transaction%')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server and the database are set up before the runtime starts:
    // the harness uses the blocking `postgres` crate.
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("example_13");
    server.admin_on(&dsn).batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts VALUES (1, 1000), (2, 0);",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(service(&dsn))
}

async fn service(dsn: &str) -> Result<(), Box<dyn std::error::Error>> {
    let db = Arc::new(ManagedConnection::new(dsn)?);

    // 1. A request that completes.
    let left = transfer(&db, 10, Duration::ZERO).await?;
    println!("1. transfer of 10 committed: account 1 has {left} left");

    // 2. A request whose deadline passes while its transaction waits on a
    //    slow statement: the future is dropped right there.
    let timed_out = tokio::time::timeout(
        Duration::from_millis(100),
        transfer(&db, 500, Duration::from_secs(5)),
    )
    .await;
    println!(
        "2. transfer of 500 with a 100 ms deadline: {}",
        if timed_out.is_err() {
            "timed out"
        } else {
            "finished?"
        }
    );
    let (one, two, open) = server_view(&db).await?;
    println!(
        "   the next request sees balances {one} + {two} = {} and {open} transaction(s) open \
         (the slow statement was cancelled, its transfer rolled back; {} reported)",
        one + two,
        db.unfinished_transactions()
    );

    // 3. Fifty requests at once, every third with a deadline it may miss.
    let mut requests = Vec::new();
    for n in 0..50_u64 {
        let db = Arc::clone(&db);
        requests.push(tokio::spawn(async move {
            let work = transfer(&db, 1, Duration::ZERO);
            if n % 3 == 0 {
                tokio::time::timeout(Duration::from_micros(300 + n * 37), work)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some()
            } else {
                work.await.is_ok()
            }
        }));
    }
    let mut committed = 0;
    for request in requests {
        if request.await? {
            committed += 1;
        }
    }
    let (one, two, open) = server_view(&db).await?;
    println!(
        "3. 50 concurrent transfers of 1: {committed} reported committed; balances {one} + {two} = {}, \
         {open} transaction(s) left open, {} COMMIT(s) cut short after they were sent",
        one + two,
        db.interrupted_commits()
    );
    Ok(())
}

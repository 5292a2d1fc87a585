//! # 11: a pool of connections, and transactions the server asks to retry
//!
//! Teaches: when one shared connection is not enough.
//!
//! 1. `Pool::new(dsn, 4)`: sixteen threads share four connections, with the
//!    same `transaction(|tx| …)` and the same guarantees as one manager;
//!    `pool.state()` shows what it did.
//! 2. `SERIALIZABLE` transfers that collide: the server refuses one of two
//!    concurrent transactions with a serialization failure (SQLSTATE
//!    40001). Without retrying, that transfer is simply lost; with
//!    `transaction_retrying`, it runs again and every transfer commits
//!    exactly once.
//! 3. A note on many processes: PgBouncer in transaction pooling mode.
//!
//! Prints: the sessions the server saw, the pool's counters, and the final
//! balances with and without retrying.
//!
//! Run it with `cargo run --example 11_pool_and_retries`. It works in a
//! database of its own on the throwaway server (or on the one named by
//! `DATABASE_URL` / `PG*`).

#[path = "../tests/common/server.rs"]
mod server;

use std::sync::atomic::{AtomicU64, Ordering};

use pgtx::{IsolationLevel, Pool, RetryPolicy, TxOptions};

const THREADS: usize = 16;
const TRANSFERS: usize = 20;

/// Moves 1 from account 1 to account 2, reading the balances first (the
/// read is what makes two concurrent transfers collide under SERIALIZABLE).
fn transfer<'s>(mut tx: pgtx::Tx<'s, pgtx::Open>) -> pgtx::Result<pgtx::Tx<'s, pgtx::Done>> {
    let from: i64 = tx
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])?
        .get(0);
    tx.execute(
        "UPDATE accounts SET balance = $1 WHERE id = 1",
        &[&(from - 1)],
    )?;
    tx.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id = 2",
        &[],
    )?;
    tx.commit()
}

fn balances(pool: &Pool) -> pgtx::Result<(i64, i64)> {
    let mut guard = pool.lock()?;
    let row = guard.query_one(
        "SELECT (SELECT balance FROM accounts WHERE id = 1), (SELECT balance FROM accounts WHERE id = 2)",
        &[],
    )?;
    Ok((row.get(0), row.get(1)))
}

fn run(pool: &Pool, retrying: bool) -> (u64, u64) {
    let serializable = TxOptions::new().isolation(IsolationLevel::Serializable);
    let policy = RetryPolicy::default().max_attempts(50);
    let (ok, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..TRANSFERS {
                    let outcome = if retrying {
                        pool.transaction_retrying_with(serializable, &policy, transfer)
                    } else {
                        pool.transaction_with(serializable, transfer)
                    };
                    match outcome {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    (ok.into_inner(), refused.into_inner())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("pgtx_example_11");

    // 1. Sixteen threads, four connections.
    let pool = Pool::new(&dsn, 4)?;
    pool.lock()?.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts VALUES (1, 1000), (2, 0)",
    )?;
    let sessions = |pool: &Pool| -> pgtx::Result<i64> {
        Ok(pool
            .lock()?
            .query_one(
                "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE datname = current_database()",
                &[],
            )?
            .get(0))
    };

    // 2. Without retrying, collisions lose transfers.
    let (ok, refused) = run(&pool, false);
    let (from, to) = balances(&pool)?;
    println!("\n1. {THREADS} threads x {TRANSFERS} SERIALIZABLE transfers on a pool of 4");
    println!(
        "   sessions the server has for this database: {}",
        sessions(&pool)?
    );
    println!("\n2. without retrying: {ok} committed, {refused} refused (serialization failures)");
    println!(
        "   balances: {from} and {to} (sum {}): only the committed ones moved money",
        from + to
    );
    if refused == 0 {
        println!("   (no collision this time: the machine ran them one by one)");
    }

    // Reset, then the same with retrying.
    pool.lock()?
        .batch_execute("UPDATE accounts SET balance = CASE id WHEN 1 THEN 1000 ELSE 0 END")?;
    let (ok, refused) = run(&pool, true);
    let (from, to) = balances(&pool)?;
    println!("\n   with transaction_retrying: {ok} committed, {refused} given up");
    println!("   balances: {from} and {to}: every transfer moved exactly 1");
    if to != (THREADS * TRANSFERS) as i64 || refused != 0 {
        return Err("a retried transfer was lost or applied twice".into());
    }
    println!("   pool: {:?}", pool.state());

    // 3. Many processes.
    println!(
        "\n3. many processes: put PgBouncer (pool_mode = transaction) in front of the server;\n   \
         see the README's Scaling out section for the settings pgtx needs there."
    );
    Ok(())
}

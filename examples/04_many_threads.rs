//! # 04: many threads, one connection
//!
//! Teaches: sharing one [`pgtx::ManagedConnection`] between threads. It is
//! `Send + Sync`, so `std::thread::scope` threads can borrow it (an `Arc` or
//! a `static` work too). Each transaction holds the connection exclusively,
//! so 16 threads doing read-modify-write on one counter never lose an update,
//! over a single server session (no TCP or backend start-up per unit of work).
//!
//! Prints: how many threads and increments run, how long they took, how
//! many server sessions served them, and the final counter, checked against
//! the expected total.
//!
//! Run it with `cargo run --example 04_many_threads` (a throwaway server is
//! started unless `DATABASE_URL` or `PG*` is set; the table
//! `pgtx_example_04` is created and dropped).

#[path = "../tests/common/server.rs"]
mod server;

use std::collections::BTreeSet;
use std::time::Instant;

use pgtx::ManagedConnection;

const THREADS: i64 = 16;
const INCREMENTS: i64 = 25;

/// One unit of work: read the counter, then write it back plus one. Without
/// the exclusive hold, two threads could read the same value and lose an
/// increment; here the whole transaction runs with the connection held.
/// Hands back the server process that ran it.
fn increment(manager: &ManagedConnection) -> pgtx::Result<i32> {
    manager.transaction(|mut tx| {
        let n: i64 = tx.query_one("SELECT n FROM pgtx_example_04", &[])?.get(0);
        tx.execute("UPDATE pgtx_example_04 SET n = $1", &[&(n + 1)])?;
        let backend: i32 = tx.query_one("SELECT pg_backend_pid()", &[])?.get(0);
        Ok(tx.commit()?.returning(backend))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let manager = ManagedConnection::new(&server.dsn())?;
    manager.lock()?.batch_execute(
        "DROP TABLE IF EXISTS pgtx_example_04;
         CREATE TABLE pgtx_example_04 (n bigint NOT NULL);
         INSERT INTO pgtx_example_04 VALUES (0)",
    )?;

    println!("{THREADS} threads x {INCREMENTS} increments, one shared connection...");
    let started = Instant::now();
    let results: Vec<pgtx::Result<BTreeSet<i32>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                // Each thread borrows the manager; `scope` joins them all.
                s.spawn(|| (0..INCREMENTS).map(|_| increment(&manager)).collect())
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let elapsed = started.elapsed();

    let mut backends = BTreeSet::new();
    for result in results {
        backends.extend(result?);
    }
    let pids: Vec<String> = backends.iter().map(i32::to_string).collect();
    println!(
        "all threads done in {} ms; server sessions used: {} (backend pid {})",
        elapsed.as_millis(),
        pids.len(),
        pids.join(", ")
    );
    if pids.len() != 1 {
        return Err(format!("expected one server session, saw {}", pids.len()).into());
    }

    let n: i64 = manager
        .lock()?
        .query_one("SELECT n FROM pgtx_example_04", &[])?
        .get(0);
    let expected = THREADS * INCREMENTS;
    println!("counter: {n} (expected {expected})");
    if n != expected {
        return Err(format!("lost {} increment(s)", expected - n).into());
    }
    println!(
        "unfinished transactions reported: {}",
        manager.unfinished_transactions()
    );

    manager
        .lock()?
        .batch_execute("DROP TABLE pgtx_example_04")?;
    println!("done: table dropped");
    Ok(())
}

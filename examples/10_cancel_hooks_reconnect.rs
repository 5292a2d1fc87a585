//! # 10: connection hooks, cancelling a statement, and riding out an outage
//!
//! Teaches: the three txpostgres features for a long-running program.
//!
//! 1. `Builder::on_connect` sets up every new connection before anyone
//!    gets it (here `application_name` and a `search_path`).
//! 2. `manager.cancel_handle()` lets another thread cancel the statement
//!    running now: it fails with `Error::Cancelled` (a `statement_timeout`
//!    stays `Error::Db`), and its transaction is rolled back.
//! 3. `Builder::reconnect(ReconnectPolicy)`: while the server is down every
//!    call fails at once with `Error::ConnectionDead` and one background
//!    thread reconnects on the backoff schedule; `on_reconnect` handlers
//!    run once when the connection is back.
//!
//! Prints: what the server sees of the hook's settings, how long the
//! cancelled statement ran and what it left, and, during the outage, how
//! fast each call fails and when the connection came back.
//!
//! Run it with `cargo run --example 10_cancel_hooks_reconnect`. Parts 1
//! and 2 use a database of their own on the throwaway server (or the one
//! named by `DATABASE_URL` / `PG*`); part 3 stops and starts a private
//! throwaway server of its own, so it is skipped when you name your own.

#[path = "../tests/common/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgtx::{Error, ManagedConnection, ReconnectPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("pgtx_example_10");

    // 1. A hook on every new connection.
    let manager = ManagedConnection::builder(&dsn)
        .on_connect(|conn| {
            conn.batch_execute(
                "SET application_name = 'pgtx-example-10';
                 CREATE SCHEMA IF NOT EXISTS billing;
                 SET search_path = billing, public",
            )?;
            Ok(())
        })
        .build()?;
    manager
        .lock()?
        .batch_execute("CREATE TABLE invoices (n int NOT NULL)")?;
    let (name, path): (String, String) = manager.transaction(|mut tx| {
        let row = tx.query_one(
            "SELECT current_setting('application_name'), current_setting('search_path')",
            &[],
        )?;
        tx.commit_returning((row.get(0), row.get(1)))
    })?;
    println!("\n1. on_connect ran first: application_name = {name:?}, search_path = {path:?}");
    println!("   (so `invoices` was created as billing.invoices)");

    // 2. Cancelling from another thread.
    let cancel = manager.cancel_handle();
    let started = Instant::now();
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel()
        });
        manager.transaction(|mut tx| {
            tx.execute("INSERT INTO invoices VALUES (1)", &[])?;
            tx.execute("SELECT pg_sleep(30)", &[])?;
            tx.commit()
        })
    });
    match outcome {
        Err(Error::Cancelled(e)) => println!(
            "\n2. pg_sleep(30) was cancelled after {:.1?}: {}",
            started.elapsed(),
            e.as_db_error().map_or("?", |d| d.message())
        ),
        other => return Err(format!("expected Error::Cancelled, got {other:?}").into()),
    }
    let left: i64 = manager
        .lock()?
        .query_one("SELECT count(*) FROM invoices", &[])?
        .get(0);
    println!("   rows the cancelled transaction left in invoices: {left}");
    let mut guard = manager.lock()?;
    guard.batch_execute("SET statement_timeout = '100ms'")?;
    match guard.execute("SELECT pg_sleep(5)", &[]) {
        Err(e @ Error::Db(_)) => println!("   statement_timeout instead is Error::Db: {e}"),
        other => return Err(format!("expected Error::Db, got {other:?}").into()),
    }
    guard.batch_execute("RESET statement_timeout")?;
    drop(guard);
    println!(
        "   cancelling when nothing runs sends nothing: {}",
        cancel.cancel()?
    );

    // 3. An outage, on a server of our own that we can stop.
    if !server.is_private() {
        println!("\n3. skipped: your own server is not ours to stop");
        return Ok(());
    }
    let own = server::TestServer::start_private();
    let recoveries = Arc::new(AtomicUsize::new(0));
    let counted = recoveries.clone();
    let manager = ManagedConnection::builder(&(own.dsn() + " connect_timeout=2"))
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_secs(1)),
        )
        .on_reconnect(move |_conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .build()?;
    let ping = |m: &ManagedConnection| -> pgtx::Result<i32> {
        Ok(m.lock()?.query_one("SELECT 1", &[])?.get(0))
    };
    ping(&manager)?;
    println!("\n3. connected; now the server stops");
    own.stop();
    match ping(&manager) {
        Err(e) => println!("   the call that found it dead tried once, at once: {e}"),
        Ok(_) => return Err("a stopped server answered".into()),
    }
    for _ in 0..3 {
        let asked = Instant::now();
        match ping(&manager) {
            Err(e @ Error::ConnectionDead { .. }) => {
                println!("   failed in {:?}: {e}", asked.elapsed());
            }
            other => return Err(format!("expected ConnectionDead, got {other:?}").into()),
        }
    }
    own.start();
    let back = Instant::now();
    while ping(&manager).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "   the server is back; the first call succeeded {:?} later; on_reconnect ran {} time(s)",
        back.elapsed(),
        recoveries.load(Ordering::SeqCst)
    );
    Ok(())
}

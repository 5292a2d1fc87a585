//! # 08: LISTEN/NOTIFY, and the gap after a broken connection
//!
//! Teaches: receiving PostgreSQL notifications with a [`pgtx::Listener`],
//! and what happens when its connection breaks.
//!
//! - `manager.listener()` opens a connection of its own for listening
//!   (the same settings as the manager): waiting for notifications never
//!   holds the manager's connection, and other threads keep using it.
//! - `listener.listen("jobs")` subscribes; any session's `NOTIFY` or
//!   `pg_notify` on that channel arrives as a [`pgtx::ListenEvent::Notification`],
//!   with its channel, payload and the sender's backend pid. A notification
//!   sent inside a transaction arrives only once that transaction commits.
//! - `recv_timeout` waits at most so long; `timeout_iter` takes events until
//!   a quiet spell; an observer (`add_observer`) sees every event too.
//! - When the server ends the listener's session (an administrator's
//!   `pg_terminate_backend`, then a server stop and start), the listener reconnects
//!   by itself, listens to every channel again, and only then delivers one
//!   [`pgtx::ListenEvent::Reconnected`]: notifications sent while it was
//!   down may be lost, so that is the moment to re-read whatever they
//!   stand for (here: count the jobs in the table).
//!
//! Prints: each event as it arrives (the observer prints it, the main code
//! says what it did with it), the backend pid before and after each outage,
//! and how long each outage took.
//!
//! Run it with `cargo run --example 08_listen_notify`. It works in a
//! database of its own (`pgtx_example_08_...`), created on the throwaway
//! server or on the one named by `DATABASE_URL` / `PG*`, and dropped at the
//! end. The server is only stopped and started if it is the throwaway one.

#[path = "../tests/common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtx::{ListenEvent, Listener, ManagedConnection, ReconnectPolicy};

/// How long to wait for an event that should come.
const WAIT: Duration = Duration::from_secs(15);

/// Adds a job and announces it, in one transaction: listeners hear of it
/// when (and only if) it commits.
fn add_job(manager: &ManagedConnection, name: &str) -> pgtx::Result<()> {
    manager.transaction(|mut tx| {
        tx.execute("INSERT INTO jobs (name) VALUES ($1)", &[&name])?;
        tx.execute("SELECT pg_notify('jobs', $1)", &[&name])?;
        tx.commit()
    })
}

/// The next event, which must come within [`WAIT`].
fn next(listener: &mut Listener) -> Result<ListenEvent, Box<dyn std::error::Error>> {
    listener
        .recv_timeout(WAIT)?
        .ok_or_else(|| format!("no event within {WAIT:?}").into())
}

/// Waits for the notification of job `name`.
fn expect_job(listener: &mut Listener, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    match next(listener)? {
        ListenEvent::Notification(n) if n.payload() == name => {
            println!("   main: got job {name:?}");
            Ok(())
        }
        other => Err(format!("expected job {name:?}, got {other:?}").into()),
    }
}

/// Waits for the `Reconnected` that ends an outage, and re-reads the state
/// the notifications stand for.
fn expect_reconnected(
    listener: &mut Listener,
    manager: &ManagedConnection,
) -> Result<(), Box<dyn std::error::Error>> {
    match next(listener)? {
        ListenEvent::Reconnected {
            down_since,
            attempts,
            ..
        } => {
            let jobs: i64 = manager
                .lock()?
                .query_one("SELECT count(*) FROM jobs", &[])?
                .get(0);
            println!(
                "   main: reconnected after {:?} and {attempts} attempt(s), now backend pid {}; \
                 notifications may have been missed, so re-read the table: {jobs} job(s)",
                down_since.elapsed(),
                listener.backend_pid()?
            );
            Ok(())
        }
        other => Err(format!("expected Reconnected, got {other:?}").into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("pgtx_example_08");
    let dbname = dsn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .ok_or("the harness DSN names no database")?
        .to_owned();
    let manager = ManagedConnection::new(&dsn)?;
    manager
        .lock()?
        .batch_execute("CREATE TABLE jobs (id serial PRIMARY KEY, name text NOT NULL)")?;

    // 1. A listener of its own, listening to one channel.
    let mut listener = manager.listener()?;
    // The default policy retries at once, then after 1.7 s growing ×1.7 up
    // to 10 s (each wait ±12 %), for ever; quicker here, so that the
    // example is quick.
    listener.set_reconnect_policy(
        ReconnectPolicy::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(2)),
    );
    listener.add_observer(Arc::new(|event: &ListenEvent| {
        match event {
            ListenEvent::Notification(n) => println!(
                "   observer: notification on {:?}: {:?} (from backend pid {})",
                n.channel(),
                n.payload(),
                n.process_id()
            ),
            ListenEvent::Reconnected { .. } => println!("   observer: reconnected"),
            other => println!("   observer: {other:?}"),
        }
        Ok(())
    }));
    listener.listen("jobs")?;
    let pid = listener.backend_pid()?;
    println!("\n1. listening to \"jobs\" on backend pid {pid}");

    // 2. Notifications arrive when the transaction that sent them commits.
    println!("\n2. a notification sent in a transaction");
    let mut tx = manager.lock()?.begin()?;
    tx.execute("SELECT pg_notify('jobs', 'uncommitted')", &[])?;
    let early = listener.recv_timeout(Duration::from_millis(300))?;
    println!("   before COMMIT, after 300 ms: {early:?}");
    if early.is_some() {
        return Err("a notification arrived before its transaction committed".into());
    }
    tx.commit()?;
    expect_job(&mut listener, "uncommitted")?;
    for name in ["build", "test", "deploy"] {
        add_job(&manager, name)?;
    }
    let burst: Vec<String> = listener
        .timeout_iter(Duration::from_millis(300))
        .map(|event| match event? {
            ListenEvent::Notification(n) => Ok(n.payload().to_owned()),
            other => Err(format!("unexpected {other:?}").into()),
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    println!("   then three jobs, in the order sent: {burst:?}");
    if burst != ["build", "test", "deploy"] {
        return Err("the three jobs did not arrive in order".into());
    }

    // 3. An administrator ends the listener's session.
    println!("\n3. pg_terminate_backend({pid}) on the listener's session");
    server
        .admin()
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])?;
    // The next receiving call notices, reconnects, LISTENs again, and says so.
    expect_reconnected(&mut listener, &manager)?;
    add_job(&manager, "after the kill")?;
    expect_job(&mut listener, "after the kill")?;

    // 4. The whole server stops, and starts again a little later (only a
    //    throwaway server of our own).
    if server.is_private() {
        println!("\n4. pg_ctl stop: the server ends every session and goes away");
        server.stop();
        // Meanwhile the listener keeps trying, on its schedule, whenever a
        // receiving method runs; a notification cannot come.
        let started = Instant::now();
        let meanwhile = listener.recv_timeout(Duration::from_millis(500))?;
        println!(
            "   while it is down, recv_timeout(500 ms) gives {meanwhile:?} after {:?}",
            started.elapsed()
        );
        if meanwhile.is_some() {
            return Err("an event arrived while the server was down".into());
        }
        server.start();
        println!("   pg_ctl start: the server is back");
        expect_reconnected(&mut listener, &manager)?;
        // The manager's own connection broke too; it reconnects by itself.
        add_job(&manager, "after the restart")?;
        expect_job(&mut listener, "after the restart")?;
    } else {
        println!("\n4. (skipped: not stopping a server this example did not start)");
    }

    // Nothing else is due: each outage was announced exactly once.
    if let Some(extra) = listener.recv_timeout(Duration::from_millis(300))? {
        return Err(format!("unexpected {extra:?}").into());
    }
    println!("\nno further events: each outage was announced once");

    drop(listener);
    manager.close()?;
    server
        .admin()
        .batch_execute(&format!("DROP DATABASE \"{dbname}\""))?;
    println!("database {dbname} dropped");
    Ok(())
}

//! # 05: what the compiler cannot see
//!
//! Teaches: the run-time fallback behind the typestate. Rust cannot force a
//! value to be consumed, so a `Tx<Open>` can still be dropped (an early `?`
//! return, a panic) or leaked with `mem::forget`. pgtx rolls each of those
//! back before anyone else gets the connection, and reports it as
//! [`pgtx::Error::UnfinishedTransaction`]: a `log::error!` line (this example
//! installs a tiny logger that prints them to stderr) and a counter,
//! [`pgtx::ManagedConnection::unfinished_transactions`].
//!
//! Prints: for each case, what happened, the `log` line (on stderr), the
//! counter, the transaction status, and the rows that are really committed,
//! read over a second, independent connection.
//!
//! Run it with `cargo run --example 05_fallbacks` (a throwaway server is
//! started unless `DATABASE_URL` or `PG*` is set; the table
//! `pgtx_example_05` is created and dropped). The panic in case 3 is on
//! purpose.

#[path = "../tests/common/server.rs"]
mod server;

use pgtx::ManagedConnection;

/// Prints `log` records of level warn and above to stderr. Any logger works
/// (`env_logger`, `tracing`'s `log` bridge, ...); this one keeps the example
/// free of extra dependencies.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "   [log {} {}] {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn insert(tx: &mut pgtx::Tx<'_>, note: &str) -> pgtx::Result<u64> {
    tx.execute("INSERT INTO pgtx_example_05 (note) VALUES ($1)", &[&note])
}

/// Case 1: a function that returns early with `?` while its `Tx<Open>` is in
/// scope. The parse error is unrelated to the database; the `Tx` is dropped
/// unfinished on the way out.
fn record_quantity(
    manager: &ManagedConnection,
    quantity: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = manager.lock()?.begin()?;
    insert(&mut tx, "case 1: inserted before the early return")?;
    let quantity: i32 = quantity.parse()?;
    tx.execute(
        "INSERT INTO pgtx_example_05 (note) VALUES ($1)",
        &[&quantity.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Shows the counter, the status, and what another connection sees committed.
/// How long a hold may run nothing before it counts as forgotten.
const ABANDON_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Asks for the connection on this thread until the hold it forgot is
/// taken over: refused as re-entrant until that hold has run nothing for
/// `ABANDON_AFTER`.
fn take_over(manager: &ManagedConnection) -> Result<pgtx::Guard<'_>, pgtx::Error> {
    loop {
        match manager.lock() {
            Err(pgtx::Error::Reentrant) => std::thread::sleep(ABANDON_AFTER / 10),
            other => return other,
        }
    }
}

fn show(
    manager: &ManagedConnection,
    observer: &mut postgres::Client,
) -> Result<(), postgres::Error> {
    let notes: Vec<String> = observer
        .query("SELECT note FROM pgtx_example_05 ORDER BY id", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    println!(
        "   unfinished transactions: {}; status: {}; committed rows: {:?}",
        manager.unfinished_transactions(),
        manager.status(),
        notes
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    log::set_logger(&LOGGER).map_err(|e| e.to_string())?;
    log::set_max_level(log::LevelFilter::Warn);

    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    // A short `abandon_after` (30 s by default), so that case 2 and 4 need
    // not wait long for a forgotten hold to be taken over.
    let manager = ManagedConnection::builder(&server.dsn())
        .abandon_after(Some(ABANDON_AFTER))
        .build()?;
    manager.lock()?.batch_execute(
        "DROP TABLE IF EXISTS pgtx_example_05;
         CREATE TABLE pgtx_example_05 (id serial PRIMARY KEY, note text NOT NULL);
         INSERT INTO pgtx_example_05 (note) VALUES ('committed before the cases')",
    )?;
    // A second connection, outside the manager, to see what is really committed.
    let mut observer = server.admin();
    println!("start:");
    show(&manager, &mut observer)?;

    // Case 1: dropped unfinished.
    println!("\n1. a Tx<Open> dropped by an early `?` return");
    match record_quantity(&manager, "three") {
        Err(e) => println!("   record_quantity returned: {e}"),
        Ok(()) => return Err("\"three\" parsed as a number".into()),
    }
    show(&manager, &mut observer)?;

    // Case 2: leaked with mem::forget. Nothing runs at that point...
    println!("\n2. a Tx<Open> leaked with mem::forget");
    let mut tx = manager.lock()?.begin()?;
    insert(&mut tx, "case 2: inserted, then the Tx was forgotten")?;
    std::mem::forget(tx);
    println!("   forgotten; the transaction is still open on the server:");
    show(&manager, &mut observer)?;
    // ...until the next acquirer. The same thread asking again at once is
    // refused: the earlier hold could still be alive (a helper called with
    // a guard in scope).
    match manager.lock() {
        Err(e @ pgtx::Error::Reentrant) => println!("   lock() again at once: {e}"),
        other => return Err(format!("expected Reentrant, got {other:?}").into()),
    }
    // Once it has run nothing for `abandon_after`, it counts as forgotten:
    // rolled back, reported, and taken over.
    let mut guard = take_over(&manager)?;
    let rows: i64 = guard
        .query_one("SELECT count(*) FROM pgtx_example_05", &[])?
        .get(0);
    drop(guard);
    println!(
        "   after {ABANDON_AFTER:?} with nothing run, lock() took over; it sees {rows} row(s)"
    );
    show(&manager, &mut observer)?;

    // Case 3: a panic while a transaction is open, on one of four threads.
    println!("\n3. one of four threads panics inside its transaction");
    // A one-line panic message instead of the default (and any backtrace).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("(no message)");
        eprintln!("   [panic] {message}");
    }));
    let outcomes: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (1..=4)
            .map(|worker| {
                let manager = &manager;
                s.spawn(move || {
                    manager.transaction(|mut tx| {
                        insert(&mut tx, &format!("case 3: thread {worker}"))?;
                        if worker == 2 {
                            panic!("thread {worker} panics on purpose");
                        }
                        tx.commit()
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| match worker.join() {
                Ok(Ok(())) => "committed".to_owned(),
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "panicked; its transaction was rolled back".to_owned(),
            })
            .collect()
    });
    std::panic::set_hook(default_hook);
    for (worker, outcome) in (1..=4).zip(&outcomes) {
        println!("   thread {worker}: {outcome}");
    }
    show(&manager, &mut observer)?;

    // Case 4: a holder that was taken over cannot do any more harm.
    println!("\n4. a Tx taken over by a newer holder once it looked forgotten");
    let mut stale = manager.lock()?.begin()?;
    insert(&mut stale, "case 4: inserted by the stale holder")?;
    let newer = take_over(&manager)?; // `stale` ran nothing for abandon_after: lost
    match insert(&mut stale, "case 4: after the takeover") {
        Err(e @ pgtx::Error::LeaseRevoked) => println!("   the stale Tx's next statement: {e}"),
        other => return Err(format!("expected LeaseRevoked, got {other:?}").into()),
    }
    match stale.commit() {
        Err(e) => println!("   and its commit(): {e}"),
        Ok(_) => return Err("a revoked Tx committed".into()),
    }
    drop(newer);
    show(&manager, &mut observer)?;

    let unfinished = manager.unfinished_transactions();
    let committed: i64 = observer
        .query_one("SELECT count(*) FROM pgtx_example_05", &[])?
        .get(0);
    println!(
        "\nin all: {unfinished} unfinished transactions rolled back and reported; {committed} rows committed"
    );
    if unfinished != 4 || committed != 4 {
        return Err("expected 4 reports and 4 committed rows (1 + threads 1, 3, 4)".into());
    }
    manager
        .lock()?
        .batch_execute("DROP TABLE pgtx_example_05")?;
    println!("done: table dropped");
    Ok(())
}

//! # 15: replicas and failover
//!
//! Teaches: one host list for a primary and its standby, read two ways
//! (`target_session_attrs`, or `Builder::target`), and what happens to
//! writes when the primary dies and the standby is promoted.
//!
//! 1. Starts a primary and a streaming standby (`pg_basebackup -R`) whose
//!    commits wait for the standby (`synchronous_standby_names`).
//! 2. A pool for writes (`SessionTarget::ReadWrite`) and one for reads
//!    (`SessionTarget::PreferStandby`) from the same list, which names the
//!    standby first: writes go to the primary, reads to the standby.
//! 3. Four threads write; the primary is stopped as by a crash
//!    (`pg_ctl stop -m immediate`), then the standby is promoted
//!    (`pg_ctl promote`). Writes fail while no primary is up, with the
//!    error that says why, and resume on the promoted server, found by the
//!    same host list.
//! 4. Every write reported `Ok` is on the new primary.
//!
//! Prints: where each pool's transactions ran, how the writes fared
//! around the failover, and the check of every acknowledged write.
//!
//! Run it with `cargo run --example 15_failover`. It starts its own two
//! servers (a failover needs servers it may stop), whatever `DATABASE_URL`
//! says.

#[path = "../tests/common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use pgtx::{Error, ManagedConnection, Pool, SessionTarget, TxOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    println!("starting a primary and a synchronous streaming standby ...");
    let primary = server::TestServer::start_private_with(&[
        ("synchronous_standby_names", "*"),
        ("synchronous_commit", "on"),
    ]);
    let standby = primary.start_replica();
    primary
        .admin()
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY)")?;
    primary.wait_for_replay(&standby);
    println!(
        "primary on port {}, standby on port {}",
        primary.port(),
        standby.port()
    );

    // The standby first: the list's order does not decide, the target does.
    let servers = ManagedConnection::builder(&format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres connect_timeout=5",
        standby.port(),
        primary.port()
    ));
    let writes = servers
        .clone()
        .target(SessionTarget::ReadWrite)
        .pool(4)
        .build()?;
    let reads = servers
        .target(SessionTarget::PreferStandby)
        .pool(2)
        .build()?;
    println!(
        "\nwrites run on port {}, reads on port {}",
        port_of(&writes, TxOptions::new())?,
        port_of(&reads, TxOptions::new().read_only(true))?
    );

    println!("\nfour threads write; the primary dies, then the standby is promoted");
    let next_id = AtomicI64::new(1);
    let running = AtomicBool::new(true);
    let acknowledged = Mutex::new(Vec::new());
    let failures: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    /// Stops the writers however the scope's body ends.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let (down_for, first_after) = std::thread::scope(|s| -> Result<_, BoxError> {
        let _stop = StopOnDrop(&running);
        for _ in 0..4 {
            s.spawn(|| {
                while running.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let outcome = writes.transaction(|mut tx| {
                        tx.execute("INSERT INTO orders VALUES ($1)", &[&id])?;
                        tx.commit()
                    });
                    match outcome {
                        Ok(()) => lock(&acknowledged).push((id, Instant::now())),
                        Err(e) => {
                            *lock(&failures).entry(kind(&e)).or_default() += 1;
                            // A client's pause before it tries again.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            });
        }
        let wait_until = |what: &str, enough: &dyn Fn() -> bool| -> Result<(), BoxError> {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !enough() {
                if Instant::now() > deadline {
                    running.store(false, Ordering::SeqCst);
                    return Err(format!("gave up waiting for {what}").into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        };
        wait_until("writes", &|| lock(&acknowledged).len() >= 100)?;
        println!("  {} writes acknowledged", lock(&acknowledged).len());
        primary.stop_immediate();
        let stopped = Instant::now();
        println!("  primary stopped (-m immediate)");
        wait_until("failed writes", &|| !lock(&failures).is_empty())?;
        std::thread::sleep(Duration::from_millis(200));
        standby.promote();
        let promoted = Instant::now();
        println!("  standby promoted");
        let before = lock(&acknowledged).len();
        wait_until("writes on the new primary", &|| {
            lock(&acknowledged).len() >= before + 100
        })?;
        running.store(false, Ordering::SeqCst);
        let first_after = lock(&acknowledged)
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at > promoted)
            .min()
            .map(|at| at.duration_since(promoted));
        Ok((promoted.duration_since(stopped), first_after))
    })?;
    match first_after {
        Some(after) => println!(
            "  no primary for {down_for:?}; first write acknowledged {after:?} after the promotion"
        ),
        None => println!("  no primary for {down_for:?}"),
    }
    for (kind, n) in lock(&failures).iter() {
        println!("  {n} writes ended meanwhile in {kind}");
    }

    let acknowledged = acknowledged.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut check = standby.admin();
    let mut missing = 0;
    for (id, _) in &acknowledged {
        if check
            .query_opt("SELECT 1 FROM orders WHERE id = $1", &[id])?
            .is_none()
        {
            missing += 1;
        }
    }
    println!(
        "\n{} writes acknowledged in all; missing on the new primary: {missing}",
        acknowledged.len()
    );
    println!(
        "writes now run on port {} (the promoted standby)",
        port_of(&writes, TxOptions::new())?
    );
    if missing > 0 {
        return Err("an acknowledged write is missing".into());
    }
    Ok(())
}

/// The port of the server a transaction on `pool` runs on.
fn port_of(pool: &Pool, options: TxOptions) -> Result<i32, Error> {
    pool.transaction_with(options, |mut tx| {
        let port: i32 = tx.query_one("SELECT inet_server_port()", &[])?.get(0);
        tx.commit_returning(port)
    })
}

/// The error's variant, for the tally.
fn kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    let end = debug.find(['(', ' ', '{']).unwrap_or(debug.len());
    match e {
        // Every server tried, one line each: joined.
        Error::Connect(c) => format!("Connect ({})", c.to_string().replace('\n', "; ")),
        _ => debug[..end].to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

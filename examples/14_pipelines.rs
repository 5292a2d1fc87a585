//! # 14: a transaction in one round trip
//!
//! Teaches: `Pipeline`, for transactions whose statements do not need each
//! other's answers to be written.
//!
//! 1. Over a link with 1 ms of round trip (a proxy this example starts, as
//!    a same-region network): a transfer of four statements run one by
//!    one takes a round trip each, plus COMMIT's; the same four queued in
//!    a `Pipeline` and sent with `tx.commit_pipeline(&pipeline)` take one
//!    round trip in all, `BEGIN` and `COMMIT` included.
//! 2. The results come back per statement, read with the ticket each
//!    `execute` / `query` returned.
//! 3. The error rule: when statement *i* fails, the server skips the rest,
//!    nothing is committed, and `Error::PipelineFailed` names *i* and how
//!    many were skipped.
//! 4. What a pipeline refuses before anything is sent: transaction control,
//!    and statements that cannot run inside a transaction block (`VACUUM`).
//! 5. `tx.run_pipeline(&pipeline)` runs a batch inside a transaction that
//!    goes on afterwards.
//!
//! Prints: the time per transfer both ways, the results, the error of the
//! failed pipeline, the balances after it, and the refusal.
//!
//! Run it with `cargo run --example 14_pipelines`. It works in a database
//! of its own on the throwaway server (or on the one named by
//! `DATABASE_URL` / `PG*`).

#[path = "../tests/common/server.rs"]
mod server;

#[path = "../benches/throughput/latency.rs"]
mod latency;

use std::time::{Duration, Instant};

use pgtx::{Error, ManagedConnection, Pipeline};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TRANSFERS: i32 = 50;

fn main() -> Result<(), BoxError> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("example_14");
    server.admin_on(&dsn).batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
         CREATE TABLE transfers (from_id int, to_id int, amount bigint);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;",
    )?;
    let target = server
        .loopback_addr()
        .ok_or("the server does not listen on loopback")?;
    let far = latency::LatencyProxy::start(target, Duration::from_micros(500))?;
    // The same database, reached through the proxy (a later host and port
    // replace the earlier ones, as in libpq).
    let far_dsn = format!(
        "{} host={} port={}",
        dsn,
        far.addr().ip(),
        far.addr().port()
    );
    let manager = ManagedConnection::new(&far_dsn)?;

    // 1. One by one, then pipelined.
    let one_by_one = time_transfers(|from, to, amount| {
        let mut tx = manager.lock()?.begin()?;
        tx.execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            &[&amount, &from],
        )?;
        tx.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            &[&amount, &to],
        )?;
        tx.execute(
            "INSERT INTO transfers VALUES ($1, $2, $3)",
            &[&from, &to, &amount],
        )?;
        let left: i64 = tx
            .query_one("SELECT balance FROM accounts WHERE id = $1", &[&from])?
            .get(0);
        tx.commit()?;
        Ok(left)
    })?;
    let pipelined = time_transfers(|from, to, amount| {
        let tx = manager.lock()?.begin()?;
        let mut pipeline = Pipeline::new();
        pipeline.execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            &[&amount, &from],
        );
        pipeline.execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            &[&amount, &to],
        );
        pipeline.execute(
            "INSERT INTO transfers VALUES ($1, $2, $3)",
            &[&from, &to, &amount],
        );
        let balance = pipeline.query("SELECT balance FROM accounts WHERE id = $1", &[&from]);
        let (_done, results) = tx.commit_pipeline(&pipeline)?;
        Ok(results.get(balance).map_or(0, |rows| rows[0].get(0)))
    })?;
    println!(
        "1. {TRANSFERS} transfers over a 1 ms link: {:.2} ms each one statement at a time \
         (five round trips), {:.2} ms each as a pipeline (one round trip)",
        one_by_one.as_secs_f64() * 1e3 / f64::from(TRANSFERS),
        pipelined.as_secs_f64() * 1e3 / f64::from(TRANSFERS),
    );

    // 2. Results per statement.
    let tx = manager.lock()?.begin()?;
    let mut pipeline = Pipeline::new();
    let debited = pipeline.execute(
        "UPDATE accounts SET balance = balance - 1 WHERE id <= 3",
        &[],
    );
    let richest = pipeline.query(
        "SELECT id, balance FROM accounts ORDER BY balance DESC, id LIMIT 2",
        &[],
    );
    let (done, results) = tx.commit_pipeline(&pipeline)?;
    done.release(); // the connection is free again; the results stay
    let top: Vec<(i32, i64)> = results
        .get(richest)
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    println!(
        "2. the UPDATE touched {} rows; the two richest accounts: {top:?}",
        results.get(debited).copied().unwrap_or(0)
    );

    // 3. The error rule: the third statement breaks the CHECK.
    let before = balances(&manager)?;
    let tx = manager.lock()?.begin()?;
    let mut pipeline = Pipeline::new();
    pipeline.execute(
        "UPDATE accounts SET balance = balance + 5 WHERE id = 1",
        &[],
    );
    pipeline.execute("INSERT INTO transfers VALUES (0, 1, 5)", &[]);
    pipeline.execute(
        "UPDATE accounts SET balance = balance - 1000000 WHERE id = 2",
        &[],
    );
    pipeline.execute("INSERT INTO transfers VALUES (2, 0, 1000000)", &[]);
    match tx.commit_pipeline(&pipeline) {
        Err(Error::PipelineFailed {
            index,
            skipped,
            source,
        }) => println!(
            "3. statement {index} failed ({source}); {skipped} skipped; balances 1 and 2 \
             before: {before:?}, after: {:?} (nothing committed)",
            balances(&manager)?
        ),
        other => println!("3. unexpected: {:?}", other.map(drop)),
    }

    // 4. Refused before anything is sent.
    let tx = manager.lock()?.begin()?;
    let mut pipeline = Pipeline::new();
    pipeline.execute("UPDATE accounts SET balance = 0", &[]);
    pipeline.execute("VACUUM accounts", &[]);
    if let Err(e) = tx.commit_pipeline(&pipeline) {
        println!("4. refused: {e}");
    }

    // 5. A batch inside a transaction that goes on.
    let mut tx = manager.lock()?.begin()?;
    let ids = [1_i32, 2, 3];
    let mut pipeline = Pipeline::new();
    for id in &ids {
        pipeline.execute("INSERT INTO transfers VALUES ($1, 0, 0)", &[id]);
    }
    let batch = tx.run_pipeline(&pipeline)?;
    let count: i64 = tx.query_one("SELECT count(*) FROM transfers", &[])?.get(0);
    tx.commit()?;
    println!(
        "5. a batch of {} inserts in one round trip inside a transaction, which went on: \
         {count} transfers recorded",
        batch.len()
    );
    Ok(())
}

/// Runs `TRANSFERS` transfers between accounts with `transfer`; the time
/// they took.
fn time_transfers(
    mut transfer: impl FnMut(i32, i32, i64) -> Result<i64, Error>,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    for n in 0..TRANSFERS {
        let (from, to) = (n % 100 + 1, (n * 7 + 3) % 100 + 1);
        transfer(from, to, 1)?;
    }
    Ok(started.elapsed())
}

/// The balances of accounts 1 and 2.
fn balances(manager: &ManagedConnection) -> Result<(i64, i64), Error> {
    let mut guard = manager.lock()?;
    let row = guard.query_one(
        "SELECT (SELECT balance FROM accounts WHERE id = 1), \
         (SELECT balance FROM accounts WHERE id = 2)",
        &[],
    )?;
    Ok((row.get(0), row.get(1)))
}

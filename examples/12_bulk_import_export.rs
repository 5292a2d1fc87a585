//! # 12: a bulk import and a large export
//!
//! Teaches: moving many rows without a statement per row.
//!
//! 1. `tx.copy_in("COPY … FROM STDIN")` gives a `CopyInWriter` (an
//!    `io::Write`): 100,000 rows written as COPY's text format, ended with
//!    `finish()`, which says how many rows the server stored. Inside a
//!    transaction, the import commits or rolls back with it.
//! 2. The same with typed values: `BinaryCopyInWriter` encodes each value as
//!    its column's type (`FORMAT binary`), no text formatting.
//! 3. A bad row: the server's error comes from `finish()`, nothing of that
//!    COPY is stored, and `commit()` says the transaction was aborted.
//! 4. A writer dropped before `finish()` (an early `?`, a panic): the COPY
//!    fails, stores nothing, and the fallback reports it.
//! 5. A large export read as it arrives: `query_raw` yields the rows one by
//!    one with bounded memory, and `copy_out("COPY … TO STDOUT")` gives an
//!    `io::Read` of CSV.
//! 6. A portal: `bind` a query and fetch its rows a batch at a time, to stop
//!    after the first few.
//!
//! Prints: each step's row counts and timings, the error of the bad row,
//! and the first lines of the CSV.
//!
//! Run it with `cargo run --example 12_bulk_import_export`. It works in a
//! database of its own on the throwaway server (or on the one named by
//! `DATABASE_URL` / `PG*`).

#[path = "../tests/common/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Write};
use std::time::Instant;

use pgtx::binary_copy::BinaryCopyInWriter;
use pgtx::types::Type;
use pgtx::{Error, ManagedConnection};

const ROWS: i64 = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let manager = ManagedConnection::new(&server.fresh_database("example_12"))?;
    manager.lock()?.batch_execute(
        "CREATE TABLE readings (id int8 PRIMARY KEY, sensor text NOT NULL, value float8 NOT NULL)",
    )?;

    // 1. COPY's text format: one line per row, tab-separated.
    let started = Instant::now();
    let mut tx = manager.lock()?.begin()?;
    let mut writer = tx.copy_in("COPY readings (id, sensor, value) FROM STDIN")?;
    for id in 0..ROWS {
        writeln!(writer, "{id}\tsensor-{}\t{}", id % 10, id as f64 / 4.0)?;
    }
    let stored = writer.finish()?;
    tx.commit()?;
    println!(
        "1. text COPY: {stored} rows stored and committed in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // 2. Typed rows: the binary format, each value encoded as its type.
    let started = Instant::now();
    let mut tx = manager.lock()?.begin()?;
    let writer = tx.copy_in("COPY readings (id, sensor, value) FROM STDIN (FORMAT binary)")?;
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::TEXT, Type::FLOAT8])?;
    for id in ROWS..2 * ROWS {
        writer.write(&[&id, &format!("sensor-{}", id % 10), &(id as f64 / 4.0)])?;
    }
    let stored = writer.finish()?;
    tx.commit()?;
    println!(
        "2. binary COPY: {stored} rows stored and committed in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // 3. A bad row fails the whole COPY, and the transaction with it.
    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO readings VALUES (-1, 'manual', 0)", &[])?;
    let mut writer = tx.copy_in("COPY readings (id, sensor, value) FROM STDIN")?;
    writer.write_all(b"-2\tsensor-x\t1.5\n-3\tsensor-y\tnot a number\n")?;
    match writer.finish() {
        Err(e) => println!("3. a bad row: finish() says: {e}"),
        Ok(n) => println!("3. unexpected: {n} rows stored"),
    }
    match tx.commit() {
        Err(Error::TransactionAborted(_)) => {
            println!(
                "   commit() says the transaction was aborted: the INSERT before it is gone too"
            )
        }
        other => println!("   unexpected: {other:?}"),
    }

    // 4. A writer dropped before finish(): nothing is stored, and it is reported.
    let before = manager.unfinished_transactions();
    let mut guard = manager.lock()?;
    let mut writer = guard.copy_in("COPY readings (id, sensor, value) FROM STDIN")?;
    writeln!(writer, "-4\tsensor-z\t2.5")?;
    drop(writer);
    let count: i64 = guard
        .query_one("SELECT count(*) FROM readings", &[])?
        .get(0);
    println!(
        "4. a dropped writer: {} reported, {count} rows in the table (none from it)",
        manager.unfinished_transactions() - before
    );

    // 5. A large export, read as it arrives.
    let started = Instant::now();
    let (mut total, mut rows) = (0.0, 0_u64);
    for row in guard.query_raw("SELECT value FROM readings ORDER BY id", &[])? {
        total += row?.get::<_, f64>(0);
        rows += 1;
    }
    println!(
        "5. query_raw: {rows} rows summed to {total} in {:.0} ms, one at a time",
        started.elapsed().as_secs_f64() * 1e3
    );
    let reader = guard.copy_out(
        "COPY (SELECT id, sensor, value FROM readings ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
    )?;
    let mut lines = BufReader::new(reader).lines();
    println!("   copy_out as CSV, the first lines:");
    for line in lines.by_ref().take(3) {
        println!("     {}", line?);
    }
    let rest = lines.count();
    println!("     … and {rest} more lines");

    // 6. A portal: fetch a batch, stop early.
    let mut tx = guard.begin()?;
    let portal = tx.bind(
        "SELECT id FROM readings WHERE sensor = $1 ORDER BY id",
        &[&"sensor-3"],
    )?;
    let first: Vec<i64> = tx
        .query_portal(&portal, 5)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.commit()?;
    println!(
        "6. a portal: the first 5 readings of sensor-3: {first:?} (the rest never left the server)"
    );
    Ok(())
}

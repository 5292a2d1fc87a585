//! Bulk loads and large reads: 1,000,000 rows written with pgtx's COPY
//! (text and binary) beside the `postgres` crate's `copy_in` and pgtx's
//! best INSERT (`unnest` of arrays, 10,000 rows a statement), and
//! 1,000,000 rows read with pgtx's `query_raw` beside the `postgres`
//! crate's, with the peak memory each read took.
//!
//! Each case runs once per round, the cases taking turns in a different
//! order every round; the median round is reported. Every load goes into
//! an empty table inside a transaction that commits (the `postgres` crate's
//! in `Client::transaction`), so each side pays the same server work.
//! Each read runs in a process of its own (this benchmark started again),
//! connected before it starts, so that the rise of the process's peak
//! resident memory (VmHWM above VmRSS before the read) is the read's.

use std::fmt::Write as _;
use std::time::Instant;

use pgtx::ManagedConnection;
use pgtx::binary_copy::BinaryCopyInWriter;
use pgtx::types::Type;
use postgres::{Client, NoTls};

use super::BoxError;

/// Rows per load and per read.
pub const ROWS: i64 = 1_000_000;

/// Rows per INSERT statement in the INSERT case.
const INSERT_BATCH: usize = 10_000;

/// Set in the child process that runs one read case: its key.
pub const CHILD_READ: &str = "PGTX_BENCH_BULK_READ";
/// Set in that child: the database to read.
const CHILD_DSN: &str = "PGTX_BENCH_BULK_DSN";

/// A figure of `/proc/self/status`, in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// In the child process: runs the read case `key` once, connected first,
/// and prints its time and how far the process's peak resident memory
/// (VmHWM) rose above what it used before the read.
pub fn child_read(key: &str) -> Result<(), BoxError> {
    let dsn = std::env::var(CHILD_DSN)?;
    let manager = ManagedConnection::new(&dsn)?;
    manager.lock()?.query_one("SELECT 1", &[])?;
    let mut client = Client::connect(&dsn, NoTls)?;
    client.query_one("SELECT 1", &[])?;
    let before = proc_status_kib("VmRSS:").ok_or("no VmRSS")?;
    let started = Instant::now();
    let sum = read(key, &manager, &mut client)?;
    let secs = started.elapsed().as_secs_f64();
    let peak = proc_status_kib("VmHWM:").ok_or("no VmHWM")?;
    println!("PGTX_BULK {secs} {} {sum}", peak.saturating_sub(before));
    Ok(())
}

/// Runs the read case `key` in a child process: its time, the rise of the
/// process's peak memory in KiB, and the sum it read.
fn read_in_child(key: &str, dsn: &str) -> Result<(f64, u64, i64), BoxError> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(CHILD_READ, key)
        .env(CHILD_DSN, dsn)
        .stdin(std::process::Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PGTX_BULK "))
        .ok_or_else(|| {
            format!(
                "read case {key}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let mut figures = line.split(' ');
    let mut next = || figures.next().ok_or("a short PGTX_BULK line");
    Ok((next()?.parse()?, next()?.parse()?, next()?.parse()?))
}

/// One row's text line (the same in every text case).
fn write_line(out: &mut impl std::io::Write, id: i64) -> std::io::Result<()> {
    writeln!(out, "{id}\tnote number {id}\t{}.5", id % 1000)
}

fn note(id: i64) -> String {
    format!("note number {id}")
}

fn amount(id: i64) -> f64 {
    (id % 1000) as f64 + 0.5
}

const COPY_SQL: &str = "COPY bulk_items (id, note, amount) FROM STDIN";
const COPY_BINARY_SQL: &str = "COPY bulk_items (id, note, amount) FROM STDIN (FORMAT binary)";
const TYPES: [Type; 3] = [Type::INT8, Type::TEXT, Type::FLOAT8];
const READ_SQL: &str = "SELECT id, note, amount FROM bulk_items";

struct LoadCase {
    key: &'static str,
    label: &'static str,
    secs: Vec<f64>,
}

struct ReadCase {
    key: &'static str,
    label: &'static str,
    secs: Vec<f64>,
    /// The rise of the process's peak resident memory, KiB.
    peaks: Vec<u64>,
}

/// What the bulk cases measured.
pub struct Bulk {
    loads: Vec<LoadCase>,
    reads: Vec<ReadCase>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Bulk {
    /// Runs every case `rounds` times against the database of `dsn`.
    pub fn measure(dsn: &str, rounds: usize) -> Result<Bulk, BoxError> {
        let mut admin = Client::connect(dsn, NoTls)?;
        admin.batch_execute(
            "DROP TABLE IF EXISTS bulk_items;
             CREATE TABLE bulk_items (id int8 NOT NULL, note text NOT NULL, amount float8 NOT NULL)",
        )?;
        let manager = ManagedConnection::new(dsn)?;
        let mut client = Client::connect(dsn, NoTls)?;
        let mut loads = vec![
            LoadCase {
                key: "postgres_text",
                label: "postgres crate, copy_in, text",
                secs: vec![],
            },
            LoadCase {
                key: "pgtx_text",
                label: "pgtx, copy_in, text",
                secs: vec![],
            },
            LoadCase {
                key: "postgres_binary",
                label: "postgres crate, BinaryCopyInWriter",
                secs: vec![],
            },
            LoadCase {
                key: "pgtx_binary",
                label: "pgtx, BinaryCopyInWriter",
                secs: vec![],
            },
            LoadCase {
                key: "pgtx_insert",
                label: "pgtx, INSERT … SELECT unnest($1, $2, $3), 10,000 rows a statement",
                secs: vec![],
            },
        ];
        let mut reads = vec![
            ReadCase {
                key: "postgres_raw",
                label: "postgres crate, query_raw",
                secs: vec![],
                peaks: vec![],
            },
            ReadCase {
                key: "pgtx_raw",
                label: "pgtx, query_raw",
                secs: vec![],
                peaks: vec![],
            },
        ];
        for round in 0..rounds {
            for i in 0..loads.len() {
                let n = loads.len();
                let case = &mut loads[(i + round) % n];
                admin.batch_execute("TRUNCATE bulk_items")?;
                // Each load starts with no dirty buffers to write: otherwise a
                // checkpoint the previous load's 100 MB of WAL set off lands
                // in the middle of this one (rounds differed by 1.6x). Only a
                // superuser (or pg_checkpoint) may; on another server the
                // noise stays, nothing else changes.
                let _ = admin.batch_execute("CHECKPOINT");
                let started = Instant::now();
                let rows = load(case.key, &manager, &mut client)?;
                let secs = started.elapsed().as_secs_f64();
                if rows != ROWS as u64 {
                    return Err(format!("{}: {rows} rows loaded", case.label).into());
                }
                eprintln!(
                    "  bulk round {}/{rounds}: {:<70} {secs:>6.3} s",
                    round + 1,
                    case.label
                );
                case.secs.push(secs);
            }
            for i in 0..reads.len() {
                let n = reads.len();
                let case = &mut reads[(i + round) % n];
                let (secs, peak, sum) = read_in_child(case.key, dsn)?;
                if sum != ROWS * (ROWS - 1) / 2 {
                    return Err(format!("{}: read a sum of {sum}", case.label).into());
                }
                eprintln!(
                    "  bulk round {}/{rounds}: {:<70} {secs:>6.3} s, peak memory +{peak} KiB",
                    round + 1,
                    case.label,
                );
                case.secs.push(secs);
                case.peaks.push(peak);
            }
        }
        admin.batch_execute("DROP TABLE bulk_items")?;
        Ok(Bulk { loads, reads })
    }

    /// The section, in Markdown.
    pub fn markdown(&self) -> String {
        let load = |key: &str| {
            self.loads
                .iter()
                .find(|c| c.key == key)
                .map(|c| median(&c.secs))
        };
        let read = |key: &str| self.reads.iter().find(|c| c.key == key);
        let mut m = String::new();
        let _ = writeln!(
            m,
            "{ROWS} rows of `(id int8, note text, amount float8)`, loaded into an empty table \
             inside a transaction that commits, then read back whole; each case once a round, \
             median of the rounds.\n"
        );
        let _ = writeln!(
            m,
            "| load | seconds (median) | rows/s | vs postgres crate, same format |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|");
        for case in &self.loads {
            let secs = median(&case.secs);
            let peer = if case.key.ends_with("binary") {
                load("postgres_binary")
            } else {
                load("postgres_text")
            };
            let _ = writeln!(
                m,
                "| {} | {secs:.3} | {:.0} | {:.2}× |",
                case.label,
                ROWS as f64 / secs,
                peer.map_or(f64::NAN, |p| p / secs)
            );
        }
        let _ = writeln!(m);
        let _ = writeln!(
            m,
            "| read | seconds (median) | rows/s | peak memory rise (largest round) | vs postgres crate |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---:|");
        let peer = read("postgres_raw").map(|c| median(&c.secs));
        for case in &self.reads {
            let secs = median(&case.secs);
            let peak = case.peaks.iter().copied().max().unwrap_or(0);
            let _ = writeln!(
                m,
                "| {} | {secs:.3} | {:.0} | {peak} KiB | {:.2}× |",
                case.label,
                ROWS as f64 / secs,
                peer.map_or(f64::NAN, |p| p / secs)
            );
        }
        let _ = writeln!(m);
        let bar = |name: &str, value: Option<f64>, need: f64, at_most: bool| {
            let holds = value.is_some_and(|v| if at_most { v <= need } else { v >= need });
            format!(
                "| {name} | {} | {}{need} | {} |",
                value.map_or("–".to_owned(), |v| format!("{v:.2}")),
                if at_most { "≤ " } else { "≥ " },
                if holds { "holds" } else { "**misses**" }
            )
        };
        let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let pgtx_raw = read("pgtx_raw");
        let postgres_raw = read("postgres_raw");
        let peak = |c: Option<&ReadCase>| {
            c.and_then(|c| c.peaks.iter().copied().max())
                .map(|p| p as f64)
        };
        let _ = writeln!(m, "| bar | measured | needed | |");
        let _ = writeln!(m, "|---|---:|---:|---|");
        let _ = writeln!(
            m,
            "{}",
            bar(
                "COPY text: postgres time / pgtx time",
                ratio(load("postgres_text"), load("pgtx_text")),
                0.95,
                false
            )
        );
        let _ = writeln!(
            m,
            "{}",
            bar(
                "COPY binary: postgres time / pgtx time",
                ratio(load("postgres_binary"), load("pgtx_binary")),
                0.95,
                false
            )
        );
        let _ = writeln!(
            m,
            "{}",
            bar(
                "query_raw: postgres time / pgtx time",
                ratio(
                    postgres_raw.map(|c| median(&c.secs)),
                    pgtx_raw.map(|c| median(&c.secs))
                ),
                0.9,
                false
            )
        );
        let _ = writeln!(
            m,
            "{}",
            bar(
                "query_raw: pgtx peak memory rise / postgres peak memory rise",
                ratio(peak(pgtx_raw), peak(postgres_raw)),
                2.0,
                true
            )
        );
        m
    }
}

/// Loads [`ROWS`] rows the way `key` says; the rows stored.
fn load(key: &str, manager: &ManagedConnection, client: &mut Client) -> Result<u64, BoxError> {
    Ok(match key {
        "postgres_text" => {
            let mut tx = client.transaction()?;
            let mut writer = tx.copy_in(COPY_SQL)?;
            for id in 0..ROWS {
                write_line(&mut writer, id)?;
            }
            let rows = writer.finish()?;
            tx.commit()?;
            rows
        }
        "pgtx_text" => {
            let mut tx = manager.lock()?.begin()?;
            let mut writer = tx.copy_in(COPY_SQL)?;
            for id in 0..ROWS {
                write_line(&mut writer, id)?;
            }
            let rows = writer.finish()?;
            tx.commit()?;
            rows
        }
        "postgres_binary" => {
            let mut tx = client.transaction()?;
            let writer = tx.copy_in(COPY_BINARY_SQL)?;
            let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(writer, &TYPES);
            for id in 0..ROWS {
                writer.write(&[&id, &note(id), &amount(id)])?;
            }
            let rows = writer.finish()?;
            tx.commit()?;
            rows
        }
        "pgtx_binary" => {
            let mut tx = manager.lock()?.begin()?;
            let writer = tx.copy_in(COPY_BINARY_SQL)?;
            let mut writer = BinaryCopyInWriter::new(writer, &TYPES)?;
            for id in 0..ROWS {
                writer.write(&[&id, &note(id), &amount(id)])?;
            }
            let rows = writer.finish()?;
            tx.commit()?;
            rows
        }
        "pgtx_insert" => {
            let mut tx = manager.lock()?.begin()?;
            let mut rows = 0;
            let ids: Vec<i64> = (0..ROWS).collect();
            for chunk in ids.chunks(INSERT_BATCH) {
                let notes: Vec<String> = chunk.iter().map(|&id| note(id)).collect();
                let amounts: Vec<f64> = chunk.iter().map(|&id| amount(id)).collect();
                rows += tx.execute(
                    "INSERT INTO bulk_items (id, note, amount) \
                     SELECT * FROM unnest($1::int8[], $2::text[], $3::float8[])",
                    &[&chunk, &notes, &amounts],
                )?;
            }
            tx.commit()?;
            rows
        }
        other => return Err(format!("no load case {other}").into()),
    })
}

/// Reads every row the way `key` says; the sum of the ids.
fn read(key: &str, manager: &ManagedConnection, client: &mut Client) -> Result<i64, BoxError> {
    let mut sum = 0_i64;
    let mut notes = 0_usize;
    match key {
        "postgres_raw" => {
            use postgres::fallible_iterator::FallibleIterator;
            let mut rows = client.query_raw(READ_SQL, std::iter::empty::<i32>())?;
            while let Some(row) = rows.next()? {
                sum += row.get::<_, i64>(0);
                notes += row.get::<_, &str>(1).len();
            }
        }
        "pgtx_raw" => {
            let mut guard = manager.lock()?;
            for row in guard.query_raw(READ_SQL, &[])? {
                let row = row?;
                sum += row.get::<_, i64>(0);
                notes += row.get::<_, &str>(1).len();
            }
        }
        other => return Err(format!("no read case {other}").into()),
    }
    std::hint::black_box(notes);
    Ok(sum)
}

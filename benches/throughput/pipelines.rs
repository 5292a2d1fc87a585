//! Pipelined transactions (issue 21): pgbench's built-in TPC-B-like
//! transaction (three UPDATEs, a SELECT, an INSERT) written as one pgtx
//! `Pipeline` committed with `commit_pipeline`, against `pgbench -b
//! tpcb-like -M prepared` (a round trip per statement, plus BEGIN and END)
//! and against pgbench running the same statements between
//! `\startpipeline` and `\endpipeline` (one round trip, as pgtx). One
//! client and several, on loopback and through the proxy adding 1 ms of
//! round trip, on one `pgbench -i -s 1` database.
//!
//! The cases take turns in a different order every round; the median round
//! is reported.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgtx::{ManagedConnection, Pipeline};

use super::{BoxError, run_pgbench_args};

/// The clients of the many-client cases (threads on a pool of as many
/// connections for pgtx; `-c N -j N` for pgbench).
pub const MANY: usize = 8;

/// pgbench's scale factor: 100,000 accounts, 10 tellers, 1 branch.
const SCALE: i32 = 1;

/// pgbench's tpcb-like script, its statements between `\startpipeline`
/// and `\endpipeline` (PostgreSQL 14+): one round trip.
const PIPELINE_SCRIPT: &str = "\
\\set aid random(1, 100000 * 1)
\\set bid random(1, 1 * 1)
\\set tid random(1, 10 * 1)
\\set delta random(-5000, 5000)
\\startpipeline
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
\\endpipeline
";

struct Case {
    key: String,
    label: String,
    /// Where: `false` loopback, `true` through 1 ms.
    far: bool,
    clients: usize,
    peer: Peer,
    tps: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Pgtx,
    PgbenchPrepared,
    PgbenchPipeline,
}

/// What the pipeline cases measured.
pub struct Pipelines {
    cases: Vec<Case>,
    secs: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `dsn`'s database name.
fn dbname(dsn: &str) -> Result<String, BoxError> {
    dsn.split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .map(|name| name.trim_matches('\'').to_owned())
        .ok_or_else(|| "a DSN without dbname".into())
}

/// The servers the cases talk to: directly, and through the 1 ms proxy.
pub struct Places {
    pub near: (String, SocketAddr),
    pub far: (String, SocketAddr),
    pub user: String,
}

impl Pipelines {
    /// Sets up a `pgbench -i -s 1` database (`dsn`, initialised with
    /// `pgbench` at `near`) and runs every case `rounds` times for `secs`
    /// seconds each.
    pub fn measure(
        pgbench: &Path,
        dsn: &str,
        places: &Places,
        rounds: usize,
        secs: u64,
    ) -> Result<Pipelines, BoxError> {
        let db = dbname(dsn)?;
        let args_at = |addr: SocketAddr| -> Vec<String> {
            vec![
                "-h".into(),
                addr.ip().to_string(),
                "-p".into(),
                addr.port().to_string(),
                "-U".into(),
                places.user.clone(),
                db.clone(),
            ]
        };
        let init = std::process::Command::new(pgbench)
            .args(["-i", "-q", "-s", &SCALE.to_string()])
            .args(args_at(places.near.1))
            .env("LC_ALL", "C")
            .output()?;
        if !init.status.success() {
            return Err(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )
            .into());
        }
        // Beside the other pgbench script: a file of the run, not of the tree.
        let dir = std::env::temp_dir().join(format!("pgtx-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let script: PathBuf = dir.join("tpcb_pipeline.sql");
        std::fs::write(&script, PIPELINE_SCRIPT)?;
        let mut cases = Vec::new();
        for far in [false, true] {
            for clients in [1, MANY] {
                for peer in [Peer::Pgtx, Peer::PgbenchPrepared, Peer::PgbenchPipeline] {
                    let who = match peer {
                        Peer::Pgtx => "pgtx Pipeline + commit_pipeline".to_owned(),
                        Peer::PgbenchPrepared => "pgbench -b tpcb-like -M prepared".to_owned(),
                        Peer::PgbenchPipeline => {
                            "pgbench, the same script in \\startpipeline … \\endpipeline".to_owned()
                        }
                    };
                    let key = format!(
                        "{}_{}{}",
                        match peer {
                            Peer::Pgtx => "pipe_pgtx",
                            Peer::PgbenchPrepared => "pipe_pgbench_prepared",
                            Peer::PgbenchPipeline => "pipe_pgbench_pipeline",
                        },
                        clients,
                        if far { "_1ms" } else { "" }
                    );
                    cases.push(Case {
                        key,
                        label: format!(
                            "{who}, {clients} client{}{}",
                            if clients == 1 { "" } else { "s" },
                            if far { ", through 1 ms" } else { ", loopback" }
                        ),
                        far,
                        clients,
                        peer,
                        tps: Vec::new(),
                    });
                }
            }
        }
        // PGTX_BENCH_PIPELINES=pipe_pgtx_1 keeps only the cases whose key
        // holds it (for profiling one of them).
        if let Ok(keep) = std::env::var("PGTX_BENCH_PIPELINES") {
            cases.retain(|case| case.key.contains(keep.as_str()));
        }
        let near_dsn = dsn.to_owned();
        let far_dsn = places.far.0.replace(
            &format!("dbname={}", dbname(&places.far.0)?),
            &format!("dbname={db}"),
        );
        for round in 0..rounds {
            let n = cases.len();
            for i in 0..n {
                let case = &mut cases[(i + round) % n];
                let addr = if case.far {
                    places.far.1
                } else {
                    places.near.1
                };
                let tps = match case.peer {
                    Peer::Pgtx => {
                        let dsn = if case.far { &far_dsn } else { &near_dsn };
                        pgtx_tpcb(dsn, case.clients, Duration::from_secs(secs))?
                    }
                    Peer::PgbenchPrepared => run_pgbench_args(
                        pgbench,
                        &[
                            "-b".into(),
                            "tpcb-like".into(),
                            "-M".into(),
                            "prepared".into(),
                        ],
                        &args_at(addr),
                        secs,
                        case.clients,
                    )?,
                    Peer::PgbenchPipeline => run_pgbench_args(
                        pgbench,
                        &[
                            "-M".into(),
                            "prepared".into(),
                            "-f".into(),
                            script.to_string_lossy().into_owned(),
                        ],
                        &args_at(addr),
                        secs,
                        case.clients,
                    )?,
                };
                eprintln!(
                    "  pipelines round {}/{rounds}: {:<78} {tps:>9.0} tx/s",
                    round + 1,
                    case.label
                );
                case.tps.push(tps);
            }
        }
        Ok(Pipelines { cases, secs })
    }

    fn tps(&self, key: &str) -> Option<f64> {
        self.cases
            .iter()
            .find(|c| c.key == key)
            .map(|c| median(&c.tps))
    }

    /// The report's section, with the bars.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "pgbench's TPC-B-like transaction (3 UPDATEs, a SELECT, an INSERT, scale {SCALE}) as a pgtx \
             `Pipeline` committed with `commit_pipeline` (BEGIN, the five statements in one Sync \
             group, COMMIT, all in one write), against `pgbench -b tpcb-like -M prepared` (seven \
             round trips) and pgbench running the same statements in `\\startpipeline` … \
             `\\endpipeline` (one round trip). {MANY} clients: pgtx threads on a `Pool` of {MANY}, \
             pgbench `-c {MANY} -j {MANY}`. {} s a case a round, median of the rounds. The 1 ms \
             link allows at most 1,000 transactions a second per connection at one round trip \
             each.\n",
            self.secs
        );
        let _ = writeln!(
            m,
            "| case | tx/s (median) | vs -M prepared | vs pgbench pipeline | of the 1-round-trip limit |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---:|");
        for case in &self.cases {
            let tps = median(&case.tps);
            let suffix = if case.far { "_1ms" } else { "" };
            let prepared = self.tps(&format!("pipe_pgbench_prepared_{}{suffix}", case.clients));
            let piped = self.tps(&format!("pipe_pgbench_pipeline_{}{suffix}", case.clients));
            let limit = if case.far {
                format!("{:.0} %", 100.0 * tps / (1000.0 * case.clients as f64))
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                m,
                "| {} | {tps:.0} | {:.2}× | {:.2}× | {limit} |",
                case.label,
                prepared.map_or(f64::NAN, |p| tps / p),
                piped.map_or(f64::NAN, |p| tps / p),
            );
        }
        let _ = writeln!(m);
        let ratio = |a: &str, b: &str| Some(self.tps(a)? / self.tps(b)?);
        let bar = |name: &str, value: Option<f64>, need: f64| {
            let holds = value.is_some_and(|v| v >= need);
            format!(
                "| {name} | {} | ≥ {need} | {} |",
                value.map_or("–".to_owned(), |v| format!("{v:.2}")),
                if holds { "holds" } else { "**misses**" }
            )
        };
        let _ = writeln!(m, "| bar (through 1 ms) | measured | needed | |");
        let _ = writeln!(m, "|---|---:|---:|---|");
        for clients in [1, MANY] {
            let _ = writeln!(
                m,
                "{}",
                bar(
                    &format!("pgtx pipeline / -M prepared, {clients} client(s)"),
                    ratio(
                        &format!("pipe_pgtx_{clients}_1ms"),
                        &format!("pipe_pgbench_prepared_{clients}_1ms")
                    ),
                    3.0
                )
            );
            let _ = writeln!(
                m,
                "{}",
                bar(
                    &format!("pgtx pipeline / pgbench pipeline, {clients} client(s)"),
                    ratio(
                        &format!("pipe_pgtx_{clients}_1ms"),
                        &format!("pipe_pgbench_pipeline_{clients}_1ms")
                    ),
                    0.9
                )
            );
        }
        m
    }
}

/// pgtx: `clients` threads, each on a connection of its own (a pool of
/// as many), each running the TPC-B-like transaction as one pipeline for
/// `duration`; transactions per second over all of them.
fn pgtx_tpcb(dsn: &str, clients: usize, duration: Duration) -> Result<f64, BoxError> {
    let pool = Arc::new(ManagedConnection::builder(dsn).pool(clients).build()?);
    // Each connection prepares the five statements once, before the clock.
    std::thread::scope(|s| -> Result<(), BoxError> {
        let warm: Vec<_> = (0..clients)
            .map(|i| {
                let pool = &pool;
                s.spawn(move || one(pool, i as u64 + 1))
            })
            .collect();
        for w in warm {
            w.join().map_err(|_| "a warm-up thread panicked")??;
        }
        Ok(())
    })?;
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + duration;
    std::thread::scope(|s| -> Result<(), BoxError> {
        let workers: Vec<_> = (0..clients)
            .map(|i| {
                let (pool, done) = (&pool, &done);
                s.spawn(move || -> Result<(), BoxError> {
                    let mut seed = 0x2545_F491_4F6C_DD1D ^ (i as u64 + 1);
                    while Instant::now() < deadline {
                        one(pool, seed)?;
                        if Instant::now() <= deadline {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked")??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}

/// One TPC-B-like transaction with random account, teller, branch and
/// amount drawn from `seed`, as one pipeline.
fn one(pool: &pgtx::Pool, seed: u64) -> Result<(), BoxError> {
    let aid = (seed % (100_000 * SCALE as u64)) as i32 + 1;
    let tid = ((seed >> 20) % (10 * SCALE as u64)) as i32 + 1;
    let bid = ((seed >> 30) % SCALE as u64) as i32 + 1;
    let delta = ((seed >> 40) % 10_001) as i32 - 5000;
    let mut pipeline = Pipeline::new();
    pipeline.execute(
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        &[&delta, &aid],
    );
    let balance = pipeline.query(
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        &[&aid],
    );
    pipeline.execute(
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        &[&delta, &tid],
    );
    pipeline.execute(
        "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
        &[&delta, &bid],
    );
    pipeline.execute(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        &[&tid, &bid, &aid, &delta],
    );
    let tx = pool.lock()?.begin()?;
    let (done, results) = tx.commit_pipeline(&pipeline)?;
    done.release();
    if results.get(balance).map_or(0, Vec::len) != 1 {
        return Err("the SELECT found no account".into());
    }
    Ok(())
}

impl Pipelines {
    /// A bar chart: for each place and client count, each case's tx/s
    /// against pgbench's own pipeline there (1.0), labelled with its tx/s.
    pub fn svg(&self) -> String {
        const W: f64 = 760.0;
        const H: f64 = 360.0;
        const LEFT: f64 = 60.0;
        const TOP: f64 = 40.0;
        const BOTTOM: f64 = 70.0;
        let groups: Vec<(bool, usize)> = vec![(false, 1), (false, MANY), (true, 1), (true, MANY)];
        let peers = [
            (Peer::Pgtx, "pgtx Pipeline", "#1f77b4"),
            (Peer::PgbenchPipeline, "pgbench \\startpipeline", "#2ca02c"),
            (Peer::PgbenchPrepared, "pgbench -M prepared", "#ff7f0e"),
        ];
        let find = |far: bool, clients: usize, peer: Peer| {
            self.cases
                .iter()
                .find(|c| c.far == far && c.clients == clients && c.peer == peer)
                .map(|c| median(&c.tps))
        };
        let plot_h = H - TOP - BOTTOM;
        let max_ratio = 1.25;
        let y = |ratio: f64| TOP + plot_h * (1.0 - (ratio / max_ratio).min(1.0));
        let group_w = (W - LEFT - 20.0) / groups.len() as f64;
        let bar_w = group_w / 4.0;
        let mut out = String::new();
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">TPC-B-like transaction: tx/s against \
             pgbench's own pipeline (labels: tx/s)</text>\n"
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0, 1.25] {
            let ty = y(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.2}×</text>",
                W - 20.0,
                LEFT - 6.0,
                ty + 4.0
            );
        }
        for (g, &(far, clients)) in groups.iter().enumerate() {
            let x0 = LEFT + group_w * g as f64 + bar_w / 2.0;
            let base = find(far, clients, Peer::PgbenchPipeline);
            for (b, (peer, _, color)) in peers.iter().enumerate() {
                let Some(tps) = find(far, clients, *peer) else {
                    continue;
                };
                let ratio = base.map_or(0.0, |base| tps / base);
                let x = x0 + bar_w * b as f64;
                let top = y(ratio);
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{tps:.0}</text>",
                    bar_w - 4.0,
                    (TOP + plot_h - top).max(0.0),
                    x + (bar_w - 4.0) / 2.0,
                    top - 3.0
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} client{}, {}</text>",
                x0 + bar_w * 1.5,
                TOP + plot_h + 18.0,
                clients,
                if clients == 1 { "" } else { "s" },
                if far { "1 ms" } else { "loopback" }
            );
        }
        for (b, (_, name, color)) in peers.iter().enumerate() {
            let lx = LEFT + 190.0 * b as f64;
            let ly = H - 18.0;
            let _ = writeln!(
                out,
                "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
                 <text x=\"{:.1}\" y=\"{ly:.1}\">{}</text>",
                ly - 10.0,
                lx + 16.0,
                name
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

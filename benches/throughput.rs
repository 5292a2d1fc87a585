//! Transactions per second through one PostgreSQL connection: pgtx side by
//! side with a bare `postgres::Client`, with pgbench (C and libpq), and with
//! connecting for every transaction, all against one server in one run;
//! then LISTEN/NOTIFY (latency and throughput of a `pgtx::Listener` beside
//! a bare tokio-postgres connection) and the time to recover from a server
//! restart.
//!
//! ```text
//! cargo bench --bench throughput              # full run, 5 rounds x 3 s, ~5 min; writes benches/RESULTS.md + throughput.svg
//! PGTX_BENCH_QUICK=1 cargo bench --bench throughput   # smoke run, ~30 s; writes to a temp dir
//! PGTX_BENCH_ONLY=pgtx1,pgbench cargo bench --bench throughput   # only these cases
//!   (keys: pgtx1 pgtx4 pgtx16 pgtx64 pgtx8_work mutex_str mutex_prepared mutex_prepared16
//!    mutex_work pgbench tpc2 single2 tpc1 connect pgtx1_unnamed pgbouncer_pgtx
//!    pgbouncer_pgbench micro notify_latency notify_throughput reconnect
//!    pool1 pool2 pool4 pool8 pool_own1 … pool_own8 fair0_2 fair0_4 fair20_2 fair20_4
//!    r2d2_1 … r2d2_8 pgbench_c1 … pgbench_c8 bulk aio1 tokio_postgres1
//!    deadpool1 sqlx1 pgtx1_1ms aio1_1ms tokio_postgres1_1ms deadpool1_1ms sqlx1_1ms
//!    pgbench_1ms aio_pool4 aio_pool8 deadpool_pool4 deadpool_pool8 sqlx_pool4
//!    sqlx_pool8 hostile;
//!    a run with PGTX_BENCH_ONLY writes no files unless `micro` is among them,
//!    and prints the notification and reconnection sections it measured)
//! PGTX_BENCH_ROUNDS=5 PGTX_BENCH_SECS=2 cargo bench --bench throughput   # other round counts/lengths
//! ```
//!
//! Every transaction is `BEGIN; SELECT $1::int4; COMMIT` with a changing
//! parameter, over loopback TCP. The server is the test harness's throwaway
//! cluster (or the one named by `DATABASE_URL` / `PG*` variables). Each case
//! runs for several seconds, the cases take turns round after round (so a
//! noisy neighbour hits them all alike), and the median round is reported.
//!
//! After the rounds come the bulk cases (`throughput/bulk.rs`: 1,000,000
//! rows loaded with COPY and INSERT, and read with `query_raw`, beside the
//! `postgres` crate; once per round each, about 10 s a round).
//!
//! After each round's transaction cases come its notification cases
//! (`throughput/notify.rs`: 10,000 notifications timed one at a time per
//! receiver over all rounds, and 1,000,000 blasted and 1,000,000 queued
//! first per receiver and round; about 5 s a round). The reconnection
//! case (`throughput/reconnect.rs`) comes last, on a private cluster of its
//! own that it restarts 5 times (about 10 s).
//!
//! The `pgbouncer_*` cases go through a PgBouncer in `pool_mode =
//! transaction` started for the run (skipped when `pgbouncer` is not
//! installed).

#[path = "throughput/aio.rs"]
mod aio;
#[path = "throughput/bulk.rs"]
mod bulk;
#[path = "throughput/latency.rs"]
mod latency;
#[path = "throughput/notify.rs"]
mod notify;
#[path = "../tests/common/pgbouncer.rs"]
mod pgbouncer;
#[path = "throughput/pipelines.rs"]
mod pipelines;
#[path = "throughput/reconnect.rs"]
mod reconnect;
#[path = "../tests/common/server.rs"]
mod server;
#[path = "throughput/sqlx_peer.rs"]
mod sqlx_peer;
#[path = "throughput/waits.rs"]
mod waits;

use std::error::Error;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pgtx::{ManagedConnection, Open, TwoPhase, Tx};
use postgres::{Client, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use server::TestServer;
use waits::Waits;

type BoxError = Box<dyn Error + Send + Sync>;

/// Measures one round of a case and returns transactions per second.
type RunRound = Box<dyn FnMut(&Plan) -> Result<f64, BoxError>>;

/// The one statement of every transaction.
const SQL: &str = "SELECT $1::int4";

/// Thread counts for the shared-manager cases.
const THREADS: [usize; 4] = [1, 4, 16, 64];

/// The cases where each thread works between its transactions (a sleep
/// standing for the rest of a request): the connection is then often free
/// when released, and the next waiter must get it without delay.
const WORK_THREADS: usize = 8;
const WORK_US: u64 = 300;
const WORK: Duration = Duration::from_micros(WORK_US);

// The typestate costs nothing at run time: a `Tx` is two pointers.
static_assertions::const_assert!(
    std::mem::size_of::<Tx<'static, Open>>() <= 2 * std::mem::size_of::<usize>()
);
static_assertions::const_assert!(
    std::mem::size_of::<Tx<'static, pgtx::Done>>() <= 2 * std::mem::size_of::<usize>()
);

struct Plan {
    quick: bool,
    rounds: usize,
    /// Length of one round of one case, whole seconds (pgbench's `-T`).
    secs: u64,
    out_dir: PathBuf,
    /// Notifications timed one at a time per receiver, all rounds together.
    notify_latency: usize,
    /// Notifications blasted per receiver and round.
    notify_blast: usize,
    /// Server restarts in the reconnection case.
    reconnect_repetitions: usize,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var_os("PGTX_BENCH_QUICK").is_some_and(|v| v != "0")
            || std::env::args().any(|a| a == "--quick");
        if quick {
            Plan {
                quick,
                rounds: 1,
                secs: 1,
                out_dir: std::env::temp_dir().join("pgtx-bench-quick"),
                notify_latency: 1_000,
                notify_blast: 100_000,
                reconnect_repetitions: 1,
            }
        } else {
            Plan {
                quick,
                rounds: 5,
                secs: 3,
                out_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("benches"),
                notify_latency: 10_000,
                notify_blast: 1_000_000,
                reconnect_repetitions: 5,
            }
        }
    }

    /// `PGTX_BENCH_ROUNDS` / `PGTX_BENCH_SECS` override the mode's defaults.
    fn with_overrides(mut self) -> Plan {
        let number = |var: &str| {
            std::env::var(var)
                .ok()?
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
        };
        if let Some(rounds) = number("PGTX_BENCH_ROUNDS") {
            self.rounds = usize::try_from(rounds).unwrap_or(self.rounds);
        }
        if let Some(secs) = number("PGTX_BENCH_SECS") {
            self.secs = secs;
        }
        self
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.secs)
    }
}

/// One throughput case: a label and a function measuring one round.
struct Case {
    key: &'static str,
    label: String,
    run: RunRound,
    samples: Vec<f64>,
    /// The pool cases: how long each checkout waited, all rounds.
    waits: Option<Arc<Waits>>,
}

impl Case {
    fn new(
        key: &'static str,
        label: impl Into<String>,
        run: impl FnMut(&Plan) -> Result<f64, BoxError> + 'static,
    ) -> Case {
        Case {
            key,
            label: label.into(),
            run: Box::new(run),
            samples: Vec::new(),
            waits: None,
        }
    }

    fn with_waits(mut self, waits: Arc<Waits>) -> Case {
        self.waits = Some(waits);
        self
    }

    fn median(&self) -> f64 {
        median(&self.samples)
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn main() -> Result<(), BoxError> {
    if let Ok(key) = std::env::var(bulk::CHILD_READ) {
        return bulk::child_read(&key);
    }
    let plan = Plan::from_env().with_overrides();
    let server = TestServer::shared();
    let dsn = server.dsn();
    eprintln!(
        "pgtx throughput benchmark ({} mode): {} round(s) of {} s per case against {}",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        plan.secs,
        server.describe()
    );

    let mut cases = Vec::new();
    for threads in THREADS {
        let manager = ManagedConnection::new(&dsn)?;
        let label = if threads == 1 {
            "pgtx, 1 thread".to_owned()
        } else {
            format!("pgtx, {threads} threads, one manager")
        };
        let key = match threads {
            1 => "pgtx1",
            4 => "pgtx4",
            16 => "pgtx16",
            _ => "pgtx64",
        };
        cases.push(Case::new(key, label, move |plan| {
            pgtx_threads(&manager, threads, Duration::ZERO, plan.duration())
        }));
    }
    let manager = ManagedConnection::new(&dsn)?;
    cases.push(Case::new(
        "pgtx8_work",
        format!("pgtx, {WORK_THREADS} threads, {WORK_US} µs of work between transactions"),
        move |plan| pgtx_threads(&manager, WORK_THREADS, WORK, plan.duration()),
    ));
    let aio = aio::PgtxAio::new(&dsn)?;
    cases.push(Case::new("aio1", "pgtx::aio, 1 task", move |plan| {
        aio.run(plan.duration())
    }));
    let mut tokio_postgres = aio::TokioPostgres::new(&dsn)?;
    cases.push(Case::new(
        "tokio_postgres1",
        "tokio-postgres, 1 task, transaction() + prepared statement",
        move |plan| tokio_postgres.run(plan.duration()),
    ));
    let deadpool = aio::Deadpool::new(&dsn)?;
    cases.push(Case::new(
        "deadpool1",
        "deadpool-postgres, 1 task, transaction() + prepare_cached",
        move |plan| deadpool.run(plan.duration()),
    ));
    let sqlx = sqlx_peer::Sqlx::new(&dsn)?;
    cases.push(Case::new(
        "sqlx1",
        "sqlx, 1 task, Pool::begin() + query_scalar (cached)",
        move |plan| sqlx.run(plan.duration()),
    ));
    // The same transactions through a proxy adding 1 ms of round trip (the
    // usual same-region network), one proxy for every client compared.
    let proxy = latency::LatencyProxy::start(
        server
            .loopback_addr()
            .ok_or("the bench server listens on loopback")?,
        Duration::from_micros(500),
    )?;
    let far = server.dsn_via(proxy.addr());
    let manager = ManagedConnection::new(&far)?;
    cases.push(Case::new(
        "pgtx1_1ms",
        "pgtx, 1 thread, through 1 ms of round trip",
        move |plan| pgtx_threads(&manager, 1, Duration::ZERO, plan.duration()),
    ));
    let aio_far = aio::PgtxAio::new(&far)?;
    cases.push(Case::new(
        "aio1_1ms",
        "pgtx::aio, 1 task, through 1 ms of round trip",
        move |plan| aio_far.run(plan.duration()),
    ));
    let mut tokio_postgres_far = aio::TokioPostgres::new(&far)?;
    cases.push(Case::new(
        "tokio_postgres1_1ms",
        "tokio-postgres, 1 task, through 1 ms of round trip",
        move |plan| tokio_postgres_far.run(plan.duration()),
    ));
    let deadpool_far = aio::Deadpool::new(&far)?;
    cases.push(Case::new(
        "deadpool1_1ms",
        "deadpool-postgres, 1 task, through 1 ms of round trip",
        move |plan| deadpool_far.run(plan.duration()),
    ));
    let sqlx_far = sqlx_peer::Sqlx::new(&far)?;
    cases.push(Case::new(
        "sqlx1_1ms",
        "sqlx, 1 task, through 1 ms of round trip",
        move |plan| sqlx_far.run(plan.duration()),
    ));
    if let Some(pgbench) = server.bin("pgbench") {
        let script = plan.out_dir_script()?;
        let args = vec![
            "-h".into(),
            proxy.addr().ip().to_string(),
            "-p".into(),
            proxy.addr().port().to_string(),
            "-U".into(),
            server.user().into(),
            server.dbname().into(),
        ];
        cases.push(Case::new(
            "pgbench_1ms",
            "pgbench -n -c 1 -M prepared, through 1 ms of round trip",
            move |plan| run_pgbench(&pgbench, &script, "prepared", &args, plan.secs, 1),
        ));
    }
    // 64 tasks on async pools of 4 and 8.
    for size in [4, 8] {
        let pool = aio::PgtxAioPool::new(&dsn, size, AIO_TASKS)?;
        cases.push(Case::new(
            if size == 4 { "aio_pool4" } else { "aio_pool8" },
            format!("pgtx::aio Pool of {size}, {AIO_TASKS} tasks"),
            move |plan| pool.run(plan.duration()),
        ));
        let pool = aio::DeadpoolPool::new(&dsn, size, AIO_TASKS)?;
        cases.push(Case::new(
            if size == 4 {
                "deadpool_pool4"
            } else {
                "deadpool_pool8"
            },
            format!("deadpool-postgres pool of {size}, {AIO_TASKS} tasks"),
            move |plan| pool.run(plan.duration()),
        ));
        let pool = sqlx_peer::SqlxPool::new(&dsn, size as u32, AIO_TASKS)?;
        cases.push(Case::new(
            if size == 4 {
                "sqlx_pool4"
            } else {
                "sqlx_pool8"
            },
            format!("sqlx PgPool of {size}, {AIO_TASKS} tasks"),
            move |plan| pool.run(plan.duration()),
        ));
    }
    let client = Mutex::new(Client::connect(&dsn, NoTls)?);
    cases.push(Case::new(
        "mutex_str",
        "Mutex<Client>, transaction() + query_one(&str)",
        move |plan| mutex_client(&client, false, plan.duration()),
    ));
    let client = Mutex::new(Client::connect(&dsn, NoTls)?);
    cases.push(Case::new(
        "mutex_prepared",
        "Mutex<Client>, transaction() + prepared statement",
        move |plan| mutex_client(&client, true, plan.duration()),
    ));
    let client = Mutex::new(Client::connect(&dsn, NoTls)?);
    cases.push(Case::new(
        "mutex_prepared16",
        "Mutex<Client>, prepared statement, 16 threads",
        move |plan| mutex_client_threads(&client, 16, Duration::ZERO, plan.duration()),
    ));
    let client = Mutex::new(Client::connect(&dsn, NoTls)?);
    cases.push(Case::new(
        "mutex_work",
        format!(
            "Mutex<Client>, prepared, {WORK_THREADS} threads, {WORK_US} µs of work between transactions"
        ),
        move |plan| mutex_client_threads(&client, WORK_THREADS, WORK, plan.duration()),
    ));
    match server.bin("pgbench") {
        Some(pgbench) => {
            let script = plan.out_dir_script()?;
            let server_args = pgbench_args(server);
            cases.push(Case::new(
                "pgbench",
                "pgbench -n -c 1 -M prepared (C, libpq)",
                move |plan| run_pgbench(&pgbench, &script, "prepared", &server_args, plan.secs, 1),
            ));
        }
        None => eprintln!("pgbench not found: that case is skipped"),
    }
    // Two-phase commit: two databases with a table each; managers that
    // keep their connections, as a service would.
    let two_dbs: Vec<String> = ["pgtx_bench_2pc_a", "pgtx_bench_2pc_b"]
        .iter()
        .map(|prefix| -> Result<String, BoxError> {
            let db = server.fresh_database(prefix);
            server
                .admin_on(&db)
                .batch_execute("CREATE TABLE bench_2pc (n int NOT NULL)")?;
            Ok(db)
        })
        .collect::<Result<_, _>>()?;
    let pair = [
        ManagedConnection::new(&two_dbs[0])?,
        ManagedConnection::new(&two_dbs[1])?,
    ];
    cases.push(Case::new(
        "tpc2",
        "TwoPhase, 2 participants, one INSERT each",
        move |plan| two_phase(&pair, plan.duration()),
    ));
    let pair = [
        ManagedConnection::new(&two_dbs[0])?,
        ManagedConnection::new(&two_dbs[1])?,
    ];
    cases.push(Case::new(
        "single2",
        "two single-phase pgtx transactions, one INSERT each, same two databases",
        move |plan| two_single_phase(&pair, plan.duration()),
    ));
    let manager = ManagedConnection::new(&dsn)?;
    cases.push(Case::new(
        "tpc1",
        "TwoPhase, 1 participant (one-phase commit), the pgtx 1-thread statement",
        move |plan| two_phase_one(&manager, plan.duration()),
    ));

    // Pools: 16 threads on pools of 1, 2, 4 and 8 connections, beside
    // pgbench with as many clients and r2d2_postgres with as many connections.
    for size in POOL_SIZES {
        let pool = Arc::new(pgtx::Pool::new(&dsn, size)?);
        cases.push(pool_case(
            pool_key("pool", size),
            format!("pgtx Pool of {size}, {POOL_THREADS} threads"),
            pool.clone(),
            POOL_THREADS,
        ));
        cases.push(pool_case(
            pool_key("pool_own", size),
            format!(
                "pgtx Pool of {size}, {size} thread{} (a thread per connection, as pgbench)",
                if size == 1 { "" } else { "s" }
            ),
            pool,
            size,
        ));
        if FAIRNESS_SIZES.contains(&size) {
            for millis in FAIR_AFTER_MS {
                let pool = ManagedConnection::builder(&dsn)
                    .pool(size)
                    .fair_after(Duration::from_millis(millis))
                    .build()?;
                cases.push(pool_case(
                    pool_key(&format!("fair{millis}_"), size),
                    format!("pgtx Pool of {size}, {POOL_THREADS} threads, fair_after({millis} ms)"),
                    Arc::new(pool),
                    POOL_THREADS,
                ));
            }
        }
        let r2d2 = r2d2::Pool::builder()
            .max_size(u32::try_from(size)?)
            .build(PostgresConnectionManager::new(dsn.parse()?, NoTls))?;
        let r2d2_waits = Arc::new(Waits::new());
        let recorded = r2d2_waits.clone();
        cases.push(
            Case::new(
                pool_key("r2d2_", size),
                format!("r2d2_postgres pool of {size}, {POOL_THREADS} threads, query_typed"),
                move |plan| r2d2_threads(&r2d2, &recorded, plan.duration()),
            )
            .with_waits(r2d2_waits),
        );
        if let Some(pgbench) = server.bin("pgbench") {
            let script = plan.out_dir_script()?;
            let server_args = pgbench_args(server);
            cases.push(Case::new(
                pool_key("pgbench_c", size),
                format!("pgbench -n -c {size} -j {size} -M prepared"),
                move |plan| {
                    run_pgbench(&pgbench, &script, "prepared", &server_args, plan.secs, size)
                },
            ));
        }
    }
    let manager = ManagedConnection::builder(&dsn)
        .statement_cache(false)
        .build()?;
    cases.push(Case::new(
        "pgtx1_unnamed",
        "pgtx, 1 thread, statement_cache(false) (unnamed statements), direct",
        move |plan| pgtx_threads(&manager, 1, Duration::ZERO, plan.duration()),
    ));
    // Through a transaction pooler: pgtx without a statement cache (named
    // statements do not survive it) against pgbench's unnamed statements.
    // The PgBouncer lives until the end of main.
    let _bouncer = if pgbouncer::available() {
        let bouncer = pgbouncer::Bouncer::start(server, 2);
        let manager = ManagedConnection::builder(&bouncer.dsn_for(server.dbname()))
            .statement_cache(false)
            .build()?;
        cases.push(Case::new(
            "pgbouncer_pgtx",
            "pgtx, 1 thread, statement_cache(false), through PgBouncer (transaction pooling)",
            move |plan| pgtx_threads(&manager, 1, Duration::ZERO, plan.duration()),
        ));
        if let Some(pgbench) = server.bin("pgbench") {
            let script = plan.out_dir_script()?;
            let args = vec![
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                bouncer.port().to_string(),
                "-U".into(),
                server.user().into(),
                server.dbname().into(),
            ];
            cases.push(Case::new(
                "pgbouncer_pgbench",
                "pgbench -n -c 1 -M extended, through the same PgBouncer",
                move |plan| run_pgbench(&pgbench, &script, "extended", &args, plan.secs, 1),
            ));
        }
        Some(bouncer)
    } else {
        eprintln!("pgbouncer not found: the pgbouncer_* cases are skipped");
        None
    };

    let connect_dsn = dsn.clone();
    cases.push(Case::new(
        "connect",
        "connect per transaction (pgtx)",
        move |plan| connect_per_transaction(&connect_dsn, plan.duration()),
    ));

    // PGTX_BENCH_ONLY=pgtx1,pgbench runs just those cases (for profiling).
    let only = std::env::var("PGTX_BENCH_ONLY").ok();
    let wanted = |key: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|k| k.trim() == key))
    };
    cases.retain(|c| wanted(c.key));
    let (want_latency, want_blast) = (wanted("notify_latency"), wanted("notify_throughput"));
    let mut notify = if want_latency || want_blast {
        Some(notify::Notify::new(server)?)
    } else {
        None
    };
    // The micro-benchmarks go first, while the machine is quiet (later the
    // server is still reaping the backends connect-per-transaction leaves).
    let skip_micro = std::env::var("PGTX_BENCH_ONLY").is_ok_and(|only| !only.contains("micro"));
    let micro = if skip_micro {
        None
    } else {
        Some(micro_benchmarks(&dsn, &plan)?)
    };
    for round in 1..=plan.rounds {
        // Each round starts one case later, so no case always follows the
        // same one (the server is still reaping the backends that
        // connect-per-transaction left behind, for instance).
        let start = (round - 1) % cases.len().max(1);
        let order: Vec<usize> = (0..cases.len())
            .map(|i| (start + i) % cases.len())
            .collect();
        for i in order {
            let case = &mut cases[i];
            let tps = (case.run)(&plan)?;
            if case.key == "connect" {
                // Let the server reap the exited backends before the next case.
                std::thread::sleep(Duration::from_millis(500));
            }
            let waited = case.waits.as_deref().map_or(String::new(), |w| {
                format!("; waits so far: {}", wait_quantiles(w))
            });
            eprintln!(
                "  round {round}/{}: {:<52} {tps:>9.0} tx/s{waited}",
                plan.rounds, case.label
            );
            case.samples.push(tps);
        }
        if let Some(notify) = &mut notify {
            // The receivers take turns going first.
            let pgtx_first = round % 2 == 1;
            if want_latency {
                let count = plan.notify_latency.div_ceil(plan.rounds);
                let [a, b] = notify.latency_round(count, pgtx_first)?;
                eprintln!(
                    "  round {round}/{}: notification latency, p50 of {count}: {} {:.0} µs, {} {:.0} µs",
                    plan.rounds,
                    notify::NAMES[0],
                    a.as_secs_f64() * 1e6,
                    notify::NAMES[1],
                    b.as_secs_f64() * 1e6,
                );
            }
            if want_blast {
                let [[a, b], [c, d]] = notify.throughput_round(plan.notify_blast, pgtx_first)?;
                eprintln!(
                    "  round {round}/{}: notifications/s, blasted: {} {a:.0}, {} {b:.0}; queued first: {c:.0}, {d:.0}",
                    plan.rounds,
                    notify::NAMES[0],
                    notify::NAMES[1],
                );
            }
        }
    }
    let bulk = if wanted("bulk") {
        Some(bulk::Bulk::measure(&dsn, plan.rounds)?)
    } else {
        None
    };
    let pipelines = match server.bin("pgbench") {
        Some(pgbench) if wanted("pipelines") => {
            let dsn = server.fresh_database("pgtx_bench_tpcb");
            let places = pipelines::Places {
                near: (
                    dsn.clone(),
                    server
                        .loopback_addr()
                        .ok_or("the bench server listens on loopback")?,
                ),
                far: (far.clone(), proxy.addr()),
                user: server.user().to_owned(),
            };
            Some(pipelines::Pipelines::measure(
                &pgbench,
                &dsn,
                &places,
                plan.rounds,
                plan.secs,
            )?)
        }
        _ => None,
    };
    let hostile = if wanted("hostile") {
        Some(hostile_counts(&dsn, &plan)?)
    } else {
        None
    };
    // Last: it starts a cluster of its own and restarts it.
    let reconnect = if wanted("reconnect") {
        Some(reconnect_repetitions(&plan)?)
    } else {
        None
    };
    let sections = Sections {
        bulk: bulk.as_ref().map(bulk::Bulk::markdown),
        pipelines: pipelines.as_ref().map(pipelines::Pipelines::markdown),
        notify: notify.as_ref().map(notify::Notify::markdown),
        reconnect: reconnect.as_deref().map(reconnect::markdown),
        hostile,
    };

    let Some(micro) = micro else {
        // A filtered run writes no files, but shows what it measured.
        print!("{}", sections.markdown());
        return Ok(());
    };
    let report = Report::new(&cases, &micro, &plan, server, sections);
    println!("{}", report.table);
    println!("{}", report.bars);
    println!("{}", report.pools);
    println!("{}", report.fairness);
    println!("{}", report.micro);
    print!("{}", report.sections.markdown());
    std::fs::create_dir_all(&plan.out_dir)?;
    let md = plan.out_dir.join("RESULTS.md");
    let svg = plan.out_dir.join("throughput.svg");
    std::fs::write(&md, report.markdown())?;
    std::fs::write(&svg, throughput_svg(&cases))?;
    println!("wrote {} and {}", md.display(), svg.display());
    if let Some(pipelines) = &pipelines {
        let chart = plan.out_dir.join("pipelines.svg");
        std::fs::write(&chart, pipelines.svg())?;
        println!("wrote {}", chart.display());
    }
    Ok(())
}

/// The report's sections about notifications and reconnection, in
/// Markdown, when they were measured.
struct Sections {
    bulk: Option<String>,
    pipelines: Option<String>,
    hostile: Option<String>,
    notify: Option<String>,
    reconnect: Option<String>,
}

impl Sections {
    fn markdown(&self) -> String {
        let mut m = String::new();
        if let Some(pipelines) = &self.pipelines {
            let _ = write!(m, "## Pipelined transactions (TPC-B-like)\n\n{pipelines}\n");
        }
        if let Some(bulk) = &self.bulk {
            let _ = write!(m, "## COPY and streamed rows\n\n{bulk}\n");
        }
        if let Some(notify) = &self.notify {
            let _ = write!(m, "## Notifications\n\n{notify}\n");
        }
        if let Some(reconnect) = &self.reconnect {
            let _ = write!(m, "## Reconnection\n\n{reconnect}\n");
        }
        if let Some(hostile) = &self.hostile {
            let _ = write!(
                m,
                "## Cancel safety under a hostile workload\n\n{hostile}\n"
            );
        }
        m
    }
}

/// The reconnection case: a private cluster restarted
/// `plan.reconnect_repetitions` times.
fn reconnect_repetitions(plan: &Plan) -> Result<Vec<reconnect::Repetition>, BoxError> {
    let mut bench = reconnect::Bench::new()?;
    let mut repetitions = Vec::new();
    for i in 1..=plan.reconnect_repetitions {
        let repetition = bench.repetition()?;
        let summary: Vec<String> = repetition
            .recoveries
            .iter()
            .map(|r| {
                format!(
                    "{} {}: attempt {}, {:.0} ms",
                    match r.kind {
                        reconnect::Kind::Manager => "manager",
                        reconnect::Kind::Listener => "listener",
                    },
                    if r.policy == 0 { "default" } else { "100 ms" },
                    r.attempt,
                    r.recovered_after_accepting * 1000.0
                )
            })
            .collect();
        eprintln!(
            "  restart {i}/{}: server back {:.0} ms after pg_ctl start began; ready after it accepted: {}",
            plan.reconnect_repetitions,
            repetition.start_to_accepting * 1000.0,
            summary.join("; ")
        );
        repetitions.push(repetition);
    }
    Ok(repetitions)
}

impl Plan {
    /// Writes the pgbench script (the same three statements) and returns its path.
    fn out_dir_script(&self) -> Result<PathBuf, BoxError> {
        let dir = std::env::temp_dir().join(format!("pgtx-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("tx.sql");
        std::fs::write(
            &path,
            "\\set v random(1, 1000000)\nBEGIN;\nSELECT :v::int4;\nCOMMIT;\n",
        )?;
        Ok(path)
    }
}

/// Transactions per second of `threads` threads sharing `manager`.
fn pgtx_threads(
    manager: &ManagedConnection,
    threads: usize,
    think: Duration,
    duration: Duration,
) -> Result<f64, BoxError> {
    let one = |v: i32| -> Result<(), pgtx::Error> {
        manager.transaction(|mut tx| {
            let row = tx.query_one(SQL, &[&v])?;
            black_box(row.get::<_, i32>(0));
            tx.commit()
        })?;
        work_between(think);
        Ok(())
    };
    threaded(threads, duration, one)
}

/// "p50 / p99 / longest" of the checkout waits `w`, in ms.
fn wait_quantiles(w: &Waits) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or("–".to_owned(), |d| {
            format!("{:.2}", d.as_secs_f64() * 1e3)
        })
    };
    format!(
        "{} / {} / {} ms",
        ms(w.quantile(0.5)),
        ms(w.quantile(0.99)),
        ms(Some(w.longest()))
    )
}

/// Pool sizes of the pool cases, and their thread count.
/// Tasks on the async pools.
const AIO_TASKS: usize = 64;

/// The hostile workload (issue 20) on pgtx::aio's pool and
/// deadpool-postgres' pool, 4 connections each: 16 tasks, each
/// transaction under a random 0–5 ms deadline that drops it wherever it
/// is; every checkout asks the server whether a transaction block is
/// already open on the connection it got.
fn hostile_counts(dsn: &str, plan: &Plan) -> Result<String, BoxError> {
    let each = if plan.quick { 100 } else { 400 };
    let pgtx = aio::hostile_pgtx(dsn, 4, each)?;
    let deadpool = aio::hostile_deadpool(dsn, 4, each)?;
    let sqlx = sqlx_peer::hostile_sqlx(dsn, 4, each)?;
    eprintln!("hostile workload: pgtx {pgtx:?}, deadpool-postgres {deadpool:?}, sqlx {sqlx:?}");
    let mut m = String::new();
    let _ = writeln!(
        m,
        "16 tasks × {each} transactions on a pool of 4, each under a random 0–5 ms \
         deadline (`tokio::time::timeout`) that drops it wherever it is — waiting for \
         a connection, in BEGIN, a statement, a 2 ms sleep, or COMMIT. Each checkout \
         first asks the server whether a transaction block is already open on the \
         connection it was handed (`SELECT now() <> statement_timestamp()`).\n"
    );
    let _ = writeln!(
        m,
        "| pool | transactions tried | handed out inside an open block | refused with 25P02 (aborted by an earlier holder) |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|");
    for (name, seen) in [
        ("pgtx::aio Pool", pgtx),
        ("deadpool-postgres", deadpool),
        ("sqlx PgPool", sqlx),
    ] {
        let _ = writeln!(
            m,
            "| {name} | {} | {} | {} |",
            seen.runs, seen.dirty, seen.aborted
        );
    }
    Ok(m)
}

const POOL_SIZES: [usize; 4] = [1, 2, 4, 8];
const POOL_THREADS: usize = 16;
/// Pool sizes also run with `fair_after` at 0 (strictly first come, first
/// served) and 20 ms, beside the default.
const FAIRNESS_SIZES: [usize; 2] = [2, 4];
/// Those `fair_after` values, in ms (case keys `fair0_2`, `fair20_4`, …).
const FAIR_AFTER_MS: [u64; 2] = [0, 20];

/// A case of `threads` threads on `pool`, recording their checkout waits.
fn pool_case(key: &'static str, label: String, pool: Arc<pgtx::Pool>, threads: usize) -> Case {
    let waits = Arc::new(Waits::new());
    let recorded = waits.clone();
    Case::new(key, label, move |plan| {
        pool_threads(&pool, threads, &recorded, plan.duration())
    })
    .with_waits(waits)
}

/// `pool1`, `r2d2_4`, `pgbench_c8`, …: a case key for one pool size.
fn pool_key(prefix: &str, size: usize) -> &'static str {
    Box::leak(format!("{prefix}{size}").into_boxed_str())
}

/// Transactions per second of `threads` threads on `pool`; each wait for
/// a connection goes into `waits`.
fn pool_threads(
    pool: &pgtx::Pool,
    threads: usize,
    waits: &Waits,
    duration: Duration,
) -> Result<f64, BoxError> {
    threaded(threads, duration, |v: i32| -> Result<(), pgtx::Error> {
        let asked = Instant::now();
        pool.transaction(|mut tx| {
            waits.record(asked.elapsed());
            let row = tx.query_one(SQL, &[&v])?;
            black_box(row.get::<_, i32>(0));
            tx.commit()
        })
    })
}

/// The same on an r2d2 pool of `postgres::Client`s, as well as a user can
/// do it there: `query_typed` (the unnamed statement, no Describe round
/// trip), so three round trips a transaction, as pgbench `-M prepared`.
fn r2d2_threads(
    pool: &r2d2::Pool<PostgresConnectionManager<NoTls>>,
    waits: &Waits,
    duration: Duration,
) -> Result<f64, BoxError> {
    #[derive(Debug, thiserror::Error)]
    enum Failed {
        #[error(transparent)]
        Pool(#[from] r2d2::Error),
        #[error(transparent)]
        Db(#[from] postgres::Error),
    }
    threaded(POOL_THREADS, duration, |v: i32| -> Result<(), Failed> {
        let asked = Instant::now();
        let mut client = pool.get()?;
        waits.record(asked.elapsed());
        let mut tx = client.transaction()?;
        let row = tx.query_typed(SQL, &[(&v, postgres::types::Type::INT4)])?;
        black_box(row.first().map(|r| r.get::<_, i32>(0)));
        tx.commit()?;
        Ok(())
    })
}

/// Stands for the work a thread does between two transactions.
fn work_between(think: Duration) {
    if !think.is_zero() {
        std::thread::sleep(think);
    }
}

/// Runs `one` (a whole transaction) in a loop on `threads` threads for
/// `duration`, after a warm-up that connects and fills any cache; returns
/// transactions per second.
fn threaded<E>(
    threads: usize,
    duration: Duration,
    one: impl Fn(i32) -> Result<(), E> + Sync,
) -> Result<f64, BoxError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    // Warm up: connect, and let any per-connection cache fill.
    for v in 0..100 {
        one(v)?;
    }
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| -> Result<Duration, BoxError> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, total, start, one) = (&stop, &total, &start, &one);
                s.spawn(move || -> Result<(), E> {
                    let mut v = i32::try_from(t).unwrap_or(0) * 1_000_000;
                    let mut n = 0;
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        one(v)?;
                        v = v.wrapping_add(1);
                        // Only transactions finished inside the measured
                        // window count (as with pgbench -T): the ones still
                        // queued for the connection when it closes finish
                        // afterwards, one by one.
                        if !stop.load(Ordering::Relaxed) {
                            n += 1;
                        }
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let window = began.elapsed();
        for worker in workers {
            worker.join().map_err(|_| "a worker panicked")??;
        }
        Ok(window)
    })?;
    Ok(total.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// The usual way: a `postgres::Client` behind a mutex, one thread.
fn mutex_client(
    client: &Mutex<Client>,
    prepared: bool,
    duration: Duration,
) -> Result<f64, BoxError> {
    let statement = if prepared {
        Some(client.lock().prepare(SQL)?)
    } else {
        None
    };
    let one = |v: i32| -> Result<(), postgres::Error> {
        let mut client = client.lock();
        let mut tx = client.transaction()?;
        let row = match &statement {
            Some(statement) => tx.query_one(statement, &[&v])?,
            None => tx.query_one(SQL, &[&v])?,
        };
        black_box(row.get::<_, i32>(0));
        tx.commit()
    };
    // Counted by the same rules as every other case.
    threaded(1, duration, one)
}

/// The prepared-statement `Mutex<Client>` case on several threads: what a
/// contended lock around a bare client costs on the same machine.
fn mutex_client_threads(
    client: &Mutex<Client>,
    threads: usize,
    think: Duration,
    duration: Duration,
) -> Result<f64, BoxError> {
    let statement = client.lock().prepare(SQL)?;
    threaded(threads, duration, |v: i32| -> Result<(), postgres::Error> {
        {
            let mut client = client.lock();
            let mut tx = client.transaction()?;
            black_box(tx.query_one(&statement, &[&v])?.get::<_, i32>(0));
            tx.commit()?;
        }
        work_between(think);
        Ok(())
    })
}

/// Distributed transactions per second: an INSERT on each of two
/// databases, committed with two-phase commit.
fn two_phase(pair: &[ManagedConnection; 2], duration: Duration) -> Result<f64, BoxError> {
    threaded(1, duration, |v: i32| -> Result<(), pgtx::Error> {
        let mut dtx = TwoPhase::new();
        for manager in pair {
            let id = dtx.join(manager)?;
            dtx.tx(id)?
                .execute("INSERT INTO bench_2pc VALUES ($1)", &[&v])?;
        }
        dtx.commit()
    })
}

/// The same work without atomicity across the two: one ordinary
/// transaction on each database.
fn two_single_phase(pair: &[ManagedConnection; 2], duration: Duration) -> Result<f64, BoxError> {
    threaded(1, duration, |v: i32| -> Result<(), pgtx::Error> {
        for manager in pair {
            manager.transaction(|mut tx| {
                tx.execute("INSERT INTO bench_2pc VALUES ($1)", &[&v])?;
                tx.commit()
            })?;
        }
        Ok(())
    })
}

/// The one-participant path, which commits in one phase: the pgtx 1-thread
/// case's statement, through `TwoPhase`.
fn two_phase_one(manager: &ManagedConnection, duration: Duration) -> Result<f64, BoxError> {
    threaded(1, duration, |v: i32| -> Result<(), pgtx::Error> {
        let mut dtx = TwoPhase::new();
        let id = dtx.join(manager)?;
        let row = dtx.tx(id)?.query_one(SQL, &[&v])?;
        black_box(row.get::<_, i32>(0));
        dtx.commit()
    })
}

/// What sharing one connection avoids: connect, one transaction, close.
fn connect_per_transaction(dsn: &str, duration: Duration) -> Result<f64, BoxError> {
    let mut n = 0_u64;
    let began = Instant::now();
    while began.elapsed() < duration {
        let manager = ManagedConnection::new(dsn)?;
        manager.transaction(|mut tx| {
            let row = tx.query_one(SQL, &[&(n as i32)])?;
            black_box(row.get::<_, i32>(0));
            tx.commit()
        })?;
        manager.close()?;
        n += 1;
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

/// `-h -p -U dbname` for pgbench, from the server's settings.
fn pgbench_args(server: &TestServer) -> Vec<String> {
    vec![
        "-h".into(),
        server.host().into(),
        "-p".into(),
        server.port().to_string(),
        "-U".into(),
        server.user().into(),
        server.dbname().into(),
    ]
}

/// One pgbench round: `-c 1` with the query mode `mode` (`prepared`,
/// `extended`) for `secs` seconds; its tps.
fn run_pgbench(
    pgbench: &Path,
    script: &Path,
    mode: &str,
    server_args: &[String],
    secs: u64,
    clients: usize,
) -> Result<f64, BoxError> {
    let extra = [
        "-M".to_owned(),
        mode.to_owned(),
        "-f".to_owned(),
        script.to_string_lossy().into_owned(),
    ];
    run_pgbench_args(pgbench, &extra, server_args, secs, clients)
}

/// One pgbench round with `clients` clients (and as many threads) for
/// `secs` seconds, running what `extra` says (a query mode, a built-in or
/// a script); its tps.
fn run_pgbench_args(
    pgbench: &Path,
    extra: &[String],
    server_args: &[String],
    secs: u64,
    clients: usize,
) -> Result<f64, BoxError> {
    let clients = clients.to_string();
    let output = Command::new(pgbench)
        .args(["-n", "-c", &clients, "-j", &clients, "-T"])
        .arg(secs.to_string())
        .args(extra)
        .args(server_args)
        .env("LC_ALL", "C")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // pgbench 15: "tps = 12345.678901 (without initial connection time)"
    stdout
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| format!("no tps line in pgbench output:\n{stdout}").into())
}

/// Nanoseconds per operation, median of several batches.
struct Micro {
    lease_ns: f64,
    guard_ns: f64,
    tx_size: usize,
    done_size: usize,
}

fn micro_benchmarks(dsn: &str, plan: &Plan) -> Result<Micro, BoxError> {
    let manager = ManagedConnection::new(dsn)?;
    drop(manager.lock()?); // connect
    let batches = if plan.quick { 3 } else { 9 };
    let time = |iters: u32, op: &dyn Fn() -> Result<(), pgtx::Error>| -> Result<f64, BoxError> {
        let mut samples = Vec::new();
        for _ in 0..batches {
            let began = Instant::now();
            for _ in 0..iters {
                op()?;
            }
            samples.push(began.elapsed().as_nanos() as f64 / f64::from(iters));
        }
        Ok(median(&samples))
    };
    let lease_ns = time(200_000, &|| manager.bench_lease_cycle())?;
    let guard_ns = time(50_000, &|| manager.lock().map(drop))?;
    Ok(Micro {
        lease_ns,
        guard_ns,
        tx_size: std::mem::size_of::<Tx<'static, Open>>(),
        done_size: std::mem::size_of::<Tx<'static, pgtx::Done>>(),
    })
}

struct Report {
    table: String,
    bars: String,
    pools: String,
    fairness: String,
    micro: String,
    sections: Sections,
    environment: String,
}

impl Report {
    fn new(
        cases: &[Case],
        micro: &Micro,
        plan: &Plan,
        server: &TestServer,
        sections: Sections,
    ) -> Report {
        let get = |key: &str| cases.iter().find(|c| c.key == key).map(Case::median);
        let pgtx1 = get("pgtx1").unwrap_or(f64::NAN);
        let pgbench = get("pgbench");

        let mut table = String::new();
        let _ = writeln!(
            table,
            "| case | tx/s (median) | min – max | vs pgtx 1 thread | vs pgbench |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|");
        for case in cases {
            let m = case.median();
            let min = case.samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = case.samples.iter().copied().fold(0.0, f64::max);
            let vs_bench = pgbench.map_or_else(|| "–".to_owned(), |b| format!("{:.2}×", m / b));
            let _ = writeln!(
                table,
                "| {} | {m:.0} | {min:.0} – {max:.0} | {:.2}× | {vs_bench} |",
                case.label,
                m / pgtx1
            );
        }

        let bar = |name: &str, value: Option<f64>, need: f64, unit: &str| -> String {
            match value {
                Some(v) => format!(
                    "| {name} | {v:.2}{unit} | {need}{unit} | {} |",
                    if v >= need { "holds" } else { "**misses**" }
                ),
                None => format!("| {name} | not measured | {need}{unit} | – |"),
            }
        };
        let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let mut bars = String::new();
        let _ = writeln!(bars, "| bar | measured | needed | |");
        let _ = writeln!(bars, "|---|---:|---:|---|");
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "pgtx 1 thread / pgbench -M prepared",
                ratio(Some(pgtx1), pgbench),
                1.0,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "pgtx 1 thread / pgbench -M prepared (stretch)",
                ratio(Some(pgtx1), pgbench),
                1.15,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "pgtx::aio 1 task / tokio-postgres 1 task (loopback)",
                ratio(get("aio1"), get("tokio_postgres1")),
                1.1,
                "×"
            )
        );
        for (name, ours, theirs, need) in [
            (
                "pgtx::aio 1 task / deadpool-postgres 1 task (loopback)",
                "aio1",
                "deadpool1",
                1.1,
            ),
            (
                "pgtx::aio 1 task / sqlx 1 task (loopback)",
                "aio1",
                "sqlx1",
                1.1,
            ),
            (
                "pgtx::aio 1 task / tokio-postgres 1 task (1 ms round trip)",
                "aio1_1ms",
                "tokio_postgres1_1ms",
                1.3,
            ),
            (
                "pgtx::aio 1 task / deadpool-postgres 1 task (1 ms round trip)",
                "aio1_1ms",
                "deadpool1_1ms",
                1.3,
            ),
            (
                "pgtx::aio 1 task / sqlx 1 task (1 ms round trip)",
                "aio1_1ms",
                "sqlx1_1ms",
                1.3,
            ),
            (
                "pgtx 1 thread / pgbench -M prepared (1 ms round trip)",
                "pgtx1_1ms",
                "pgbench_1ms",
                1.4,
            ),
            (
                "pgtx::aio Pool of 4 / deadpool-postgres, 64 tasks",
                "aio_pool4",
                "deadpool_pool4",
                0.95,
            ),
            (
                "pgtx::aio Pool of 8 / deadpool-postgres, 64 tasks",
                "aio_pool8",
                "deadpool_pool8",
                0.95,
            ),
            (
                "pgtx::aio Pool of 4 / sqlx PgPool, 64 tasks",
                "aio_pool4",
                "sqlx_pool4",
                0.95,
            ),
            (
                "pgtx::aio Pool of 8 / sqlx PgPool, 64 tasks",
                "aio_pool8",
                "sqlx_pool8",
                0.95,
            ),
        ] {
            let _ = writeln!(
                bars,
                "{}",
                bar(name, ratio(get(ours), get(theirs)), need, "×")
            );
        }
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "pgtx 1 thread / Mutex<Client> + query_one(&str)",
                ratio(Some(pgtx1), get("mutex_str")),
                1.6,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "pgtx 16 threads / pgtx 1 thread",
                ratio(get("pgtx16"), Some(pgtx1)),
                0.95,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "connection reuse / connect per transaction",
                ratio(Some(pgtx1), get("connect")),
                25.0,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "{}",
            bar(
                "TwoPhase 1 participant / pgtx 1 thread (within noise)",
                ratio(get("tpc1"), Some(pgtx1)),
                0.9,
                "×"
            )
        );
        let _ = writeln!(
            bars,
            "| TwoPhase 2 participants / two single-phase transactions (the price of atomicity) | {} | – | measured |",
            ratio(get("tpc2"), get("single2"))
                .map_or("not measured".to_owned(), |r| format!("{r:.2}×"))
        );
        let _ = writeln!(
            bars,
            "| lease acquire + release, no I/O | {:.0} ns | ≤ 100 ns | {} |",
            micro.lease_ns,
            if micro.lease_ns <= 100.0 {
                "holds"
            } else {
                "**misses**"
            }
        );
        let _ = writeln!(
            bars,
            "| size of `Tx<Open>` / `Tx<Done>` | {} / {} bytes | ≤ {} bytes | {} |",
            micro.tx_size,
            micro.done_size,
            2 * std::mem::size_of::<usize>(),
            if micro.tx_size.max(micro.done_size) <= 2 * std::mem::size_of::<usize>() {
                "holds (also a compile-time assertion)"
            } else {
                "**misses**"
            }
        );

        // The bars (issue 18, item 9): a pool driven as pgbench drives its
        // connections, a thread each, against `pgbench -c N -j N` (0.95×:
        // runs here differ by ±10 %); and many threads on a pool against
        // r2d2_postgres, with the longest checkout wait beside it.
        let mut pools = String::new();
        let _ = writeln!(
            pools,
            "| connections | pgtx `Pool`, N threads | pgbench -c N -j N | that / pgbench (bar ≥ 0.95×) | pgtx `Pool`, {POOL_THREADS} threads | r2d2_postgres, {POOL_THREADS} threads | pgtx / r2d2 (bar ≥ 1.3×) | longest checkout wait, pgtx / r2d2 |"
        );
        let _ = writeln!(pools, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let shown = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
        let versus = |r: Option<f64>, need: f64| {
            r.map_or("–".to_owned(), |r| {
                format!("{r:.2}× {}", if r >= need { "holds" } else { "**misses**" })
            })
        };
        let longest = |key: &str| {
            cases
                .iter()
                .find(|c| c.key == key)
                .and_then(|c| c.waits.as_deref())
                .map_or("–".to_owned(), |w| {
                    format!("{:.1} ms", w.longest().as_secs_f64() * 1e3)
                })
        };
        for size in POOL_SIZES {
            let ours = get(&format!("pool{size}"));
            let pgbench = get(&format!("pgbench_c{size}"));
            let r2d2 = get(&format!("r2d2_{size}"));
            let own = get(&format!("pool_own{size}"));
            let _ = writeln!(
                pools,
                "| {size} | {} | {} | {} | {} | {} | {} | {} / {} |",
                shown(own),
                shown(pgbench),
                versus(ratio(own, pgbench), 0.95),
                shown(ours),
                shown(r2d2),
                versus(ratio(ours, r2d2), 1.3),
                longest(&format!("pool{size}")),
                longest(&format!("r2d2_{size}")),
            );
        }

        let mut fairness = String::new();
        let _ = writeln!(
            fairness,
            "| connections | `fair_after` | tx/s (median) | vs pgbench -c N -j N | checkout wait p50 / p99 / longest |"
        );
        let _ = writeln!(fairness, "|---:|---:|---:|---:|---:|");
        for size in FAIRNESS_SIZES {
            let pgbench = get(&format!("pgbench_c{size}"));
            let default_ms = pgtx::PoolBuilder::DEFAULT_FAIR_AFTER.as_millis();
            // Rows in order of fair_after; the default is the plain pool case.
            let mut rows: Vec<(u128, String, String)> = FAIR_AFTER_MS
                .iter()
                .map(|&ms| {
                    (
                        u128::from(ms),
                        format!("fair{ms}_{size}"),
                        format!("{ms} ms"),
                    )
                })
                .collect();
            rows.push((
                default_ms,
                format!("pool{size}"),
                format!("{default_ms} ms (default)"),
            ));
            rows.sort_by_key(|row| row.0);
            for (_, key, after) in rows {
                let Some(case) = cases.iter().find(|c| c.key == key) else {
                    continue;
                };
                let _ = writeln!(
                    fairness,
                    "| {size} | {after} | {:.0} | {} | {} |",
                    case.median(),
                    ratio(Some(case.median()), pgbench)
                        .map_or("–".to_owned(), |r| format!("{r:.2}×")),
                    case.waits.as_deref().map_or("–".to_owned(), wait_quantiles),
                );
            }
        }

        let mut m = String::new();
        let _ = writeln!(m, "| operation (no round trip) | ns/op (median) |");
        let _ = writeln!(m, "|---|---:|");
        let _ = writeln!(
            m,
            "| lease acquire + release (`bench_lease_cycle`: the lease and its epoch, no health check) | {:.0} |",
            micro.lease_ns
        );
        let _ = writeln!(
            m,
            "| `lock()` + drop the guard on an open connection (the above + the idle health check, skipped when the connection answered within 1 ms) | {:.0} |",
            micro.guard_ns
        );

        let environment = format!(
            "{} rounds of {} s per case (median reported), cases interleaved; {}; {} CPU(s): {}; client built with {}",
            plan.rounds,
            plan.secs,
            server_environment(server),
            std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model(),
            if cfg!(debug_assertions) {
                "debug assertions (not a release build!)"
            } else {
                "the release profile"
            }
        );
        Report {
            table,
            bars,
            pools,
            fairness,
            micro: m,
            sections,
            environment,
        }
    }

    fn markdown(&self) -> String {
        format!(
            "# pgtx benchmark results\n\n\
             Generated by `cargo bench --bench throughput` (see `benches/throughput.rs`).\n\
             Every transaction is `BEGIN; SELECT $1::int4; COMMIT` with a changing\n\
             parameter, over loopback TCP, against one server in one run.\n\n\
             {}\n\n\
             ## Throughput\n\n{}\n\
             ![throughput against thread count](throughput.svg)\n\n\
             ## The bar\n\n{}\n\
             ## Pools\n\n\
             {POOL_THREADS} threads run the same transaction on pools of N connections\n\
             (the pgtx rows above), against pgbench with N clients and N threads and\n\
             against r2d2_postgres with N connections (`query_typed`: three round\n\
             trips a transaction, like pgbench; pgtx makes two). The last two\n\
             columns run N threads on the pool of N: a thread per connection, as\n\
             pgbench has. With more threads than connections, a connection changes\n\
             threads at every fair hand-off (the first waiter is served within about\n\
             1 ms); on a small VM the new thread often runs on another CPU than the\n\
             connection's server process, and then every round trip is a wake-up\n\
             across CPUs until the kernel pairs them again.\n\n{}\n\
             ### Fairness against throughput\n\n\
             The same {POOL_THREADS} threads with `PoolBuilder::fair_after` at 0\n\
             (strictly first come, first served: every release goes to the\n\
             thread that waited longest), the default, and 20 ms (how long the\n\
             first thread in line may be passed over by threads taking a\n\
             connection straight back). Waits are per checkout, all rounds;\n\
             p50 and p99 are bucket bounds (within 9 %). Fewer hand-offs mean\n\
             fewer thread changes per connection, and a longer longest wait.\n\n{}\n\
             ## Micro-benchmarks\n\n{}\n{}{NOTES}",
            self.environment,
            self.table,
            self.bars,
            self.pools,
            self.fairness,
            self.micro,
            self.sections.markdown()
        )
    }
}

/// What the numbers mean, and what was tried; the same in every run.
const NOTES: &str = "\
## Reading the numbers

- Round trips per transaction: pgtx makes two. `begin()` sends nothing;
  `BEGIN` goes out with the first statement, in the same write and the same
  protocol Sync group (Parse/Bind/Execute `BEGIN`, Bind/Execute the
  statement, one Sync, as pgjdbc does), so if the server refuses `BEGIN` it
  skips the statement too and nothing runs outside the transaction.
  `tokio-postgres` ends every request with its own Sync, so pgtx opens the
  socket itself and puts a small tap (`src/wire.rs`) between it and
  `tokio-postgres`: it slips `BEGIN` in front of the statement's Bind and
  takes the three answers out of what `tokio-postgres` reads. pgbench
  `-M prepared` and the prepared `Mutex<Client>` make three round trips
  (`BEGIN`, the statement, `COMMIT`); `Mutex<Client>` with
  `query_one(&str)` makes four (Parse/Describe first, every time), while
  pgtx prepares SQL text once per connection (a statement cache emptied on
  reconnect).
- Through a transaction pooler (`pgbouncer_*`: PgBouncer, `pool_mode =
  transaction`, started for the run), named statements do not survive, so
  pgtx runs with `statement_cache(false)`: each statement is Parse, Bind,
  Describe, Execute of the unnamed statement with `BEGIN` parsed in front
  of it in the same write and Sync group, and `COMMIT` is a simple query;
  still two round trips. pgbench `-M extended` (unnamed statements, what
  works through such a pooler) makes three. `pgtx1_unnamed` is the same
  pgtx without the pooler, for the cost of parsing every time.
- `BEGIN` and `COMMIT` are prepared once per connection (Bind/Execute
  only, as pgbench `-M prepared` does): the server's CPU time per
  transaction went from 75 to 65 µs (summed from `/proc` over a run).
  `DISCARD ALL` and `DEALLOCATE`, which drop prepared statements, are
  recognised in the server's answers, and both are prepared again.
- System calls per one-statement transaction (strace): 2 `sendto`, 2
  `recvfrom`, 2 `epoll_wait`. The idle health check is skipped when the
  connection answered within the last millisecond, and a wake-up that
  happens while the driver polls (a request handing its message to the
  connection) makes it poll again at once instead of turning the I/O driver
  for nothing.
- The client's CPU time is mostly the kernel's loopback TCP path and the
  scheduler (perf: about 60 % kernel). The VM is shared, and throughput
  moves by ±10 % from run to run, so read the min – max spread before
  reading much into any one ratio.
- Threads: one connection serves one transaction at a time, so more
  threads cannot add throughput; what they can cost is the handoff. A
  release wakes nobody unless it hands the lease to the waiter that has been
  first in line for 1 ms (until then the releasing thread may take it
  straight back without a context switch), so at most one handoff per
  millisecond whatever the thread count. Counting the wait from when a
  waiter reached the front (not from when it queued) took CPU migrations
  at 16 threads from one every two transactions to one per millisecond.
  The two cases with 300 µs of work between transactions are the other
  side: there a released lease is often left free, so a release wakes the
  first waiter to take it (unless the releasing thread keeps taking the
  lease straight back, as in the loops above), where before it slept out
  its millisecond (8 threads: about 3,600 tx/s then).
  Only transactions finished inside the measured window count (as with
  pgbench `-T`): the waiters still queued when the window closes finish
  afterwards, one by one, and timing them too made many threads look
  slower than they are.
- The lease micro-benchmark is `ManagedConnection::bench_lease_cycle`
  (not API: it exists only with the `bench-internals` feature, which the
  crate's own benches and tests enable): take the lease (parking_lot mutex, thread identity from a
  thread-local, new epoch) and release it. `lock()` adds the idle health
  check, which is skipped here because the connection answered within the
  last millisecond; after a longer idle time it is one non-blocking turn of
  the private runtime's I/O driver (an `epoll_wait` with no timeout, about
  2 µs), so that a connection the server closed while idle is replaced
  before anyone gets it. The micro-benchmarks run first, on a quiet machine.
";

/// The server a run measured, as a reader needs it to compare runs: its
/// version, where it ran, and the settings that change throughput, as the
/// server itself reports them (not the ports or temporary directories of
/// the machine that ran it).
fn server_environment(server: &TestServer) -> String {
    let place = if server.is_private() {
        "a throwaway cluster on this machine"
    } else {
        "an external server"
    };
    let mut admin = server.admin();
    let settings = admin.query_one(
        "SELECT current_setting('server_version'), current_setting('fsync'),
                current_setting('synchronous_commit'), current_setting('full_page_writes'),
                current_setting('shared_buffers'), current_setting('max_connections')",
        &[],
    );
    match settings {
        Ok(row) => format!(
            "PostgreSQL {} ({place}, loopback TCP; fsync={}, synchronous_commit={}, full_page_writes={}, shared_buffers={}, max_connections={})",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, String>(4),
            row.get::<_, String>(5),
        ),
        Err(e) => format!("PostgreSQL ({place}; its settings could not be read: {e})"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// A hand-written SVG line chart: pgtx throughput against thread count, with
/// the single-connection references as horizontal lines.
fn throughput_svg(cases: &[Case]) -> String {
    let get = |key: &str| cases.iter().find(|c| c.key == key).map(Case::median);
    let points: Vec<(usize, f64)> = THREADS
        .iter()
        .zip(["pgtx1", "pgtx4", "pgtx16", "pgtx64"])
        .filter_map(|(&t, key)| Some((t, get(key)?)))
        .collect();
    let references: Vec<(&str, f64, &str)> = [
        ("pgbench -M prepared, 1 client", get("pgbench"), "#d62728"),
        ("Mutex<Client>, prepared", get("mutex_prepared"), "#2ca02c"),
        (
            "Mutex<Client>, query_one(&str)",
            get("mutex_str"),
            "#9467bd",
        ),
    ]
    .into_iter()
    .filter_map(|(label, v, colour)| Some((label, v?, colour)))
    .collect();

    let (w, h) = (720.0_f64, 420.0_f64);
    let (left, right, top, bottom) = (80.0, 250.0, 40.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let top_value = points
        .iter()
        .map(|p| p.1)
        .chain(references.iter().map(|r| r.1))
        .fold(1.0, f64::max);
    let y_max = nice_ceiling(top_value * 1.1);
    let x_of = |i: usize| left + plot_w * i as f64 / (THREADS.len() - 1).max(1) as f64;
    let y_of = |v: f64| top + plot_h * (1.0 - v / y_max);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">pgtx: transactions per second against threads sharing one connection</text>"#,
        w / 2.0
    );
    for step in 0..=5 {
        let v = y_max * f64::from(step) / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0
        );
    }
    for (i, t) in THREADS.iter().enumerate() {
        let x = x_of(i);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            top + plot_h,
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">threads sharing one ManagedConnection</text>"#,
        left + plot_w / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">transactions per second</text>"#,
        top + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    for (label, v, colour) in &references {
        let y = y_of(*v);
        let _ = writeln!(
            svg,
            r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
            left + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{} ({v:.0})</text>"#,
            left + plot_w + 8.0,
            y + 4.0,
            xml_escape(label)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|&(t, v)| {
            let i = THREADS.iter().position(|&x| x == t).unwrap_or(0);
            format!("{:.1},{:.1}", x_of(i), y_of(v))
        })
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2.5"/>"##,
        path.join(" ")
    );
    for &(t, v) in &points {
        let i = THREADS.iter().position(|&x| x == t).unwrap_or(0);
        let (x, y) = (x_of(i), y_of(v));
        let _ = writeln!(
            svg,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="#1f77b4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#1f77b4">{v:.0}</text>"##,
            y - 9.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" fill="#1f77b4">pgtx (solid)</text>"##,
        left + plot_w + 8.0,
        top + 12.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 × 10^k not below `v`.
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10_f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(v)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

//! pgtx through PgBouncer in transaction pooling mode (Debian's 1.18), with
//! fewer server connections than clients, so that clients really take
//! turns on them: with `statement_cache(false)` every transaction commits
//! exactly what it reports and nothing is left behind for another client;
//! without it, named prepared statements fail.
//!
//! Each test starts a PgBouncer of its own in front of the shared server
//! (`common::pgbouncer`) and uses a database of its own, so that no two
//! tests share a pool. The workload runs in child processes (this binary
//! run again), each one manager shared by several threads.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::eventually;
use common::fixtures::Db;
use common::pgbouncer::Bouncer;
use common::server::error_chain;
use pgtx::types::Type;
use pgtx::{Error, ManagedConnection, SqlState, TransactionStatus};

/// Set in a child process: the DSN to work through.
const WORKER_DSN: &str = "PGTX_TEST_BOUNCER_DSN";
/// Set in a child process: `on` or `off`, for `statement_cache`.
const WORKER_CACHE: &str = "PGTX_TEST_BOUNCER_CACHE";

const PROCESSES: usize = 4;
const THREADS: usize = 4;
/// Transactions per thread.
const TRANSACTIONS: u64 = 25;
/// Server connections PgBouncer may open per database: fewer than the
/// clients (one per process).
const POOL_SIZE: u32 = 2;

/// What the child processes reported, together.
#[derive(Debug, Default)]
struct Tally {
    /// Transactions whose `commit` returned `Ok`.
    committed: u64,
    /// Every error a transaction or an autocommit statement returned, with
    /// its sources.
    errors: Vec<String>,
    /// The server backends each process's transactions ran on.
    backends: Vec<BTreeSet<i32>>,
}

/// Runs the workload in `PROCESSES` children of the test `name` at once,
/// through `dsn`, and adds up what they report.
fn run_workers(name: &str, dsn: &str, statement_cache: bool) -> Tally {
    let cache = if statement_cache { "on" } else { "off" };
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            common::spawn_test(
                name,
                [
                    (WORKER_DSN, dsn),
                    (WORKER_CACHE, cache),
                    ("RUST_BACKTRACE", "1"),
                ],
            )
        })
        .collect();
    let mut tally = Tally::default();
    for child in children {
        let out = child.wait_with_output().expect("wait for a worker");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "a worker failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut reported = false;
        for line in stdout.lines() {
            if let Some(n) = line.strip_prefix("PGTX_WORKER_COMMITTED ") {
                tally.committed += n.parse::<u64>().expect("a count");
                reported = true;
            } else if let Some(pids) = line.strip_prefix("PGTX_WORKER_BACKENDS ") {
                tally.backends.push(
                    pids.split_whitespace()
                        .map(|p| p.parse().expect("a pid"))
                        .collect(),
                );
            } else if let Some(e) = line.strip_prefix("PGTX_WORKER_ERROR ") {
                tally.errors.push(e.to_owned());
            }
        }
        assert!(reported, "a worker reported nothing:\n{stdout}");
    }
    tally
}

/// The child's part: `THREADS` threads share one manager and run
/// `TRANSACTIONS` counter increments each, with an autocommit read
/// between them, and print what came of them.
fn worker(dsn: &str, statement_cache: bool) {
    let manager = ManagedConnection::builder(dsn)
        .statement_cache(statement_cache)
        .build()
        .expect("settings");
    let committed = AtomicU64::new(0);
    let errors = Mutex::new(Vec::new());
    let backends = Mutex::new(BTreeSet::new());
    let note = |e: &Error| {
        let text = error_chain(e).replace('\n', " ");
        errors.lock().expect("errors").push(text);
    };
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for i in 0..TRANSACTIONS {
                    let outcome = manager.transaction(|mut tx| -> pgtx::Result<_> {
                        // With parameters (described once per connection),
                        // and without.
                        tx.execute("UPDATE counter SET n = n + $1", &[&1_i64])?;
                        let row = tx.query_one("SELECT n, pg_backend_pid() FROM counter", &[])?;
                        let pid: i32 = row.get(1);
                        if i % 5 == 0 {
                            let mut sp = tx.savepoint()?;
                            sp.execute("UPDATE counter SET n = n + $1", &[&1000_i64])?;
                            sp.rollback()?;
                        }
                        Ok(tx.commit()?.returning(pid))
                    });
                    match outcome {
                        Ok(pid) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                            backends.lock().expect("backends").insert(pid);
                        }
                        Err(e) => note(&e),
                    }
                    // An autocommit statement, which may land on another
                    // server connection than the transaction did.
                    let read = manager.lock().and_then(|mut guard| {
                        guard.query_one("SELECT n FROM counter WHERE n >= $1", &[&0_i64])
                    });
                    if let Err(e) = read {
                        note(&e);
                    }
                }
            });
        }
    });
    // On lines of their own: libtest has printed the test's name.
    println!(
        "\nPGTX_WORKER_COMMITTED {}",
        committed.load(Ordering::Relaxed)
    );
    let backends = backends.lock().expect("backends");
    let pids: Vec<String> = backends.iter().map(i32::to_string).collect();
    println!("PGTX_WORKER_BACKENDS {}", pids.join(" "));
    for e in errors.lock().expect("errors").iter() {
        println!("PGTX_WORKER_ERROR {e}");
    }
}

/// In a child process: runs the workload and returns true.
fn as_worker() -> bool {
    let Ok(dsn) = std::env::var(WORKER_DSN) else {
        return false;
    };
    let cache = std::env::var(WORKER_CACHE).expect("the parent says which mode");
    worker(&dsn, cache == "on");
    true
}

/// A manager through `bouncer` on `db`'s database, without a statement cache.
fn unnamed_manager(bouncer: &Bouncer, db: &Db) -> ManagedConnection {
    ManagedConnection::builder(&bouncer.dsn_for(&db.name))
        .statement_cache(false)
        .build()
        .expect("settings")
}

/// The prepared statements each of the pool's server connections holds:
/// `POOL_SIZE` clients each keep a transaction open at once, so each has
/// a server connection of its own, and ask.
fn prepared_on_each_server(bouncer: &Bouncer, db: &Db) -> Vec<(i32, i64)> {
    let managers: Vec<_> = (0..POOL_SIZE)
        .map(|_| unnamed_manager(bouncer, db))
        .collect();
    let mut txs: Vec<_> = managers
        .iter()
        .map(|m| m.lock().expect("lock").begin().expect("begin"))
        .collect();
    let seen: Vec<(i32, i64)> = txs
        .iter_mut()
        .map(|tx| {
            let row = tx
                .query_one(
                    "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements)",
                    &[],
                )
                .expect("ask the server connection");
            (row.get(0), row.get(1))
        })
        .collect();
    for tx in txs {
        tx.rollback().expect("rollback").release();
    }
    let pids: BTreeSet<i32> = seen.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(
        pids.len(),
        seen.len(),
        "one server connection each: {seen:?}"
    );
    seen
}

#[test]
fn counter_transactions_from_four_processes_commit_exactly_what_they_report() {
    const NAME: &str = "counter_transactions_from_four_processes_commit_exactly_what_they_report";
    if as_worker() {
        return;
    }
    let db = Db::new("bouncer_counter");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let started = Instant::now();
    let tally = run_workers(NAME, &bouncer.dsn_for(&db.name), false);
    let took = started.elapsed();

    assert!(
        tally.errors.is_empty(),
        "{} errors, such as: {:?}",
        tally.errors.len(),
        &tally.errors[..tally.errors.len().min(5)]
    );
    let expected = (PROCESSES * THREADS) as u64 * TRANSACTIONS;
    assert_eq!(tally.committed, expected, "every transaction committed");
    assert_eq!(
        db.counter(),
        i64::try_from(tally.committed).expect("fits"),
        "the counter holds exactly the increments of the transactions reported committed \
         (and none of the savepoints rolled back)"
    );
    // The clients really shared the server connections: no more than the
    // pool's, and some process ran transactions on more than one.
    let all: BTreeSet<i32> = tally.backends.iter().flatten().copied().collect();
    assert!(
        all.len() <= POOL_SIZE as usize,
        "more server backends than the pool allows: {all:?}"
    );
    assert!(
        tally.backends.iter().any(|pids| pids.len() > 1),
        "no process changed server connection, so nothing was tested: {:?}",
        tally.backends
    );
    assert_eq!(db.open_transactions(), 0, "nothing left open on the server");
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server backend {pid} holds prepared statements"
        );
    }
    eprintln!("{expected} transactions through PgBouncer in {took:?}");
}

#[test]
fn with_the_statement_cache_named_statements_fail_through_a_transaction_pooler() {
    const NAME: &str =
        "with_the_statement_cache_named_statements_fail_through_a_transaction_pooler";
    if as_worker() {
        return;
    }
    let db = Db::new("bouncer_named");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let tally = run_workers(NAME, &bouncer.dsn_for(&db.name), true);
    // Four clients prepare `BEGIN` under the same name, each once, on one
    // of two server connections: one of them finds another's already
    // there, if nothing else fails first.
    let named = tally
        .errors
        .iter()
        .filter(|e| e.contains("prepared statement"))
        .count();
    assert!(
        named > 0,
        "no prepared-statement error through a transaction pooler ({} committed, errors: {:?})",
        tally.committed,
        tally.errors
    );
    eprintln!(
        "with the cache: {} of {} committed, {} errors ({named} about prepared statements), \
         counter {}, statements left on the server connections {:?}; first errors: {:?}",
        tally.committed,
        (PROCESSES * THREADS) as u64 * TRANSACTIONS,
        tally.errors.len(),
        db.counter(),
        prepared_on_each_server(&bouncer, &db),
        &tally.errors[..tally.errors.len().min(3)]
    );
}

#[test]
fn no_transaction_leaks_from_one_client_to_another() {
    let db = Db::new("bouncer_leaks");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    // A's forgotten hold (below) counts as forgotten after 100 ms.
    let a = ManagedConnection::builder(&bouncer.dsn_for(&db.name))
        .statement_cache(false)
        .abandon_after(Some(std::time::Duration::from_millis(100)))
        .build()
        .expect("settings");
    let b = unnamed_manager(&bouncer, &db);
    let b_sees = |what: &str| -> Vec<i32> {
        let mut guard = b.lock().expect("lock b");
        let ids = (0..5)
            .map(|_| {
                guard
                    .query("SELECT id FROM items ORDER BY id", &[])
                    .expect("b reads")
                    .iter()
                    .map(|r| r.get(0))
                    .collect::<Vec<i32>>()
            })
            .collect::<BTreeSet<_>>();
        assert_eq!(ids.len(), 1, "{what}: b's reads disagree: {ids:?}");
        ids.into_iter().next().unwrap_or_default()
    };

    // A's uncommitted row is never seen by B, whose statements and
    // transactions run on the other server connection meanwhile.
    let mut tx = a.lock().expect("lock a").begin().expect("begin");
    tx.execute(
        "INSERT INTO items VALUES ($1, $2)",
        &[&1_i32, &"uncommitted"],
    )
    .expect("insert");
    assert_eq!(b_sees("while a's transaction is open"), Vec::<i32>::new());
    b.transaction(|mut tx| {
        tx.execute("INSERT INTO items VALUES ($1, $2)", &[&2_i32, &"b"])?;
        tx.commit()
    })
    .expect("b commits");
    assert_eq!(db.open_transactions(), 1, "a's transaction is open");

    // Dropped: rolled back before A lets go of the connection.
    drop(tx);
    assert_eq!(a.unfinished_transactions(), 1);
    assert_eq!(a.status(), TransactionStatus::Idle);
    assert_eq!(db.item_ids(), vec![2], "a's row was rolled back");
    assert_eq!(db.open_transactions(), 0);
    assert_eq!(b_sees("after a's rollback"), vec![2]);

    // Forgotten: the next holder takes over and rolls it back.
    let mut tx = a.lock().expect("lock a").begin().expect("begin");
    tx.execute("INSERT INTO items VALUES ($1, $2)", &[&3_i32, &"forgotten"])
        .expect("insert");
    std::mem::forget(tx);
    assert_eq!(b_sees("while a's forgotten transaction is open"), vec![2]);
    assert_eq!(db.open_transactions(), 1);
    let mut guard = common::take_over(|| a.lock());
    assert_eq!(a.unfinished_transactions(), 2);
    assert_eq!(db.open_transactions(), 0, "rolled back on takeover");
    let ids: Vec<i32> = guard
        .query("SELECT id FROM items ORDER BY id", &[])
        .expect("a reads")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![2]);
    drop(guard);
    assert_eq!(db.item_ids(), vec![2]);
    assert_eq!(b_sees("at the end"), vec![2]);
}

#[test]
fn a_cancel_handle_cancels_a_statement_through_pgbouncer() {
    let db = Db::new("bouncer_cancel");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let manager = unnamed_manager(&bouncer, &db);
    let cancel = manager.cancel_handle();
    let sql = "SELECT pg_sleep(30)";
    let running = || {
        db.admin()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'active' AND query = $1",
                &[&sql],
            )
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            == 1
    };
    let (outcome, took) = thread::scope(|s| {
        let canceller = s.spawn(|| {
            assert!(eventually(Duration::from_secs(10), running), "never ran");
            let delivered = cancel.cancel().expect("cancel delivered to PgBouncer");
            (delivered, Instant::now())
        });
        let outcome = manager.transaction(|mut tx| {
            tx.execute(sql, &[])?;
            tx.commit()
        });
        let returned = Instant::now();
        let (delivered, asked) = canceller.join().expect("canceller");
        assert!(delivered, "a statement was running");
        (outcome, returned.saturating_duration_since(asked))
    });
    let err = outcome.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(db.open_transactions(), 0, "the transaction was rolled back");
    let one: i32 = manager
        .lock()
        .expect("lock")
        .query_one("SELECT $1::int4", &[&1_i32])
        .expect("the connection works afterwards")
        .get(0);
    assert_eq!(one, 1);
}

#[test]
fn typed_statements_leave_nothing_named_on_the_pooler_s_server_connections() {
    let db = Db::new("bouncer_typed");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let manager = unnamed_manager(&bouncer, &db);
    for id in 1..=20_i32 {
        manager
            .transaction(|mut tx| {
                tx.execute_typed(
                    "INSERT INTO items VALUES ($1, $2)",
                    &[(&id, Type::INT4), (&"typed", Type::TEXT)],
                )?;
                let seen = tx.query_typed(
                    "SELECT count(*) FROM items WHERE id = $1",
                    &[(&id, Type::INT4)],
                )?;
                assert_eq!(seen[0].get::<_, i64>(0), 1);
                let tags = tx.simple_query("SELECT 1")?;
                assert!(!tags.is_empty());
                tx.commit()
            })
            .expect("a typed transaction through PgBouncer");
    }
    assert_eq!(db.item_ids(), (1..=20).collect::<Vec<_>>());
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server connection {pid} holds a named statement"
        );
    }
}

/// Pipelines through PgBouncer in transaction mode, from several threads:
/// each commits all or nothing, on the unnamed statement, and leaves
/// nothing named on the pool's server connections.
#[test]
fn pipelines_commit_all_or_nothing_through_pgbouncer_and_leave_nothing_named() {
    let db = Db::new("bouncer_pipelines");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    thread::scope(|s| {
        for worker in 0..4_i32 {
            let manager = unnamed_manager(&bouncer, &db);
            s.spawn(move || {
                for n in 0..25_i32 {
                    let id = worker * 1000 + n;
                    let twin = id + 100_000;
                    // Every fifth one fails at its second statement.
                    let second = if n % 5 == 4 { id } else { twin };
                    let tx = manager.lock().expect("lock").begin().expect("begin");
                    let mut pipeline = pgtx::Pipeline::new();
                    pipeline.execute("INSERT INTO items VALUES ($1, 'one')", &[&id]);
                    pipeline.execute("INSERT INTO items VALUES ($1, 'two')", &[&second]);
                    pipeline.query("SELECT count(*) FROM items WHERE id = $1", &[&id]);
                    let outcome = tx.commit_pipeline(&pipeline).map(drop);
                    if n % 5 == 4 {
                        assert!(
                            matches!(outcome, Err(Error::PipelineFailed { index: 1, .. })),
                            "{outcome:?}"
                        );
                    } else {
                        outcome.expect("a pipeline through PgBouncer");
                    }
                }
            });
        }
    });
    let ids: BTreeSet<i32> = db.item_ids().into_iter().collect();
    let expected: BTreeSet<i32> = (0..4)
        .flat_map(|w| (0..25).filter(|n| n % 5 != 4).map(move |n| w * 1000 + n))
        .flat_map(|id| [id, id + 100_000])
        .collect();
    assert_eq!(ids, expected, "every pipeline all or nothing");
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server connection {pid} holds a named statement"
        );
    }
}

#[test]
fn copy_and_streamed_rows_work_through_pgbouncer_from_many_clients_at_once() {
    use std::io::{Read, Write};
    let db = Db::new("bouncer_copy");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    const CLIENTS: i32 = 6;
    const ROUNDS: i32 = 15;
    thread::scope(|scope| {
        for client in 0..CLIENTS {
            let manager = unnamed_manager(&bouncer, &db);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let base = (client * ROUNDS + round) * 10;
                    // Through a guard (each statement on its own), then a transaction.
                    let mut guard = manager.lock().expect("lock");
                    let mut writer = guard
                        .copy_in("COPY items (id, note) FROM STDIN")
                        .expect("copy_in through a guard");
                    writeln!(writer, "{base}\tguard").expect("write");
                    assert_eq!(writer.finish().expect("finish"), 1);
                    let mut text = String::new();
                    guard
                        .copy_out(&*format!(
                            "COPY (SELECT note FROM items WHERE id = {base}) TO STDOUT"
                        ))
                        .expect("copy_out through a guard")
                        .read_to_string(&mut text)
                        .expect("read");
                    assert_eq!(text, "guard\n");
                    let streamed = guard
                        .query_raw("SELECT id FROM items WHERE id = $1", &[&base])
                        .expect("query_raw")
                        .count();
                    assert_eq!(streamed, 1);
                    let mut tx = guard.begin().expect("begin");
                    let mut writer = tx
                        .copy_in("COPY items (id, note) FROM STDIN")
                        .expect("copy_in in a transaction");
                    writeln!(writer, "{}\ttx", base + 1).expect("write");
                    assert_eq!(writer.finish().expect("finish"), 1);
                    tx.commit().expect("commit");
                }
            });
        }
    });
    assert_eq!(db.item_ids().len(), (CLIENTS * ROUNDS * 2) as usize);
    assert_eq!(db.open_transactions(), 0);
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server connection {pid} holds a named statement"
        );
    }
}

#[test]
fn async_transactions_from_many_managers_commit_exactly_what_they_report_through_pgbouncer() {
    const MANAGERS: usize = 6;
    const EACH: u64 = 30;
    let db = Db::new("bouncer_aio");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let dsn = bouncer.dsn_for(&db.name);
    let runtime = async_runtime();
    let (committed, backends) = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..MANAGERS {
            let manager = pgtx::aio::ManagedConnection::builder(&dsn)
                .statement_cache(false)
                .build()
                .expect("settings");
            tasks.push(tokio::spawn(async move {
                let (mut committed, mut backends) = (0_u64, BTreeSet::new());
                for n in 0..EACH {
                    let pid: i32 = manager
                        .transaction(async |mut tx| {
                            tx.execute("UPDATE counter SET n = n + 1", &[]).await?;
                            // Typed values through the unnamed statement.
                            let pid: i32 = tx
                                .query_one("SELECT pg_backend_pid() + $1 - $1", &[&(n as i32)])
                                .await?
                                .get(0);
                            tx.commit_returning(pid).await
                        })
                        .await
                        .expect("a transaction through PgBouncer");
                    committed += 1;
                    backends.insert(pid);
                }
                (committed, backends)
            }));
        }
        let mut committed = 0;
        let mut backends = BTreeSet::new();
        for task in tasks {
            let (c, b) = task.await.expect("task");
            committed += c;
            backends.extend(b);
        }
        (committed, backends)
    });
    assert_eq!(committed, MANAGERS as u64 * EACH);
    assert_eq!(db.counter(), i64::try_from(committed).expect("fits"));
    assert!(backends.len() <= POOL_SIZE as usize, "{backends:?}");
    assert_eq!(db.open_transactions(), 0);
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server backend {pid} holds prepared statements"
        );
    }
}

#[test]
fn async_copy_and_streamed_rows_work_through_pgbouncer_from_many_managers_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MANAGERS: i32 = 4;
    const ROUNDS: i32 = 10;
    let db = Db::new("bouncer_aio_copy");
    let bouncer = Bouncer::start(db.server, POOL_SIZE);
    let dsn = bouncer.dsn_for(&db.name);
    let runtime = async_runtime();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for client in 0..MANAGERS {
            let manager = pgtx::aio::ManagedConnection::builder(&dsn)
                .statement_cache(false)
                .build()
                .expect("settings");
            tasks.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let base = (client * ROUNDS + round) * 10;
                    // Through a guard (each statement on its own), then a transaction.
                    let mut guard = manager.lock().await.expect("lock");
                    let mut writer = guard
                        .copy_in("COPY items (id, note) FROM STDIN")
                        .await
                        .expect("copy_in through a guard");
                    writer
                        .write_all(format!("{base}\tguard\n").as_bytes())
                        .await
                        .expect("write");
                    assert_eq!(writer.finish().await.expect("finish"), 1);
                    let mut text = String::new();
                    guard
                        .copy_out(&*format!(
                            "COPY (SELECT note FROM items WHERE id = {base}) TO STDOUT"
                        ))
                        .await
                        .expect("copy_out through a guard")
                        .read_to_string(&mut text)
                        .await
                        .expect("read");
                    assert_eq!(text, "guard\n");
                    let mut rows = guard
                        .query_raw("SELECT id FROM items WHERE id = $1", &[&base])
                        .await
                        .expect("query_raw");
                    let mut streamed = 0;
                    while rows.try_next().await.expect("a row").is_some() {
                        streamed += 1;
                    }
                    drop(rows);
                    assert_eq!(streamed, 1);
                    let mut tx = guard.begin().await.expect("begin");
                    let mut writer = tx
                        .copy_in("COPY items (id, note) FROM STDIN")
                        .await
                        .expect("copy_in in a transaction");
                    writer
                        .write_all(format!("{}\ttx\n", base + 1).as_bytes())
                        .await
                        .expect("write");
                    assert_eq!(writer.finish().await.expect("finish"), 1);
                    tx.commit().await.expect("commit");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
    });
    assert_eq!(db.item_ids().len(), (MANAGERS * ROUNDS * 2) as usize);
    assert_eq!(db.open_transactions(), 0);
    for (pid, prepared) in prepared_on_each_server(&bouncer, &db) {
        assert_eq!(
            prepared, 0,
            "server connection {pid} holds a named statement"
        );
    }
}

/// A runtime for the async tests here (they also run blocking harness
/// code, so they are not `#[tokio::test]`s).
fn async_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

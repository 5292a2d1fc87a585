//! One task running the pgtx 1-thread transaction through the async front
//! (`pgtx::aio`), beside tokio-postgres' own `Client::transaction` with a
//! prepared statement, each on a current-thread runtime of its own: pgtx
//! sends `BEGIN` with the statement (two round trips), tokio-postgres
//! sends it alone (three).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::{BoxError, SQL};

fn runtime() -> Result<Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// pgtx's async front, one task: transactions per second over `duration`.
pub struct PgtxAio {
    runtime: Runtime,
    manager: pgtx::aio::ManagedConnection,
}

impl PgtxAio {
    pub fn new(dsn: &str) -> Result<PgtxAio, BoxError> {
        Ok(PgtxAio {
            runtime: runtime()?,
            manager: pgtx::aio::ManagedConnection::new(dsn)?,
        })
    }

    pub fn run(&self, duration: Duration) -> Result<f64, BoxError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut done = 0_u64;
            let mut v = 0_i32;
            while started.elapsed() < duration {
                v = v.wrapping_add(1);
                self.manager
                    .transaction(async |mut tx| {
                        let row = tx.query_one(SQL, &[&v]).await?;
                        black_box(row.get::<_, i32>(0));
                        tx.commit().await
                    })
                    .await?;
                done += 1;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// tokio-postgres, one task: `Client::transaction`, a prepared statement,
/// `commit`.
pub struct TokioPostgres {
    runtime: Runtime,
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
}

impl TokioPostgres {
    pub fn new(dsn: &str) -> Result<TokioPostgres, BoxError> {
        let runtime = runtime()?;
        let (client, statement) = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let statement = client.prepare(SQL).await?;
            Ok::<_, BoxError>((client, statement))
        })?;
        Ok(TokioPostgres {
            runtime,
            client,
            statement,
        })
    }

    pub fn run(&mut self, duration: Duration) -> Result<f64, BoxError> {
        let TokioPostgres {
            runtime,
            client,
            statement,
        } = self;
        runtime.block_on(async {
            let started = Instant::now();
            let mut done = 0_u64;
            let mut v = 0_i32;
            while started.elapsed() < duration {
                v = v.wrapping_add(1);
                let tx = client.transaction().await?;
                let row = tx.query_one(&*statement, &[&v]).await?;
                black_box(row.get::<_, i32>(0));
                tx.commit().await?;
                done += 1;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// deadpool-postgres, one task: `pool.get()`, `transaction()`, a cached
/// prepared statement (`prepare_cached`), `commit` — the fastest way its
/// docs show.
pub struct Deadpool {
    runtime: Runtime,
    pool: deadpool_postgres::Pool,
}

/// A deadpool-postgres pool of `size` on `dsn`, with its default (fast)
/// recycling.
pub fn deadpool(dsn: &str, size: usize) -> Result<deadpool_postgres::Pool, BoxError> {
    let config: tokio_postgres::Config = dsn.parse()?;
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

impl Deadpool {
    pub fn new(dsn: &str) -> Result<Deadpool, BoxError> {
        Ok(Deadpool {
            runtime: runtime()?,
            pool: deadpool(dsn, 1)?,
        })
    }

    pub fn run(&self, duration: Duration) -> Result<f64, BoxError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut done = 0_u64;
            let mut v = 0_i32;
            while started.elapsed() < duration {
                v = v.wrapping_add(1);
                let mut client = self.pool.get().await?;
                let tx = client.transaction().await?;
                let statement = tx.prepare_cached(SQL).await?;
                let row = tx.query_one(&statement, &[&v]).await?;
                black_box(row.get::<_, i32>(0));
                tx.commit().await?;
                done += 1;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// Tasks sharing a pool on a runtime with a worker per CPU.
fn multi_thread() -> Result<Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `tasks` tasks on a pgtx::aio::Pool of `size`: transactions per second.
pub struct PgtxAioPool {
    runtime: Runtime,
    pool: std::sync::Arc<pgtx::aio::Pool>,
    tasks: usize,
}

impl PgtxAioPool {
    pub fn new(dsn: &str, size: usize, tasks: usize) -> Result<PgtxAioPool, BoxError> {
        Ok(PgtxAioPool {
            runtime: multi_thread()?,
            pool: std::sync::Arc::new(pgtx::aio::Pool::new(dsn, size)?),
            tasks,
        })
    }

    pub fn run(&self, duration: Duration) -> Result<f64, BoxError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut handles = Vec::new();
            for task in 0..self.tasks {
                let pool = self.pool.clone();
                handles.push(tokio::spawn(async move {
                    let mut done = 0_u64;
                    let mut v = i32::try_from(task).unwrap_or(0);
                    while started.elapsed() < duration {
                        v = v.wrapping_add(1);
                        pool.transaction(async |mut tx| {
                            let row = tx.query_one(SQL, &[&v]).await?;
                            black_box(row.get::<_, i32>(0));
                            tx.commit().await
                        })
                        .await?;
                        done += 1;
                    }
                    Ok::<_, pgtx::Error>(done)
                }));
            }
            let mut done = 0;
            for handle in handles {
                done += handle.await??;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// `tasks` tasks on a deadpool-postgres pool of `size`.
pub struct DeadpoolPool {
    runtime: Runtime,
    pool: deadpool_postgres::Pool,
    tasks: usize,
}

impl DeadpoolPool {
    pub fn new(dsn: &str, size: usize, tasks: usize) -> Result<DeadpoolPool, BoxError> {
        let runtime = multi_thread()?;
        let pool = {
            let _entered = runtime.enter();
            deadpool(dsn, size)?
        };
        Ok(DeadpoolPool {
            runtime,
            pool,
            tasks,
        })
    }

    pub fn run(&self, duration: Duration) -> Result<f64, BoxError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut handles = Vec::new();
            for task in 0..self.tasks {
                let pool = self.pool.clone();
                handles.push(tokio::spawn(async move {
                    let mut done = 0_u64;
                    let mut v = i32::try_from(task).unwrap_or(0);
                    while started.elapsed() < duration {
                        v = v.wrapping_add(1);
                        let mut client = pool.get().await?;
                        let tx = client.transaction().await?;
                        let statement = tx.prepare_cached(SQL).await?;
                        let row = tx.query_one(&statement, &[&v]).await?;
                        black_box(row.get::<_, i32>(0));
                        tx.commit().await?;
                        done += 1;
                    }
                    Ok::<_, BoxError>(done)
                }));
            }
            let mut done = 0;
            for handle in handles {
                done += handle.await??;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// What the hostile workload saw on one pool: connections handed out with
/// a transaction block already open, and statements refused because an
/// earlier holder left its transaction aborted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hostile {
    pub runs: u64,
    pub dirty: u64,
    pub aborted: u64,
}

/// Whether the server has a block open on this connection, by its own
/// clock (in a block `now()` is when it began; a simple query outside one
/// has its own implicit transaction).
fn in_block(messages: &[tokio_postgres::SimpleQueryMessage]) -> bool {
    messages.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
    )
}

pub const IN_BLOCK: &str = "SELECT now() <> statement_timestamp()";

/// A small deterministic generator.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The hostile workload of issue 20 on a pgtx::aio::Pool of `size`: 16
/// tasks × `each` transactions (BEGIN, a statement, sometimes a 2 ms
/// sleep, COMMIT), each under a random deadline of 0–5 ms that drops it
/// wherever it is; every checkout asks the server whether a block is open.
pub fn hostile_pgtx(dsn: &str, size: usize, each: u64) -> Result<Hostile, BoxError> {
    let runtime = multi_thread()?;
    let pool = std::sync::Arc::new(pgtx::aio::Pool::new(dsn, size)?);
    runtime.block_on(async {
        let mut handles = Vec::new();
        for task in 0..16_u64 {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                let mut seen = Hostile::default();
                let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (task + 1));
                for _ in 0..each {
                    let deadline = Duration::from_micros(random.next() % 5_000);
                    let sleep = random.next().is_multiple_of(4);
                    let work = async {
                        let mut guard = pool.lock().await?;
                        let dirty = in_block(&guard.simple_query(IN_BLOCK).await?);
                        let mut tx = guard.begin().await?;
                        tx.query_one(SQL, &[&1_i32]).await?;
                        if sleep {
                            tx.execute("SELECT pg_sleep(0.002)", &[]).await?;
                        }
                        tx.commit().await?;
                        Ok::<_, pgtx::Error>(dirty)
                    };
                    seen.runs += 1;
                    match tokio::time::timeout(deadline, work).await {
                        Ok(Ok(true)) => seen.dirty += 1,
                        Ok(Err(e))
                            if e.code() == Some(&pgtx::SqlState::IN_FAILED_SQL_TRANSACTION) =>
                        {
                            seen.aborted += 1
                        }
                        _ => {}
                    }
                }
                seen
            }));
        }
        let mut total = Hostile::default();
        for handle in handles {
            let seen = handle.await?;
            total.runs += seen.runs;
            total.dirty += seen.dirty;
            total.aborted += seen.aborted;
        }
        Ok(total)
    })
}

/// The same workload on a deadpool-postgres pool of `size`, written the
/// way its docs show (`transaction()`, `prepare_cached`, `commit`).
pub fn hostile_deadpool(dsn: &str, size: usize, each: u64) -> Result<Hostile, BoxError> {
    let runtime = multi_thread()?;
    let pool = {
        let _entered = runtime.enter();
        deadpool(dsn, size)?
    };
    runtime.block_on(async {
        let mut handles = Vec::new();
        for task in 0..16_u64 {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                let mut seen = Hostile::default();
                let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (task + 1));
                for _ in 0..each {
                    let deadline = Duration::from_micros(random.next() % 5_000);
                    let sleep = random.next().is_multiple_of(4);
                    let work = async {
                        let mut client = pool.get().await?;
                        let dirty = in_block(&client.simple_query(IN_BLOCK).await?);
                        let tx = client.transaction().await?;
                        let statement = tx.prepare_cached(SQL).await?;
                        tx.query_one(&statement, &[&1_i32]).await?;
                        if sleep {
                            tx.execute("SELECT pg_sleep(0.002)", &[]).await?;
                        }
                        tx.commit().await?;
                        Ok::<_, BoxError>(dirty)
                    };
                    seen.runs += 1;
                    match tokio::time::timeout(deadline, work).await {
                        Ok(Ok(true)) => seen.dirty += 1,
                        Ok(Err(e))
                            if e.to_string().contains("25P02")
                                || e.downcast_ref::<tokio_postgres::Error>()
                                    .and_then(tokio_postgres::Error::code)
                                    == Some(
                                        &tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION,
                                    ) =>
                        {
                            seen.aborted += 1
                        }
                        _ => {}
                    }
                }
                seen
            }));
        }
        let mut total = Hostile::default();
        for handle in handles {
            let seen = handle.await?;
            total.runs += seen.runs;
            total.dirty += seen.dirty;
            total.aborted += seen.aborted;
        }
        Ok(total)
    })
}

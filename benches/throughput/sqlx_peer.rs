//! sqlx's `PgPool` as the async peer beside deadpool-postgres: the same
//! one-task transaction (`Pool::begin`, a query sqlx prepares once per
//! connection and caches, `commit`: three round trips), the same 64 tasks
//! on pools of 4 and 8, and the same hostile cancel workload.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, Row};
use tokio::runtime::Runtime;

use super::aio::{Hostile, IN_BLOCK, XorShift};
use super::{BoxError, SQL};

/// sqlx's options from a libpq keyword DSN (`host=… port=… user=…
/// dbname=…`, as the harness writes them): sqlx reads only URLs.
fn options(dsn: &str) -> Result<PgConnectOptions, BoxError> {
    let mut options = PgConnectOptions::new_without_pgpass();
    for pair in dsn.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("not key=value in the bench DSN: {pair}"))?;
        options = match key {
            "host" | "hostaddr" => options.host(value),
            "port" => options.port(value.parse()?),
            "user" => options.username(value),
            "password" => options.password(value),
            "dbname" => options.database(value),
            _ => options,
        };
    }
    Ok(options)
}

/// A sqlx pool of `size` connections on `dsn`, opened on `runtime`.
fn pool(runtime: &Runtime, dsn: &str, size: u32) -> Result<PgPool, BoxError> {
    let options = options(dsn)?;
    Ok(runtime.block_on(
        PgPoolOptions::new()
            .max_connections(size)
            .min_connections(size)
            .connect_with(options),
    )?)
}

/// sqlx, one task: `pool.begin()`, `query_scalar` (prepared once per
/// connection and cached, sqlx's default), `commit` — the fastest way its
/// docs show.
pub struct Sqlx {
    runtime: Runtime,
    pool: PgPool,
}

impl Sqlx {
    pub fn new(dsn: &str) -> Result<Sqlx, BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let pool = pool(&runtime, dsn, 1)?;
        Ok(Sqlx { runtime, pool })
    }

    pub fn run(&self, duration: Duration) -> Result<f64, BoxError> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut done = 0_u64;
            let mut v = 0_i32;
            while started.elapsed() < duration {
                v = v.wrapping_add(1);
                let mut tx = self.pool.begin().await?;
                let got: i32 = sqlx::query_scalar(SQL).bind(v).fetch_one(&mut *tx).await?;
                black_box(got);
                tx.commit().await?;
                done += 1;
            }
            Ok(done as f64 / started.elapsed().as_secs_f64())
        })
    }
}

/// `tasks` tasks on a sqlx pool of `size`.
pub struct SqlxPool {
    runtime: Runtime,
    pool: PgPool,
    tasks: usize,
}

impl SqlxPool {
    pub fn new(dsn: &str, size: u32, tasks: usize) -> Result<SqlxPool, BoxError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let pool = pool(&runtime, dsn, size)?;
        Ok(SqlxPool {
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
                        let mut tx = pool.begin().await?;
                        let got: i32 = sqlx::query_scalar(SQL).bind(v).fetch_one(&mut *tx).await?;
                        black_box(got);
                        tx.commit().await?;
                        done += 1;
                    }
                    Ok::<_, sqlx::Error>(done)
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

/// The hostile workload of `aio::hostile_pgtx` on a sqlx pool of `size`,
/// written the way sqlx's docs show (`begin()` on the connection, queries
/// on `&mut *tx`, `commit`); the in-block check is a simple query, as
/// pgtx's and deadpool's are.
pub fn hostile_sqlx(dsn: &str, size: u32, each: u64) -> Result<Hostile, BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pool = pool(&runtime, dsn, size)?;
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
                        let mut conn = pool.acquire().await?;
                        // A `&str` without arguments goes as a simple Query.
                        let row = (&mut *conn).fetch_one(IN_BLOCK).await?;
                        let dirty: bool = row.try_get(0)?;
                        let mut tx = conn.begin().await?;
                        let got: i32 = sqlx::query_scalar(SQL).bind(1).fetch_one(&mut *tx).await?;
                        black_box(got);
                        if sleep {
                            sqlx::query("SELECT pg_sleep(0.002)")
                                .execute(&mut *tx)
                                .await?;
                        }
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(dirty)
                    };
                    seen.runs += 1;
                    match tokio::time::timeout(deadline, work).await {
                        Ok(Ok(true)) => seen.dirty += 1,
                        Ok(Err(e))
                            if e.as_database_error().and_then(|db| db.code()).as_deref()
                                == Some("25P02") =>
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

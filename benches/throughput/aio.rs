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

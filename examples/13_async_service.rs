//! # 13: pgtx in an async web service (axum)
//!
//! Teaches: the async API (`pgtx::aio`, feature `aio`) the way a web
//! service uses it, and what happens when a request times out.
//!
//! 1. An axum app whose state is an `aio::Pool`; the `POST /transfer`
//!    handler runs in `transaction(async |tx| …)`, whose closure must hand
//!    back its `Tx` committed or rolled back (the compiler checks it).
//! 2. The app has a request timeout (tower-http's `TimeoutLayer`, 250 ms):
//!    a slow transfer's handler future is dropped in the middle of a
//!    statement, and the client gets `408 Request Timeout`. The statement
//!    is cancelled on the server, its transaction rolled back, and the next
//!    request (`GET /audit`) gets a clean connection.
//! 3. Fifty requests at once, every fifth one slow enough to time out:
//!    afterwards the balances add up, nothing is left open on the server,
//!    and nothing that timed out committed.
//!
//! Prints: each request's status and body, and what the server shows.
//!
//! Run it with `cargo run --example 13_async_service`. It works in a
//! database of its own on the throwaway server (or on the one named by
//! `DATABASE_URL` / `PG*`), and serves HTTP on a free loopback port.

#[path = "../tests/common/server.rs"]
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pgtx::aio::Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_http::timeout::TimeoutLayer;

/// `POST /transfer/{amount}/{slow_ms}`: moves `amount` from account 1 to
/// account 2, after a check inside the transaction that takes `slow_ms`
/// (a slow query).
async fn transfer(
    State(db): State<Arc<Pool>>,
    Path((amount, slow_ms)): Path<(i64, u64)>,
) -> Result<String, AppError> {
    let left: i64 = db
        .transaction(async |mut tx| {
            if slow_ms > 0 {
                // A slow check before the transfer (it takes no row lock,
                // so other transfers go on meanwhile).
                let seconds = slow_ms as f64 / 1000.0;
                tx.execute("SELECT pg_sleep($1)", &[&seconds]).await?;
            }
            tx.execute(
                "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
                &[&amount],
            )
            .await?;
            tx.execute(
                "UPDATE accounts SET balance = balance + $1 WHERE id = 2",
                &[&amount],
            )
            .await?;
            let row = tx
                .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
                .await?;
            tx.commit_returning(row.get(0)).await
        })
        .await?;
    Ok(format!("moved {amount}; account 1 has {left} left"))
}

/// `GET /audit`: what the server says — the balances, the sessions left
/// idle inside a transaction, and `pg_sleep`s still running.
async fn audit(State(db): State<Arc<Pool>>) -> Result<String, AppError> {
    let mut guard = db.lock().await?;
    let row = guard
        .query_one(
            "SELECT (SELECT balance FROM accounts WHERE id = 1),
                    (SELECT balance FROM accounts WHERE id = 2),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database()
                        AND state LIKE 'idle in transaction%'),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND state = 'active'
                        AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid())",
            &[],
        )
        .await?;
    let (one, two, open, sleeping): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "balances {one} + {two} = {}, {open} transaction(s) left open, {sleeping} slow statement(s) still running",
        one + two
    ))
}

/// A pgtx error as an HTTP response.
struct AppError(pgtx::Error);

impl From<pgtx::Error> for AppError {
    fn from(e: pgtx::Error) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = if self.0.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (status, self.0.to_string()).into_response()
    }
}

fn app(db: Arc<Pool>) -> Router {
    Router::new()
        .route("/transfer/{amount}/{slow_ms}", post(transfer))
        .route("/audit", get(audit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(250),
        ))
        .with_state(db)
}

/// A bare HTTP/1.1 client (one request per connection): the status code
/// and the body.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server and the database are set up before the runtime starts:
    // the harness uses the blocking `postgres` crate.
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("example_13");
    server.admin_on(&dsn).batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts VALUES (1, 1000), (2, 0);",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(service(&dsn))
}

async fn service(dsn: &str) -> Result<(), Box<dyn std::error::Error>> {
    let db = Arc::new(Pool::new(dsn, 8)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(axum::serve(listener, app(Arc::clone(&db))).into_future());
    println!("serving on http://{addr}");

    // 1. A request that completes.
    let (status, body) = request(addr, "POST", "/transfer/10/0").await?;
    println!("1. POST /transfer/10/0 -> {status}: {body}");

    // 2. A request whose handler is still inside its transaction, in a
    //    5-second statement, when the 250 ms timeout drops its future.
    let (status, body) = request(addr, "POST", "/transfer/500/5000").await?;
    println!("2. POST /transfer/500/5000 -> {status} (the timeout dropped the handler){body}");
    let (status, body) = request(addr, "GET", "/audit").await?;
    println!(
        "   GET /audit -> {status}: {body} (the slow statement was cancelled, its transfer \
         rolled back; {} reported as unfinished)",
        db.state().unfinished
    );

    // 3. Fifty requests at once, every fifth one slow enough to time out.
    let mut requests = Vec::new();
    for n in 0..50 {
        let path = if n % 5 == 0 {
            "/transfer/1/400"
        } else {
            "/transfer/1/0"
        };
        requests.push(tokio::spawn(request(addr, "POST", path)));
    }
    let (mut ok, mut timed_out, mut other) = (0, 0, 0);
    for request in requests {
        match request.await?? {
            (200, _) => ok += 1,
            (408, _) => timed_out += 1,
            _ => other += 1,
        }
    }
    println!(
        "3. 50 concurrent transfers of 1: {ok} answered 200, {timed_out} timed out (408), {other} other"
    );
    // The cancel requests for the dropped statements go out on tasks, so
    // the last of them may still be on its way: ask until none runs.
    let since = std::time::Instant::now();
    let mut audited = request(addr, "GET", "/audit").await?;
    while !audited.1.contains(" 0 slow statement") {
        if since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        audited = request(addr, "GET", "/audit").await?;
    }
    println!(
        "   GET /audit -> {}: {} (within {} ms of the last answer)",
        audited.0,
        audited.1,
        since.elapsed().as_millis()
    );
    let mut guard = db.lock().await?;
    let two: i64 = guard
        .query_one("SELECT balance FROM accounts WHERE id = 2", &[])
        .await?
        .get(0);
    drop(guard);
    println!(
        "   account 2 holds {two} = 10 + {ok} answered + {} whose COMMIT had been sent when the \
         timeout struck ({} such COMMIT(s) logged with the server's outcome)",
        two - 10 - ok,
        db.interrupted_commits()
    );
    serving.abort();
    Ok(())
}

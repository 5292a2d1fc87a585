//! Helpers for the async front's tests (`pgtx::aio`), which run on a
//! multi-threaded tokio runtime and look at the server from a blocking
//! second connection.

use std::time::{Duration, Instant};

use super::fixtures::Db;
use pgtx::aio::ManagedConnection;

/// Runs harness code that blocks (the `postgres` crate's own runtime, a
/// second connection to look at the server) off the async runtime.
pub fn outside<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// An async manager on `db`, default settings.
pub fn manager(db: &Db) -> ManagedConnection {
    ManagedConnection::new(&db.dsn).expect("settings")
}

/// Waits (polling the server) until `cond` holds, at most 20 s.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Statements running now in `db` whose text is `like`, other than the
/// asking one.
pub fn running(db: &Db, like: &str) -> i64 {
    outside(|| {
        db.admin()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND state = 'active' AND query LIKE $1",
                &[&like],
            )
            .expect("pg_stat_activity")
            .get(0)
    })
}

/// Waits until `sql` runs on the server (at most 20 s).
pub async fn until_running(db: &Db, sql: &str) {
    assert!(eventually(|| running(db, sql) > 0).await, "{sql} never ran");
}

/// Whether the server has a transaction block open on the guard's
/// connection, by its own clock: in a block, `now()` is when the block
/// began; outside one, a simple Query's implicit transaction begins with
/// the statement. (Through the extended protocol the two differ anyway:
/// the statement's time is its Execute's.)
pub async fn in_block(guard: &mut pgtx::aio::Guard<'_>) -> pgtx::Result<bool> {
    let rows = guard
        .simple_query("SELECT now() <> statement_timestamp()")
        .await?;
    Ok(rows.iter().any(
        |message| matches!(message, pgtx::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
    ))
}

/// A small deterministic generator (no dependency for a few tests).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A transaction begun on `source` (a manager or a pool).
pub async fn begun<S: pgtx::aio::ConnectionSource>(source: &S) -> pgtx::aio::Tx<'_> {
    source
        .lock()
        .await
        .expect("lock")
        .begin()
        .await
        .expect("begin")
}

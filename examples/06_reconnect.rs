//! # 06: connections that die, and closing
//!
//! Teaches: the shared connection is replaced when it breaks, without the
//! callers doing anything.
//!
//! - The server ends the session while nobody holds it (an administrator's
//!   `pg_terminate_backend`, a server restart, an idle timeout): the next
//!   `lock()` or `transaction()` notices, opens a new connection, and goes on.
//! - The session dies in the middle of a transaction: that transaction fails
//!   ([`pgtx::Error::ConnectionLost`]; nothing of it is committed), and the
//!   next holder gets a fresh connection.
//! - `manager.close()` closes the connection on purpose; the next holder
//!   would open a new one.
//!
//! Prints: the server process (backend pid) serving each transaction, so you
//! can see it change; the status and `is_closed()` around each event; and
//! the sessions the server still has after `close()`.
//!
//! Run it with `cargo run --example 06_reconnect`. It works in a database of
//! its own (`pgtx_example_06_...`), created on the throwaway server or on the
//! one named by `DATABASE_URL` / `PG*`, and dropped at the end.

#[path = "../tests/common/server.rs"]
mod server;

use pgtx::ManagedConnection;

fn backend_pid(manager: &ManagedConnection) -> pgtx::Result<i32> {
    manager.transaction(|mut tx| {
        let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[])?.get(0);
        tx.commit_returning(pid)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = server::TestServer::shared();
    println!("server: {}", server.describe());
    let dsn = server.fresh_database("pgtx_example_06");
    let dbname = dsn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .ok_or("the harness DSN names no database")?
        .to_owned();
    let manager = ManagedConnection::new(&dsn)?;
    manager.lock()?.batch_execute(
        "CREATE TABLE visits (n int NOT NULL);
         INSERT INTO visits VALUES (1)",
    )?;

    // 1. Killed while idle.
    let first = backend_pid(&manager)?;
    println!("\n1. served by backend pid {first}; {manager}");
    let killed = server.terminate_backends(&dbname);
    println!("   the server terminated {killed} session(s) of {dbname} (pg_terminate_backend)");
    println!(
        "   status: {}, is_closed: {} (nobody has looked since)",
        manager.status(),
        manager.is_closed()
    );
    let second = backend_pid(&manager)?;
    println!("   the next transaction just works, on backend pid {second}");
    if second == first {
        return Err("the terminated session served again".into());
    }

    // 2. Killed in the middle of a transaction.
    println!("\n2. killed while a transaction is open");
    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO visits VALUES (2)", &[])?;
    println!("   inserted a row; status: {}", tx.status());
    server.terminate_backends(&dbname);
    match tx.execute("INSERT INTO visits VALUES (3)", &[]) {
        Err(e) => println!("   the next statement fails: {}", server::error_chain(&e)),
        Ok(_) => return Err("a statement ran on a terminated session".into()),
    }
    match tx.commit() {
        Err(e) => println!("   and commit() says: {e}"),
        Ok(_) => return Err("commit() succeeded on a terminated session".into()),
    }
    println!(
        "   status: {}, is_closed: {}",
        manager.status(),
        manager.is_closed()
    );
    let third = backend_pid(&manager)?;
    let rows: i64 = manager
        .lock()?
        .query_one("SELECT count(*) FROM visits", &[])?
        .get(0);
    println!("   the next holder reconnected (backend pid {third}); visits has {rows} row(s)");
    if rows != 1 {
        return Err(format!("expected only the first row, found {rows}").into());
    }

    // 3. Closing on purpose.
    println!("\n3. manager.close()");
    manager.close()?;
    println!("   {manager}; is_closed: {}", manager.is_closed());
    let mut admin = server.admin();
    // DROP DATABASE waits a few seconds for sessions to go, then refuses:
    // it succeeding proves the connection really was closed.
    admin.batch_execute(&format!("DROP DATABASE \"{dbname}\""))?;
    println!("   no session left: database {dbname} dropped");
    Ok(())
}

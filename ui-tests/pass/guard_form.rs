// The guard form as intended: autocommit statements on the guard, `begin`
// into `Tx<Open>`, `commit`/`rollback` into `Tx<Done>`, then release, plus
// `try_lock` / `lock_timeout` and the transaction status at each step.
// Only compiled and type-checked: `main` never connects.

use std::time::Duration;

use pgtx::{ManagedConnection, TransactionStatus};

fn guarded(manager: &ManagedConnection) -> pgtx::Result<i64> {
    let mut guard = manager.lock()?;
    guard.execute("CREATE TABLE IF NOT EXISTS visits (n bigint)", &[])?;
    assert_eq!(guard.status(), TransactionStatus::Idle);

    let mut tx = guard.begin()?;
    tx.execute("INSERT INTO visits VALUES ($1)", &[&1_i64])?;
    let visits: i64 = tx.query_one("SELECT count(*) FROM visits", &[])?.get(0);
    assert_eq!(tx.status(), TransactionStatus::InTransaction);
    let done = tx.commit()?;
    done.release();
    Ok(visits)
}

fn rolled_back(manager: &ManagedConnection) -> pgtx::Result<()> {
    let mut tx = manager.lock_timeout(Duration::from_secs(1))?.begin()?;
    tx.batch_execute("DELETE FROM visits")?;
    tx.rollback()?.release();
    Ok(())
}

fn if_free(manager: &ManagedConnection) -> pgtx::Result<Option<i64>> {
    let mut guard = match manager.try_lock() {
        Ok(guard) => guard,
        Err(pgtx::Error::WouldBlock) => return Ok(None),
        Err(other) => return Err(other),
    };
    let row = guard.query_opt("SELECT max(n) FROM visits", &[])?;
    Ok(row.and_then(|r| r.get(0)))
}

fn prepared(manager: &ManagedConnection) -> pgtx::Result<Vec<i64>> {
    let mut tx = manager.lock()?.begin()?;
    let statement = tx.prepare("SELECT n FROM visits WHERE n > $1")?;
    let rows = tx.query(&statement, &[&0_i64])?;
    let done = tx.commit()?;
    drop(done); // the same as `done.release()`
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

fn main() -> pgtx::Result<()> {
    let manager = ManagedConnection::new("host=localhost dbname=shop")?;
    assert_eq!(manager.status(), TransactionStatus::Closed);
    let _: fn(&ManagedConnection) -> pgtx::Result<i64> = guarded;
    let _: fn(&ManagedConnection) -> pgtx::Result<()> = rolled_back;
    let _: fn(&ManagedConnection) -> pgtx::Result<Option<i64>> = if_free;
    let _: fn(&ManagedConnection) -> pgtx::Result<Vec<i64>> = prepared;
    Ok(())
}

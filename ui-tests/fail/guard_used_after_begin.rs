// `begin()` consumes the guard: no autocommit statement can run beside the
// open transaction.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut guard = manager.lock()?;
    let tx = guard.begin()?;
    guard.execute("INSERT INTO t VALUES (1)", &[])?;
    tx.commit()?.release();
    Ok(())
}

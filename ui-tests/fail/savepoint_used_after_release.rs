// `release()` takes the savepoint by value: it cannot run statements afterwards.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    let mut sp = tx.savepoint()?;
    sp.release()?;
    sp.execute("INSERT INTO t VALUES (1)", &[])?;
    Ok(())
}

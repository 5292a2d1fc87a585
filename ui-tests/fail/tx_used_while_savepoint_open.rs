// A savepoint borrows its transaction mutably: the transaction cannot run a
// statement (or commit) until the savepoint is released or rolled back.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    let mut sp = tx.savepoint()?;
    tx.execute("INSERT INTO t VALUES (1)", &[])?;
    sp.execute("INSERT INTO t VALUES (2)", &[])?;
    sp.release()?;
    tx.commit()?;
    Ok(())
}

// A `Tx<Open>` is consumed by `commit()`: running a statement on it afterwards
// is a use of a moved value.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    tx.execute("INSERT INTO t VALUES (1)", &[])?;
    let done = tx.commit()?;
    tx.execute("INSERT INTO t VALUES (2)", &[])?;
    done.release();
    Ok(())
}

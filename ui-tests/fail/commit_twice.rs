// `commit()` takes the transaction by value, so it cannot be committed twice.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    let first = tx.commit()?;
    let second = tx.commit()?;
    first.release();
    second.release();
    Ok(())
}

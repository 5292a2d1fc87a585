// The transaction cannot be committed (moved) while a savepoint still borrows it.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    let sp = tx.savepoint()?;
    tx.commit()?;
    sp.rollback()?;
    Ok(())
}

// After `commit()` the transaction is gone: it cannot be rolled back too.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    let committed = tx.commit()?;
    let rolled_back = tx.rollback()?;
    committed.release();
    rolled_back.release();
    Ok(())
}

// A `Tx` borrows its manager: it cannot live on after the manager is dropped.

fn main() -> Result<(), pgtx::Error> {
    let tx;
    {
        let manager = pgtx::ManagedConnection::new("host=localhost")?;
        tx = manager.lock()?.begin()?;
    }
    tx.rollback()?.release();
    Ok(())
}

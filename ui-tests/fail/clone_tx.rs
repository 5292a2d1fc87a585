// `Tx` is not `Clone`: two handles on one transaction could finish it twice.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    let twin = tx.clone();
    tx.commit()?.release();
    twin.rollback()?.release();
    Ok(())
}

// The manager cannot be dropped (or moved away) while a `Tx` still holds it.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    drop(manager);
    tx.commit()?.release();
    Ok(())
}

// `Tx` is not `Copy`: assigning it moves it, and the old name is unusable.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    let copy = tx;
    copy.commit()?.release();
    tx.rollback()?.release();
    Ok(())
}

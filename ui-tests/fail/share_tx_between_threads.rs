// `Tx` is not `Sync`: another thread cannot even borrow it.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    std::thread::scope(|s| {
        s.spawn(|| println!("{:?}", tx.status()));
    });
    tx.rollback()?.release();
    Ok(())
}

// `Tx` is not `Send`: the hold on the connection belongs to the thread that
// took it, so a transaction cannot move to another thread.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    std::thread::scope(|s| {
        s.spawn(move || tx.commit().map(pgtx::Tx::release));
    });
    Ok(())
}

// `Guard` is not `Send`: the hold on the connection belongs to the thread
// that took it.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut guard = manager.lock()?;
    std::thread::scope(|s| {
        s.spawn(move || guard.execute("SELECT 1", &[]).map(drop));
    });
    Ok(())
}

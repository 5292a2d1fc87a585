// A `Guard` borrows its manager: a function cannot hand out a guard on a
// manager it created itself.

fn connect() -> Result<pgtx::Guard<'static>, pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    manager.lock()
}

fn main() -> Result<(), pgtx::Error> {
    connect()?.begin()?.rollback()?.release();
    Ok(())
}

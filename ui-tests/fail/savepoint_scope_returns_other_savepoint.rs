// A `savepoint_scope` closure must hand back its own savepoint, finished: a
// nested savepoint (another brand) does not fit.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    tx.savepoint_scope(|mut sp| {
        let inner = sp.savepoint()?;
        inner.release()
    })?;
    tx.commit()?;
    Ok(())
}

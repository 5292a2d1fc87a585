// `commit()` exists only on `Tx<Open>`: a `Tx<Done>` cannot be committed.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let done = manager.lock()?.begin()?.rollback()?;
    done.commit()?.release();
    Ok(())
}

// Statements exist only on `Tx<Open>`: a finished `Tx<Done>` has no `execute`.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let tx = manager.lock()?.begin()?;
    let mut done = tx.commit()?;
    done.execute("INSERT INTO t VALUES (1)", &[])?;
    Ok(())
}

// The closure of `transaction` must return the `Tx<Done>` that `commit()` or
// `rollback()` gave back; handing back the still-open `Tx<Open>` does not fit.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    manager.transaction(|mut tx| {
        tx.execute("INSERT INTO t VALUES (1)", &[])?;
        Ok(tx)
    })?;
    Ok(())
}

// Each `transaction` closure's `Tx` carries its own lifetime (`for<'s>`), a
// brand: an inner closure cannot pass off the outer transaction's `Tx<Done>`
// as its own, so the inner transaction cannot be left unfinished that way.

fn main() -> Result<(), pgtx::Error> {
    let accounts = pgtx::ManagedConnection::new("host=localhost dbname=accounts")?;
    let audit = pgtx::ManagedConnection::new("host=localhost dbname=audit")?;
    accounts.transaction(|outer| {
        let outer_done = outer.commit()?;
        audit.transaction(|_inner| Ok::<_, pgtx::Error>(outer_done))?;
        Err(pgtx::Error::UnfinishedTransaction)
    })
}

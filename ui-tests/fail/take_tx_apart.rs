// A `Tx` cannot be taken apart (to swap its state marker, or to keep the hold
// on the connection without the transaction): its fields are private.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let done = manager.lock()?.begin()?.commit()?;
    let pgtx::Tx { state, .. } = done;
    println!("{state:?}");
    Ok(())
}

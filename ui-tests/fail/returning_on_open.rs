// A value can only be attached to a finished transaction: `returning` exists
// on `Tx<Done>`, not on `Tx<Open>`.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let answer: i32 = manager.transaction(|tx| Ok(tx.returning(42)))?;
    println!("{answer}");
    Ok(())
}

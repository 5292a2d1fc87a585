// The closure's `Tx` cannot be stored outside the closure to be used after
// `transaction` has released the connection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut stash = None;
    let outcome: Result<(), Box<dyn std::error::Error>> = manager.transaction(|tx| {
        stash = Some(tx);
        Err("kept the transaction for later".into())
    });
    if let Some(tx) = stash {
        tx.commit()?.release();
    }
    outcome
}

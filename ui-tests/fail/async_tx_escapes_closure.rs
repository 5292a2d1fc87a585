// The async closure's `Tx` cannot be stored outside the closure to be used
// after `transaction` has released the connection.

async fn run(manager: &pgtx::aio::ManagedConnection) -> Result<(), pgtx::Error> {
    let mut stash = None;
    let outcome: Result<(), pgtx::Error> = manager
        .transaction(async |tx| {
            stash = Some(tx);
            Err(pgtx::Error::UnfinishedTransaction)
        })
        .await;
    if let Some(tx) = stash {
        tx.commit().await?;
    }
    outcome
}

fn main() {
    let _ = run;
}

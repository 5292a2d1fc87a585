// The async closure of `aio::ManagedConnection::transaction` must return
// the `Tx<Done>` that `commit().await` or `rollback().await` gave back;
// handing back the still-open `Tx<Open>` does not fit.

async fn run(manager: &pgtx::aio::ManagedConnection) -> Result<(), pgtx::Error> {
    manager
        .transaction(async |mut tx| {
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            Ok(tx)
        })
        .await?;
    Ok(())
}

fn main() {
    let _ = run;
}

// Each async `transaction` closure's `Tx` carries its own lifetime, a
// brand: an inner closure cannot pass off the outer transaction's
// `Tx<Done>` as its own, so the inner transaction cannot be left
// unfinished that way.

async fn run(
    accounts: &pgtx::aio::ManagedConnection,
    audit: &pgtx::aio::ManagedConnection,
) -> Result<(), pgtx::Error> {
    accounts
        .transaction(async |outer| {
            let outer_done = outer.commit().await?;
            audit
                .transaction(async |_inner| Ok::<_, pgtx::Error>(outer_done))
                .await?;
            Err(pgtx::Error::UnfinishedTransaction)
        })
        .await
}

fn main() {
    let _ = run;
}

// An async participant's transaction is lent by the coordinator: it cannot
// be committed on its own while it is joined (only `TwoPhase::commit` ends
// it).

async fn run(bank: &pgtx::aio::ManagedConnection) -> Result<(), pgtx::Error> {
    let mut dtx = pgtx::aio::TwoPhase::new();
    let a = dtx.join(bank).await?;
    dtx.tx(a)?.commit().await?;
    dtx.commit().await?;
    Ok(())
}

fn main() {
    let _ = run;
}

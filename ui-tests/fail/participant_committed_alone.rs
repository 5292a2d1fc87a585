// A participant's transaction is lent by the coordinator: it cannot be
// committed on its own while it is joined (only `TwoPhase::commit` ends it).

fn main() -> Result<(), pgtx::Error> {
    let bank = pgtx::ManagedConnection::new("host=localhost")?;
    let mut dtx = pgtx::TwoPhase::new();
    let a = dtx.join(&bank)?;
    dtx.tx(a)?.commit()?;
    dtx.commit()?;
    Ok(())
}

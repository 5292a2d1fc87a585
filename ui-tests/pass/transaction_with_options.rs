// `transaction_with` and `begin_with` take `TxOptions`: isolation level,
// read-only, deferrable. Only compiled and type-checked: `main` never
// connects.

use pgtx::{IsolationLevel, ManagedConnection, TxOptions};

fn report(manager: &ManagedConnection) -> pgtx::Result<i64> {
    let options = TxOptions::new()
        .isolation(IsolationLevel::Serializable)
        .read_only(true)
        .deferrable(true);
    manager.transaction_with(options, |mut tx| {
        let n: i64 = tx.query_one("SELECT count(*) FROM orders", &[])?.get(0);
        Ok(tx.commit()?.returning(n))
    })
}

fn repeatable(manager: &ManagedConnection) -> pgtx::Result<()> {
    let options = TxOptions::new().isolation(IsolationLevel::RepeatableRead);
    let mut tx = manager.lock()?.begin_with(options)?;
    tx.execute("UPDATE orders SET seen = true", &[])?;
    tx.commit()?.release();
    Ok(())
}

fn main() -> pgtx::Result<()> {
    let manager = ManagedConnection::builder("host=localhost dbname=shop")
        .abandon_after(None)
        .build()?;
    assert!(manager.is_closed());
    let _: fn(&ManagedConnection) -> pgtx::Result<i64> = report;
    let _: fn(&ManagedConnection) -> pgtx::Result<()> = repeatable;
    Ok(())
}

// The closure of `transaction` cannot just return a value: the value rides on
// the finished transaction, `Ok(tx.commit()?.returning(n))`.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let n: i64 = manager.transaction(|mut tx| {
        let n: i64 = tx.query_one("SELECT count(*) FROM t", &[])?.get(0);
        Ok(n)
    })?;
    println!("{n}");
    Ok(())
}

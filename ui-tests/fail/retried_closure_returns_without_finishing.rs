// A retried transaction's closure must also hand back its `Tx` finished:
// returning it open does not compile.

fn main() -> Result<(), pgtx::Error> {
    let pool = pgtx::Pool::new("host=localhost", 2)?;
    pool.transaction_retrying(&pgtx::RetryPolicy::default(), |mut tx| {
        tx.execute("UPDATE counter SET n = n + 1", &[])?;
        Ok(tx)
    })?;
    Ok(())
}

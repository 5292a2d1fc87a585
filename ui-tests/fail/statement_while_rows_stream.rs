// A `RowIter` (or a COPY reader or writer) borrows its handle: no other
// statement can run on the connection until it is done, so nothing lands
// in the middle of the rows or of the COPY data.

fn main() -> Result<(), pgtx::Error> {
    let manager = pgtx::ManagedConnection::new("host=localhost")?;
    let mut tx = manager.lock()?.begin()?;
    let rows = tx.query_raw("SELECT n FROM generate_series(1, 10) n", &[])?;
    tx.execute("INSERT INTO t VALUES (1)", &[])?;
    for row in rows {
        row?;
    }
    tx.commit()?;
    Ok(())
}

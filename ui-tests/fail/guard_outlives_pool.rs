// A `Guard` from a pool borrows the pool: a function cannot hand out a
// guard on a pool it created itself.

fn checkout() -> Result<pgtx::Guard<'static>, pgtx::Error> {
    let pool = pgtx::Pool::new("host=localhost", 4)?;
    pool.lock()
}

fn main() -> Result<(), pgtx::Error> {
    checkout()?.begin()?.rollback()?.release();
    Ok(())
}

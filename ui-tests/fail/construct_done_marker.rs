// The `Done` state marker cannot be built outside the crate: only `commit()`
// and `rollback()` produce a finished transaction.

fn main() {
    let done: pgtx::Done<i32> = pgtx::Done(42);
    println!("{done:?}");
}

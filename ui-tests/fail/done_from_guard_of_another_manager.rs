// A `Tx<Done>` finished in the guard form of another manager does not carry
// the brand (`for<'s>`) of the closure's own transaction, so the closure
// cannot return it and leave its own transaction unfinished. Even a manager
// in a `static` does not help: `Tx` is invariant in its lifetime.

use std::sync::LazyLock;

use pgtx::ManagedConnection;

static AUDIT: LazyLock<ManagedConnection> = LazyLock::new(|| {
    ManagedConnection::new("host=localhost dbname=audit").expect("valid settings")
});

fn main() -> Result<(), pgtx::Error> {
    let accounts = ManagedConnection::new("host=localhost dbname=accounts")?;
    let audited = AUDIT.lock()?.begin()?.commit()?;
    accounts.transaction(|_tx| Ok(audited))
}

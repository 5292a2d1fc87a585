// Savepoints as intended: opened from a `Tx` or another savepoint, finished
// by `release` or `rollback`, the closure form handing a value back, and the
// transaction usable again once the savepoint is over.
// Only compiled and type-checked: `main` never connects.

use pgtx::{Done, ManagedConnection, Open, Savepoint};

fn try_insert<'s>(mut sp: Savepoint<'s, Open>, id: i32) -> pgtx::Result<Savepoint<'s, Done<bool>>> {
    match sp.execute("INSERT INTO t VALUES ($1)", &[&id]) {
        Ok(_) => sp.release_returning(true),
        Err(_) => Ok(sp.rollback()?.returning(false)),
    }
}

fn work(manager: &ManagedConnection) -> pgtx::Result<bool> {
    manager.transaction(|mut tx| {
        tx.execute("INSERT INTO t VALUES (0)", &[])?;
        let mut outer = tx.savepoint()?;
        let inner = outer.savepoint()?;
        inner.rollback()?;
        outer.release()?;
        let inserted = tx.savepoint_scope(|sp| try_insert(sp, 1))?;
        tx.execute("INSERT INTO t VALUES (2)", &[])?;
        tx.commit_returning(inserted)
    })
}

fn main() {
    if std::env::var_os("PGTX_UI_NEVER_SET").is_some() {
        let manager = ManagedConnection::new("host=localhost").expect("settings");
        let _ = work(&manager);
    }
}

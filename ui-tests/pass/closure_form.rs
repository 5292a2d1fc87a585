// The closure form as intended: statements on `Tx<Open>`, a value handed back
// with `returning`, `?` on both pgtx errors and the caller's own error type,
// helpers that take `&mut Tx<Open>` or finish a `Tx<'s, Open>` generically.
// Only compiled and type-checked: `main` never connects.

use pgtx::{Done, ManagedConnection, Open, Tx};

enum AppError {
    Db(pgtx::Error),
    Overdrawn(i64),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Db(e) => write!(f, "database: {e}"),
            AppError::Overdrawn(total) => write!(f, "overdrawn: {total}"),
        }
    }
}

impl From<pgtx::Error> for AppError {
    fn from(e: pgtx::Error) -> Self {
        AppError::Db(e)
    }
}

fn add(tx: &mut Tx<'_, Open>, amount: i64) -> pgtx::Result<u64> {
    tx.execute("INSERT INTO ledger (amount) VALUES ($1)", &[&amount])
}

fn finish<'s>(tx: Tx<'s, Open>, keep: bool) -> pgtx::Result<Tx<'s, Done>> {
    if keep { tx.commit() } else { tx.rollback() }
}

fn commit_one(manager: &ManagedConnection) -> pgtx::Result<()> {
    manager.transaction(|mut tx| {
        add(&mut tx, 1)?;
        tx.commit()
    })
}

fn balance(manager: &ManagedConnection) -> pgtx::Result<i64> {
    manager.transaction(|mut tx| {
        let total: i64 = tx
            .query_one("SELECT sum(amount)::bigint FROM ledger", &[])?
            .get(0);
        Ok(tx.rollback()?.returning(total))
    })
}

fn withdraw(manager: &ManagedConnection, amount: i64) -> Result<i64, AppError> {
    manager.transaction(|mut tx| {
        add(&mut tx, -amount)?;
        let total: i64 = tx
            .query_one("SELECT sum(amount)::bigint FROM ledger", &[])?
            .get(0);
        if total < 0 {
            // Returning `Err` rolls the transaction back.
            return Err(AppError::Overdrawn(total));
        }
        Ok(tx.commit()?.returning(total))
    })
}

fn maybe_keep(manager: &ManagedConnection, keep: bool) -> pgtx::Result<()> {
    manager.transaction(|mut tx| {
        add(&mut tx, 5)?;
        finish(tx, keep)
    })
}

// Two managers, one transaction inside the other; each closure finishes its
// own `Tx`, and the inner one's value flows out through the outer one.
fn copy_total(source: &ManagedConnection, target: &ManagedConnection) -> pgtx::Result<i64> {
    source.transaction(|mut outer| {
        let total: i64 = outer
            .query_one("SELECT sum(amount)::bigint FROM ledger", &[])?
            .get(0);
        let copied = target.transaction(|mut inner| {
            inner.execute("INSERT INTO totals VALUES ($1)", &[&total])?;
            // `commit_returning` fixes the inner error type; a closure ending
            // in `Ok(inner.commit()?.returning(total))` would need it named.
            inner.commit_returning(total)
        })?;
        Ok(outer.commit()?.returning(copied))
    })
}

fn main() -> pgtx::Result<()> {
    let manager = ManagedConnection::new("host=localhost dbname=bank")?;
    assert!(manager.is_closed());
    let _: [fn(&ManagedConnection) -> pgtx::Result<()>; 1] = [commit_one];
    let _: fn(&ManagedConnection) -> pgtx::Result<i64> = balance;
    let _: fn(&ManagedConnection, i64) -> Result<i64, AppError> = withdraw;
    let _: fn(&ManagedConnection, bool) -> pgtx::Result<()> = maybe_keep;
    let _: fn(&ManagedConnection, &ManagedConnection) -> pgtx::Result<i64> = copy_total;
    Ok(())
}

//! [`Tx`]: a transaction whose state is part of its type.

use std::fmt;

use postgres::types::ToSql;

use crate::error::Result;
use crate::held::Held;
use crate::state::{Done, Open, State};
use crate::statements::{ToStatement, statement_methods};
use crate::status::TransactionStatus;
use crate::{Row, Statement};

/// A transaction on the shared connection; `S` is its state, [`Open`] or
/// [`Done`].
///
/// A `Tx<'_, Open>` comes from [`Guard::begin`](crate::Guard::begin) or is
/// handed to the closure of
/// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction).
/// Statements exist only on `Tx<'_, Open>`; [`commit`](Tx::commit) and
/// [`rollback`](Tx::rollback) consume it and give back a `Tx<'_, Done>`, and
/// holding a `Tx` of either state holds the connection.
///
/// # When a `Tx<'_, Open>` is not finished
///
/// Rust cannot force a value to be consumed, so the compiler's check is
/// complete only in the closure form. Otherwise:
///
/// - **dropped** (an early `?` return, a panic): `Drop` sends `ROLLBACK`
///   before the connection is released, and reports
///   [`Error::UnfinishedTransaction`](crate::Error::UnfinishedTransaction)
///   through `log` and
///   [`ManagedConnection::unfinished_transactions`](crate::ManagedConnection::unfinished_transactions);
/// - **forgotten** (`mem::forget`, a leaked `Rc` cycle): nothing runs, so the
///   next acquirer does it. It recognises the lease as abandoned (the same
///   thread asking again, the thread gone, or no statement for
///   [`Builder::abandon_after`](crate::Builder::abandon_after)), rolls back,
///   reports the same way, and takes over. The forgotten `Tx`, if it is ever
///   used again, fails with [`Error::LeaseRevoked`](crate::Error::LeaseRevoked).
///
/// Either way no other thread is handed a connection with a transaction open.
///
/// `Tx` is not `Send`, not `Clone` and two pointers wide.
#[clippy::has_significant_drop]
pub struct Tx<'m, S: State = Open> {
    held: Held<'m>,
    state: S,
}

static_assertions::assert_eq_size!(Tx<'static, Open>, [usize; 2]);
static_assertions::assert_eq_size!(Tx<'static, Done>, [usize; 2]);
static_assertions::assert_not_impl_any!(Tx<'static, Open>: Send, Sync, Clone, Copy);
static_assertions::assert_not_impl_any!(Tx<'static, Done>: Send, Sync, Clone, Copy);

impl<'m> Tx<'m, Open> {
    pub(crate) fn open(mut held: Held<'m>) -> Self {
        held.ticket = held.ticket.opened();
        Tx {
            held,
            state: Open(()),
        }
    }

    /// Hands the release of the lease to a `transaction` scope.
    pub(crate) fn into_scoped(mut self) -> Self {
        self.held.ticket = self.held.ticket.scoped();
        self
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.held.ticket.epoch()
    }

    statement_methods!("inside this transaction");

    /// Commits the transaction. Returns `Ok` only if the server committed.
    ///
    /// # Errors
    ///
    /// The transaction is over whatever the error, and the connection is
    /// released (in the closure form, when the closure returns):
    ///
    /// - [`Error::TransactionAborted`](crate::Error::TransactionAborted): a
    ///   statement had failed, so the server had aborted the transaction; it
    ///   was rolled back and nothing was saved. (The bare `postgres` crate
    ///   returns `Ok` here.)
    /// - [`Error::Db`](crate::Error::Db): the server refused to commit (a
    ///   deferred constraint, a serialization failure); rolled back.
    /// - [`Error::ConnectionLost`](crate::Error::ConnectionLost): the
    ///   connection had broken before `COMMIT`; not committed.
    /// - [`Error::CommitOutcomeUnknown`](crate::Error::CommitOutcomeUnknown):
    ///   the connection broke while `COMMIT` was in flight; nobody can tell.
    /// - [`Error::LeaseRevoked`](crate::Error::LeaseRevoked): this holder had
    ///   been taken over as abandoned, and the transaction rolled back.
    pub fn commit(self) -> Result<Tx<'m, Done>> {
        let Tx { mut held, .. } = self;
        let result = held.with_session(|s| s.commit());
        held.ticket = held.ticket.finished();
        result.map(|()| Tx {
            held,
            state: Done(()),
        })
    }

    /// Commits, and attaches `value` for
    /// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction)
    /// to hand back: `tx.commit_returning(v)` is `tx.commit()` then
    /// [`returning(v)`](Tx::returning), in a form whose error type the
    /// compiler can infer as the closure's last expression.
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// let answer: i32 = manager.transaction(|mut tx| {
    ///     let answer = tx.query_one("SELECT 42", &[])?.get(0);
    ///     tx.commit_returning(answer)
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`commit`](Tx::commit).
    pub fn commit_returning<T>(self, value: T) -> Result<Tx<'m, Done<T>>> {
        Ok(self.commit()?.returning(value))
    }

    /// Rolls the transaction back.
    ///
    /// If `ROLLBACK` cannot be sent, the connection is closed instead, which
    /// makes the server roll back; that still counts as success.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this holder had
    /// been taken over as abandoned (the transaction was rolled back then).
    pub fn rollback(self) -> Result<Tx<'m, Done>> {
        let Tx { mut held, .. } = self;
        let result = held.with_session(|s| {
            s.rollback();
            Ok(())
        });
        held.ticket = held.ticket.finished();
        result.map(|()| Tx {
            held,
            state: Done(()),
        })
    }

    /// The transaction status: [`TransactionStatus::InTransaction`], or
    /// [`TransactionStatus::InError`] once a statement has failed.
    pub fn status(&self) -> TransactionStatus {
        self.held.manager().status()
    }
}

impl<'m, T> Tx<'m, Done<T>> {
    /// Attaches the value that
    /// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction)
    /// hands back. (When the closure's error type is not written anywhere
    /// else, say it in the `Ok`, or use [`Tx::commit_returning`].)
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// let found: bool = manager.transaction(|mut tx| {
    ///     let found = tx.query_opt("SELECT 1 FROM pg_class WHERE relname = 'x'", &[])?.is_some();
    ///     Ok::<_, pgtx::Error>(tx.rollback()?.returning(found))
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn returning<U>(self, value: U) -> Tx<'m, Done<U>> {
        Tx {
            held: self.held,
            state: Done(value),
        }
    }

    /// The attached value.
    pub fn value(&self) -> &T {
        &self.state.0
    }

    /// Releases the connection and returns the attached value.
    pub fn into_value(self) -> T {
        let Tx { held, state } = self;
        drop(held);
        state.0
    }

    /// Releases the connection (the same as dropping the `Tx`).
    pub fn release(self) {}

    /// Closes the connection now; the next holder opens a new one (the
    /// seed's `close=True`). The connection is released when this `Tx` is
    /// dropped, or when the `transaction` closure returns it.
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// manager.transaction(|mut tx| {
    ///     tx.execute("VACUUM", &[])?;
    ///     Ok::<_, pgtx::Error>(tx.commit()?.close())
    /// })?;
    /// assert!(manager.is_closed());
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn close(self) -> Self {
        if let Ok(mut session) = self.held.session() {
            session.close();
        }
        self
    }
}

impl<S: State> fmt::Debug for Tx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("state", &std::any::type_name::<S>())
            .field("status", &self.held.manager().status())
            .finish_non_exhaustive()
    }
}

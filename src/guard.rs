//! [`Guard`]: the exclusive hold on the shared connection.

use std::fmt;

use postgres::types::ToSql;

use crate::error::Result;
use crate::held::Held;
use crate::options::TxOptions;
use crate::state::Open;
use crate::statements::{ToStatement, statement_methods};
use crate::status::TransactionStatus;
use crate::tx::Tx;
use crate::{Row, Statement};

/// Exclusive hold on a [`ManagedConnection`](crate::ManagedConnection)'s
/// connection, with no transaction open.
///
/// Statements run here are autocommit: each is its own transaction, as in
/// txpostgres' `runQuery` and `runOperation`. [`begin`](Self::begin) turns
/// the guard into a [`Tx<'_, Open>`](Tx), which only `commit` or `rollback`
/// can end.
///
/// Dropping the guard releases the connection. It is not `Send`: the hold
/// belongs to the thread that took it.
#[must_use = "dropping the guard releases the connection at once"]
#[clippy::has_significant_drop]
pub struct Guard<'m> {
    held: Held<'m>,
}

static_assertions::assert_not_impl_any!(Guard<'static>: Send, Sync, Clone);

impl<'m> Guard<'m> {
    pub(crate) fn new(held: Held<'m>) -> Guard<'m> {
        Guard { held }
    }

    /// Begins a transaction with PostgreSQL's default options.
    ///
    /// Nothing is sent yet: `BEGIN` goes out with the transaction's first
    /// statement, in the same network write and the same protocol Sync
    /// group, so a one-statement transaction costs two round trips (the
    /// statement, then `COMMIT`) and an empty one none. If the server
    /// refuses `BEGIN`, it skips the statement too: nothing ever runs
    /// outside the transaction, and the first statement returns `BEGIN`'s
    /// error. As with any lazily started transaction (pgjdbc does the same),
    /// `now()` is the time of the first statement. [`status`](Tx::status)
    /// reads [`TransactionStatus::InTransaction`] from here on.
    ///
    /// If the server closed the connection while the transaction waited for
    /// its first statement, that statement is sent on a new connection:
    /// nothing of the transaction had reached the server.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this guard lost
    /// the connection. The connection is released.
    #[must_use = "a transaction must end with `commit()` or `rollback()`; dropping it rolls back"]
    pub fn begin(self) -> Result<Tx<'m, Open>> {
        self.begin_with(TxOptions::default())
    }

    /// Begins a transaction with an isolation level, read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`begin`](Self::begin).
    #[must_use = "a transaction must end with `commit()` or `rollback()`; dropping it rolls back"]
    pub fn begin_with(self, options: TxOptions) -> Result<Tx<'m, Open>> {
        let Guard { held } = self;
        held.with_session(|s| {
            s.begin(options.begin_sql());
            Ok(())
        })?;
        Ok(Tx::open(held))
    }

    statement_methods!("outside any transaction: it commits on its own (autocommit)");

    /// The transaction status (always [`TransactionStatus::Idle`] on a healthy guard).
    pub fn status(&self) -> TransactionStatus {
        self.held.manager().status()
    }

    /// Closes the connection and releases it; the next holder reconnects
    /// (the seed's `close=True`).
    pub fn close(self) {
        if let Ok(mut session) = self.held.session() {
            session.close();
        }
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

//! Proof of holding the lease, shared by [`Guard`](crate::Guard) and [`Tx`](crate::Tx).

use std::marker::PhantomData;

use postgres::types::ToSql;

use crate::error::{Error, Result};
use crate::manager::ManagedConnection;
use crate::session::{Active, Sends};
use crate::statements::ToStatement;
use crate::{Row, Statement};

/// The holder's epoch plus two flags, in one word so that a `Tx` stays two
/// pointers wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl Ticket {
    const OPEN: u64 = 1 << 63;
    const SCOPED: u64 = 1 << 62;
    const EPOCH: u64 = !(Self::OPEN | Self::SCOPED);

    pub(crate) fn new(epoch: u64) -> Ticket {
        Ticket(epoch & Self::EPOCH)
    }

    pub(crate) fn epoch(self) -> u64 {
        self.0 & Self::EPOCH
    }

    /// A transaction is open under this ticket: dropping it is a fallback case.
    pub(crate) fn is_open(self) -> bool {
        self.0 & Self::OPEN != 0
    }

    /// A `transaction` scope owns the lease, not this holder.
    pub(crate) fn is_scoped(self) -> bool {
        self.0 & Self::SCOPED != 0
    }

    pub(crate) fn opened(self) -> Ticket {
        Ticket(self.0 | Self::OPEN)
    }

    pub(crate) fn finished(self) -> Ticket {
        Ticket(self.0 & !Self::OPEN)
    }

    pub(crate) fn scoped(self) -> Ticket {
        Ticket(self.0 | Self::SCOPED)
    }
}

/// Holds the lease on `manager` until dropped.
///
/// Not `Send`: the lease belongs to the thread that took it (that is how an
/// abandoned lease is recognised). Invariant in `'m`, so that the lifetime
/// of a `transaction` closure's `Tx` works as a brand.
pub(crate) struct Held<'m> {
    manager: &'m ManagedConnection,
    pub(crate) ticket: Ticket,
    _not_send: PhantomData<*const ()>,
    _invariant: PhantomData<fn(&'m ()) -> &'m ()>,
}

impl<'m> Held<'m> {
    pub(crate) fn new(manager: &'m ManagedConnection, ticket: Ticket) -> Held<'m> {
        Held {
            manager,
            ticket,
            _not_send: PhantomData,
            _invariant: PhantomData,
        }
    }

    pub(crate) fn manager(&self) -> &'m ManagedConnection {
        self.manager
    }

    /// Locks the session for one operation, if this holder still holds the lease.
    pub(crate) fn session(&self) -> Result<Active<'m>> {
        let session = self.manager.session.lock();
        if self.manager.lease.epoch() != self.ticket.epoch() {
            return Err(Error::LeaseRevoked);
        }
        Ok(session)
    }

    /// Runs one operation on the session, marking the holder busy meanwhile.
    pub(crate) fn with_session<T>(
        &self,
        op: impl FnOnce(&mut Active<'m>) -> Result<T>,
    ) -> Result<T> {
        let mut session = self.session()?;
        let lease = &self.manager.lease;
        lease.mark_busy();
        let result = op(&mut session);
        lease.mark_idle();
        result
    }

    pub(crate) fn execute<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| s.cached_statement(query, |d, st| d.run(|c| c.execute(st, params))))
    }

    pub(crate) fn query<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| s.cached_statement(query, |d, st| d.run(|c| c.query(st, params))))
    }

    pub(crate) fn query_one<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| s.cached_statement(query, |d, st| d.run(|c| c.query_one(st, params))))
    }

    pub(crate) fn query_opt<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| s.cached_statement(query, |d, st| d.run(|c| c.query_opt(st, params))))
    }

    pub(crate) fn batch_execute(&self, query: &str) -> Result<()> {
        self.with_session(|s| s.statement(Sends::Query, |d| d.run(|c| c.batch_execute(query))))
    }

    pub(crate) fn prepare(&self, query: &str) -> Result<Statement> {
        self.with_session(|s| s.statement(Sends::Parse, |d| d.run(|c| c.prepare(query))))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.manager.finish(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_flags_do_not_touch_the_epoch() {
        let t = Ticket::new(41);
        assert!(!t.is_open() && !t.is_scoped());
        let t = t.opened().scoped();
        assert!(t.is_open() && t.is_scoped());
        assert_eq!(t.epoch(), 41);
        assert!(!t.finished().is_open());
        assert_eq!(t.finished().epoch(), 41);
    }
}

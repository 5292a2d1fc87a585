//! Proof of holding the lease (shared by [`Guard`](crate::Guard) and
//! [`Tx`](crate::Tx)), and the statements a holder runs.

use std::marker::PhantomData;

use postgres::SimpleQueryMessage;
use postgres::types::{ToSql, Type};

use crate::blocking::lease::Ticket;
use crate::blocking::session::{LockedSession, RequestShape};
use crate::blocking::shared::Shared;
use crate::conn::Target;
use crate::conn::request::{
    Batch, Bound, Execute, Prepare, Query, QueryOne, QueryOpt, Simple, StatementKind,
};
use crate::error::{Error, Result};
use crate::machine::control;
use crate::machine::fallback::Cause;
use crate::machine::transaction_status::TransactionStatus;
use crate::statements::{Naming, Sql, ToStatement};
use crate::{Portal, Row, Statement};

/// Holds the lease until dropped.
///
/// Not `Send`: the lease belongs to the thread that took it (that is how an
/// abandoned lease is recognised). Invariant in `'m`, so that the lifetime
/// of a `transaction` closure's `Tx` works as a brand.
pub(crate) struct Held<'m> {
    shared: &'m Shared,
    pub(crate) ticket: Ticket,
    _not_send: PhantomData<*const ()>,
    _invariant: PhantomData<fn(&'m ()) -> &'m ()>,
}

impl<'m> Held<'m> {
    pub(crate) fn new(shared: &'m Shared, ticket: Ticket) -> Held<'m> {
        Held {
            shared,
            ticket,
            _not_send: PhantomData,
            _invariant: PhantomData,
        }
    }

    pub(crate) fn shared(&self) -> &'m Shared {
        self.shared
    }

    /// The lease's epoch, handed on to a holder that finishes it itself
    /// (this `Held` no longer releases anything).
    pub(crate) fn into_epoch(self) -> u64 {
        let held = std::mem::ManuallyDrop::new(self);
        held.ticket.epoch()
    }

    /// Lets go on purpose (see [`Shared::finish_guard`]).
    pub(crate) fn release_reporting(self) -> Result<()> {
        let held = std::mem::ManuallyDrop::new(self);
        held.shared.finish_guard(held.ticket)
    }

    /// The connection as this holder uses it.
    pub(crate) fn conn(&self, scope: StatementScope) -> Conn<'m> {
        Conn {
            shared: self.shared,
            epoch: self.ticket.epoch(),
            scope,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shared.finish(self.ticket);
    }
}

/// Where a holder's statements run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatementScope {
    /// A `Guard`: each statement commits on its own.
    Autocommit,
    /// A `Tx` (`depth` 0) or the savepoint number `depth` inside it.
    Transaction { depth: u32 },
}

/// The one implementation of the statement methods of `Guard`, `Tx` and
/// `Savepoint`: checks that the holder still holds the lease, that no
/// transaction-control SQL gets into a transaction, and that savepoints
/// forgotten inside it are rolled back first.
#[derive(Clone, Copy)]
pub(crate) struct Conn<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) epoch: u64,
    pub(crate) scope: StatementScope,
}

impl Conn<'_> {
    /// Runs one operation on the session.
    pub(crate) fn with_session<T>(
        &self,
        op: impl FnOnce(&mut LockedSession<'_>) -> Result<T>,
    ) -> Result<T> {
        let scope = self.scope;
        let shared = self.shared;
        shared.with_session(self.epoch, |session| {
            if let StatementScope::Transaction { depth } = scope
                && session.restore_depth(depth)?
            {
                shared.report_unfinished(Cause::SavepointForgotten);
            }
            op(session)
        })
    }

    /// Refuses SQL that would end or restart the transaction (inside one),
    /// before anything is sent.
    fn check<T: ?Sized + ToStatement>(&self, session: &LockedSession<'_>, query: &T) -> Result<()> {
        match (self.scope, query.sql()) {
            (StatementScope::Transaction { .. }, Sql::Text(sql)) => session.refuse_control(sql),
            _ => Ok(()),
        }
    }

    pub(crate) fn execute<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| {
            self.check(s, query)?;
            s.cached_statement(query, Execute, params)
        })
    }

    pub(crate) fn query<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| {
            self.check(s, query)?;
            s.cached_statement(query, Query, params)
        })
    }

    pub(crate) fn query_one<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| {
            self.check(s, query)?;
            s.cached_statement(query, QueryOne, params)
        })
    }

    pub(crate) fn query_opt<T>(
        &self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| {
            self.check(s, query)?;
            s.cached_statement(query, QueryOpt, params)
        })
    }

    pub(crate) fn query_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>> {
        self.typed(query, Query, params)
    }

    pub(crate) fn execute_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        self.typed(query, Execute, params)
    }

    /// Runs `query` on the unnamed statement with the parameter types
    /// given (Parse, Bind, Describe, Execute in one round trip; nothing
    /// named is left behind, so it suits transaction poolers too).
    fn typed<K: StatementKind>(
        &self,
        query: &str,
        kind: K,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<K::Output> {
        let (values, types): (Vec<&(dyn ToSql + Sync)>, Vec<Type>) =
            params.iter().map(|(v, t)| (*v, t.clone())).unzip();
        self.with_session(|s| {
            self.check(s, query)?;
            let bound = Bound {
                kind,
                target: Target::Unnamed(query, &types),
                params: &values,
            };
            s.statement(RequestShape::Bind, Some(query), &bound)
        })
    }

    pub(crate) fn simple_query(&self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        self.with_session(|s| {
            self.check(s, query)?;
            s.statement(RequestShape::Query, Some(query), &Simple(query))
        })
    }

    pub(crate) fn batch_execute(&self, query: &str) -> Result<()> {
        self.with_session(|s| {
            self.check(s, query)?;
            s.statement(RequestShape::Query, Some(query), &Batch(query))
        })
    }

    /// Prepares `query`. Transaction control is refused everywhere, guards
    /// included: a prepared statement can be run inside a transaction
    /// later, where its text is no longer checked. Refused altogether
    /// without a statement cache (nothing is named then).
    pub(crate) fn prepare(&self, query: &str) -> Result<Statement> {
        self.with_session(|s| {
            if s.naming() == Naming::Unnamed {
                return Err(Error::PreparedStatementsOff);
            }
            s.refuse_control(query)?;
            if let Some(command) = control::shape_decided_at_run_time(query) {
                return Err(Error::ShapeDecidedAtRunTime(command));
            }
            if control::copy_direction(query).is_some() {
                return Err(Error::CopyNotPreparable);
            }
            s.statement(RequestShape::Parse, Some(query), &Prepare(query))
        })
    }

    /// Starts `query` and keeps its rows as a stream on the connection,
    /// read with [`next_row`](LockedSession::next_row) through
    /// [`with_stream`](Self::with_stream).
    pub(crate) fn query_raw<T>(&self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<()>
    where
        T: ?Sized + ToStatement,
    {
        self.with_session(|s| {
            self.check(s, query)?;
            s.query_raw(query, params)
        })
    }

    /// Starts `COPY … FROM STDIN` (`copy_in`) or `COPY … TO STDOUT` and
    /// keeps its data as a stream on the connection.
    pub(crate) fn copy<T>(&self, query: &T, copy_in: bool) -> Result<()>
    where
        T: ?Sized + ToStatement,
    {
        if let Sql::Text(sql) = query.sql()
            && control::copy_direction(sql) != Some(copy_in)
        {
            return Err(Error::not_a_copy(copy_in, sql));
        }
        self.with_session(|s| {
            self.check(s, query)?;
            s.copy(query, copy_in)
        })
    }

    /// Binds `query` with `params` to a new portal: a cursor, declared
    /// inside the transaction (`DECLARE … NO SCROLL CURSOR FOR query`),
    /// whose rows [`query_portal`](Self::query_portal) fetches.
    pub(crate) fn bind(&self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Portal> {
        self.with_session(|s| {
            self.check(s, query)?;
            let (transaction, number) = s.next_portal();
            let portal = Portal::new(transaction, number);
            s.cached_statement(portal.declare_sql(query).as_str(), Execute, params)?;
            Ok(portal)
        })
    }

    /// The next `max_rows` rows of `portal` (all that are left when
    /// `max_rows` is 0 or less).
    pub(crate) fn query_portal(&self, portal: &Portal, max_rows: i32) -> Result<Vec<Row>> {
        self.with_session(|s| {
            if s.transaction_number() != portal.transaction() || !s.in_transaction() {
                return Err(Error::PortalClosed);
            }
            s.cached_statement(portal.fetch_sql(max_rows).as_str(), Query, &[])
        })
    }

    /// Runs one step of the open stream (the one use of the session that
    /// does not end it first).
    pub(crate) fn with_stream<T>(
        &self,
        op: impl FnOnce(&mut LockedSession<'_>) -> Result<T>,
    ) -> Result<T> {
        self.shared.with_stream(self.epoch, op)
    }

    /// Ends the open stream, reporting an unfinished COPY FROM STDIN
    /// (for a handle's `Drop`; nothing to do once the lease is gone: the
    /// next holder ended it).
    pub(crate) fn end_stream(&self) {
        let ended = self.with_stream(|s| Ok(s.end_stream()));
        if let Ok(Some(cause)) = ended {
            self.shared.report_unfinished(cause);
        }
    }

    pub(crate) fn status(&self) -> TransactionStatus {
        self.shared.status()
    }
}

//! [`Savepoint`]: a transaction nested in a [`Tx`](crate::Tx), with its
//! state in its type.

use std::fmt;
use std::marker::PhantomData;

use postgres::types::{ToSql, Type};

use crate::blocking::held::{Conn, StatementScope};
use crate::blocking::session::RollBackTarget;
use crate::error::{Error, Result};
use crate::machine::fallback::{HolderEnd, verdict};
use crate::machine::transaction_status::TransactionStatus;
use crate::state::{Done, Open, State};
use crate::statements::ToStatement;
use crate::{CopyInWriter, CopyOutReader, Portal, Row, RowIter, SimpleQueryMessage, Statement};

/// A savepoint inside a transaction; `S` is its state, [`Open`] or [`Done`].
///
/// Made by [`Tx::savepoint`](crate::Tx::savepoint) (or
/// [`Savepoint::savepoint`], one level deeper), it borrows its parent
/// mutably: the compiler refuses any use of the parent until the savepoint
/// is finished. [`release`](Savepoint::release) keeps its work as part of
/// the transaction; [`rollback`](Savepoint::rollback) undoes it, and leaves
/// the transaction usable even if a statement inside had failed (as
/// `ROLLBACK TO SAVEPOINT` does). Both consume it.
///
/// Its name on the server is generated (`"pgtx_savepoint_1"`, `…_2` one
/// level deeper), and quoted.
///
/// # When a `Savepoint<'_, Open>` is not finished
///
/// - **dropped** (an early `?` return, a panic): `Drop` rolls back to the
///   savepoint and reports it as
///   [`Error::UnfinishedTransaction`](crate::Error::UnfinishedTransaction)
///   (through `log` and
///   [`unfinished_transactions`](crate::ManagedConnection::unfinished_transactions));
///   the transaction goes on without the savepoint's work;
/// - **forgotten** (`mem::forget`): the next statement, commit or rollback
///   of the parent rolls back to it first, and reports the same way. The
///   forgotten work is never committed.
///
/// A savepoint is not `Send` and not `Clone`.
#[clippy::has_significant_drop]
pub struct Savepoint<'t, S: State = Open> {
    level: Level<'t>,
    state: S,
    /// Invariant in `'t`, so that the lifetime of a
    /// [`savepoint_scope`](crate::Tx::savepoint_scope) closure's savepoint
    /// works as a brand (a savepoint from elsewhere does not fit).
    _brand: PhantomData<fn(&'t ()) -> &'t ()>,
    _not_send: PhantomData<*const ()>,
}

static_assertions::assert_not_impl_any!(Savepoint<'static, Open>: Send, Sync, Clone, Copy);
static_assertions::assert_not_impl_any!(Savepoint<'static, Done>: Send, Sync, Clone, Copy);

/// The savepoint's place on the connection; its `Drop` is the fallback.
struct Level<'t> {
    conn: Conn<'t>,
    depth: u32,
    /// Still open on the server as far as this handle knows.
    open: bool,
    /// A `savepoint_scope` owns the ending, not this handle.
    scoped: bool,
}

impl<'t> Savepoint<'t, Open> {
    /// Opens the savepoint one level below `parent`.
    pub(crate) fn open(parent: Conn<'t>) -> Result<Savepoint<'t, Open>> {
        let depth = parent.with_session(|s| s.savepoint())?;
        Ok(Savepoint {
            level: Level {
                conn: Conn {
                    scope: StatementScope::Transaction { depth },
                    ..parent
                },
                depth,
                open: true,
                scoped: false,
            },
            state: Open(()),
            _brand: PhantomData,
            _not_send: PhantomData,
        })
    }

    pub(crate) fn conn(&self) -> Conn<'t> {
        self.level.conn
    }

    /// Executes a statement inside this savepoint and returns the number of
    /// rows it affected.
    ///
    /// # Errors
    ///
    /// As [`Tx::execute`](crate::Tx::execute). A failed statement aborts
    /// the transaction; [`rollback`](Self::rollback) recovers it.
    pub fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().execute(query, params)
    }

    /// Runs a query inside this savepoint and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`Tx::execute`](crate::Tx::execute).
    pub fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query(query, params)
    }

    /// Runs a query inside this savepoint that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`Tx::query_one`](crate::Tx::query_one).
    pub fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query_one(query, params)
    }

    /// Runs a query inside this savepoint that returns at most one row.
    ///
    /// # Errors
    ///
    /// As [`Tx::query_one`](crate::Tx::query_one), except that no row is `Ok(None)`.
    pub fn query_opt<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query_opt(query, params)
    }

    /// Runs a query inside this savepoint with the parameter types given.
    ///
    /// # Errors
    ///
    /// As [`Tx::query_typed`](crate::Tx::query_typed).
    pub fn query_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>> {
        self.conn().query_typed(query, params)
    }

    /// Executes a statement inside this savepoint with the parameter
    /// types given.
    ///
    /// # Errors
    ///
    /// As [`Tx::execute_typed`](crate::Tx::execute_typed).
    pub fn execute_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        self.conn().execute_typed(query, params)
    }

    /// Runs statements with the simple query protocol inside this
    /// savepoint, and returns what the server sent.
    ///
    /// # Errors
    ///
    /// As [`Tx::simple_query`](crate::Tx::simple_query).
    pub fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        self.conn().simple_query(query)
    }

    /// Runs one or more statements separated by `;`, without parameters,
    /// inside this savepoint.
    ///
    /// # Errors
    ///
    /// As [`Tx::batch_execute`](crate::Tx::batch_execute).
    pub fn batch_execute(&mut self, query: &str) -> Result<()> {
        self.conn().batch_execute(query)
    }

    /// Runs a query inside this savepoint and returns its rows as they arrive, with
    /// bounded memory however many there are: see [`RowIter`] (which
    /// borrows this handle until it is dropped).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), for the start of the query; each
    /// row's error comes from the iterator; a failure aborts the transaction until the savepoint is rolled back.
    pub fn query_raw<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<RowIter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        RowIter::start(self.conn(), query, params)
    }

    /// Starts a `COPY … FROM STDIN` inside this savepoint: write its data to the
    /// [`CopyInWriter`] (or, for `FORMAT binary`, typed rows through a
    /// [`BinaryCopyInWriter`](crate::binary_copy::BinaryCopyInWriter)) and
    /// end it with `finish()`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): the server's error for a COPY it
    /// refuses (a table that does not exist, a `COPY … TO STDOUT`); a failure aborts the transaction until the savepoint is rolled back.
    pub fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyInWriter::start(self.conn(), query)
    }

    /// Starts a `COPY … TO STDOUT` inside this savepoint: read its data from the
    /// [`CopyOutReader`] (or, for `FORMAT binary`, typed rows through a
    /// [`BinaryCopyOutIter`](crate::binary_copy::BinaryCopyOutIter)).
    ///
    /// # Errors
    ///
    /// As [`copy_in`](Self::copy_in).
    pub fn copy_out<T>(&mut self, query: &T) -> Result<CopyOutReader<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyOutReader::start(self.conn(), query)
    }

    /// Binds `query` with `params` to a new [`Portal`] inside this savepoint, whose
    /// rows [`query_portal`](Self::query_portal) fetches a batch at a
    /// time (a cursor: `DECLARE … NO SCROLL CURSOR FOR query`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); the portal outlives the savepoint when it is released, and is closed when it is rolled back.
    pub fn bind(&mut self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Portal> {
        self.conn().bind(query, params)
    }

    /// The next `max_rows` rows of `portal` (all that are left when
    /// `max_rows` is 0 or less); an empty `Vec` once it has none left.
    ///
    /// # Errors
    ///
    /// [`Error::PortalClosed`](crate::Error::PortalClosed) if `portal`
    /// was bound in another transaction (nothing is sent); otherwise as
    /// [`execute`](Self::execute).
    pub fn query_portal(&mut self, portal: &Portal, max_rows: i32) -> Result<Vec<Row>> {
        self.conn().query_portal(portal, max_rows)
    }

    /// Prepares a statement for repeated use on this connection.
    ///
    /// # Errors
    ///
    /// As [`Tx::prepare`](crate::Tx::prepare).
    pub fn prepare(&mut self, query: &str) -> Result<Statement> {
        self.conn().prepare(query)
    }

    /// Opens a savepoint inside this one.
    ///
    /// # Errors
    ///
    /// As [`Tx::savepoint`](crate::Tx::savepoint).
    pub fn savepoint(&mut self) -> Result<Savepoint<'_, Open>> {
        Savepoint::open(self.conn())
    }

    /// Runs `work` in a savepoint inside this one; see
    /// [`Tx::savepoint_scope`](crate::Tx::savepoint_scope).
    ///
    /// # Errors
    ///
    /// As [`Tx::savepoint_scope`](crate::Tx::savepoint_scope).
    ///
    /// # Panics
    ///
    /// As [`Tx::savepoint_scope`](crate::Tx::savepoint_scope).
    pub fn savepoint_scope<T, E, F>(&mut self, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Savepoint<'s, Open>) -> Result<Savepoint<'s, Done<T>>, E>,
        E: From<Error>,
    {
        scope(self.savepoint()?, work)
    }

    /// Releases the savepoint: its work becomes part of the transaction
    /// (and is committed, or not, with it).
    ///
    /// # Errors
    ///
    /// - [`Error::TransactionAborted`]: a statement inside had failed, so
    ///   the savepoint was rolled back instead; the transaction goes on
    ///   without its work;
    /// - as [`execute`](Self::execute) otherwise (the connection broke, or
    ///   the lease was revoked). The savepoint is over either way.
    pub fn release(self) -> Result<Savepoint<'t, Done>> {
        self.finish(|level| {
            level
                .conn
                .with_session(|s| s.release_savepoint(level.depth))
        })
    }

    /// Rolls back everything done since the savepoint was opened, and ends
    /// it. The transaction is usable afterwards, even if a statement inside
    /// had failed.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) (the connection broke, or the lease was
    /// revoked). The savepoint is over either way.
    pub fn rollback(self) -> Result<Savepoint<'t, Done>> {
        self.finish(|level| {
            level
                .conn
                .with_session(|s| s.rollback_to_savepoint(level.depth))
        })
    }

    /// Releases, and attaches `value` for
    /// [`savepoint_scope`](crate::Tx::savepoint_scope) to hand back.
    ///
    /// # Errors
    ///
    /// As [`release`](Self::release).
    pub fn release_returning<T>(self, value: T) -> Result<Savepoint<'t, Done<T>>> {
        Ok(self.release()?.returning(value))
    }

    /// The transaction status, as the server last reported it.
    pub fn status(&self) -> TransactionStatus {
        self.conn().status()
    }

    fn finish(self, end: impl FnOnce(&Level<'t>) -> Result<()>) -> Result<Savepoint<'t, Done>> {
        let Savepoint { mut level, .. } = self;
        let result = end(&level);
        level.open = false;
        result.map(|()| Savepoint {
            level,
            state: Done(()),
            _brand: PhantomData,
            _not_send: PhantomData,
        })
    }
}

impl<'t, T> Savepoint<'t, Done<T>> {
    /// Attaches the value that [`savepoint_scope`](crate::Tx::savepoint_scope)
    /// hands back.
    pub fn returning<U>(self, value: U) -> Savepoint<'t, Done<U>> {
        Savepoint {
            level: self.level,
            state: Done(value),
            _brand: PhantomData,
            _not_send: PhantomData,
        }
    }

    /// The attached value.
    pub fn value(&self) -> &T {
        &self.state.0
    }

    /// Gives the parent back (by ending the borrow) and returns the value.
    pub fn into_value(self) -> T {
        self.state.0
    }
}

impl Drop for Level<'_> {
    fn drop(&mut self) {
        if !self.open || self.scoped {
            return;
        }
        let panicked = std::thread::panicking();
        roll_back_unfinished(
            self.conn,
            self.depth,
            HolderEnd::SavepointDropped { panicked },
        );
    }
}

/// Rolls back to savepoint `depth` if it is still open when its hold
/// ends as `end` says, and reports it as the fallback decides. A savepoint
/// whose holder lost the lease was cleaned up by the new holder.
fn roll_back_unfinished(conn: Conn<'_>, depth: u32, end: HolderEnd) {
    let Ok(mut session) = conn.shared.session(conn.epoch) else {
        return;
    };
    let end = verdict(end, session.savepoint_is_open(depth));
    let report = session.fall_back(RollBackTarget::Savepoint(depth), end);
    drop(session);
    if let Some(cause) = report {
        conn.shared.report_unfinished(cause);
    }
}

/// The closure form: `work` must finish the savepoint; whatever it leaves
/// open is rolled back when it returns (reported only on a panic).
pub(crate) fn scope<'t, T, E, F>(savepoint: Savepoint<'t, Open>, work: F) -> Result<T, E>
where
    F: for<'s> FnOnce(Savepoint<'s, Open>) -> Result<Savepoint<'s, Done<T>>, E>,
{
    let mut savepoint = savepoint;
    savepoint.level.scoped = true;
    let exit = ScopeExit {
        conn: savepoint.level.conn,
        depth: savepoint.level.depth,
    };
    let outcome = work(savepoint);
    let exit = std::mem::ManuallyDrop::new(exit);
    roll_back_unfinished(exit.conn, exit.depth, HolderEnd::SavepointScopeEnded);
    outcome.map(Savepoint::into_value)
}

/// Ends a `savepoint_scope` that unwinds.
struct ScopeExit<'t> {
    conn: Conn<'t>,
    depth: u32,
}

impl Drop for ScopeExit<'_> {
    fn drop(&mut self) {
        // Only reached by unwinding: `scope` forgets it otherwise.
        roll_back_unfinished(
            self.conn,
            self.depth,
            HolderEnd::SavepointDropped { panicked: true },
        );
    }
}

impl<S: State> fmt::Debug for Savepoint<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Savepoint")
            .field("state", &std::any::type_name::<S>())
            .field("depth", &self.level.depth)
            .field("status", &self.level.conn.status())
            .finish_non_exhaustive()
    }
}

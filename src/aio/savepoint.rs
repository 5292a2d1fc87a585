//! [`Savepoint`]: an async transaction nested in a [`Tx`](super::Tx).

use std::fmt;
use std::marker::PhantomData;

use postgres::types::{ToSql, Type};

use crate::aio::copy::{CopyInWriter, CopyOutReader};
use crate::aio::held::{self, Parts, Scope};
use crate::aio::rows::RowStream;
use crate::aio::session::Inner;
use crate::conn::request::{Execute, Query, QueryOne, QueryOpt};
use crate::conn::session::{RollBackTarget, SessionCore};
use crate::error::{Error, Result};
use crate::machine::fallback::{HolderEnd, verdict};
use crate::state::{Done, Open, State};
use crate::statements::ToStatement;
use crate::{Portal, Row, SimpleQueryMessage, Statement};

/// A savepoint inside an async transaction; `S` is its state, [`Open`] or
/// [`Done`], as for the blocking [`crate::Savepoint`].
///
/// It borrows its parent mutably: the parent cannot be used until the
/// savepoint is released or rolled back (both consume it). Dropped open
/// (an early `?`, a panic, a future dropped), it is rolled back (only its
/// own work) before the parent's next statement, commit or rollback, and
/// reported; forgotten (`mem::forget`), the same.
#[clippy::has_significant_drop]
pub struct Savepoint<'t, S: State = Open> {
    level: Level<'t>,
    state: S,
    /// Invariant in `'t`: the brand of a `savepoint_scope` closure's savepoint.
    _brand: PhantomData<fn(&'t ()) -> &'t ()>,
}

/// The savepoint's place in the transaction; its `Drop` is the fallback.
struct Level<'t> {
    inner: &'t Inner,
    /// The session, until the savepoint ends.
    core: Option<&'t mut SessionCore>,
    depth: u32,
    /// A `savepoint_scope` owns the ending: a closure's `Err` is its own report.
    scoped: bool,
}

static_assertions::assert_impl_all!(Savepoint<'static, Open>: Send);
static_assertions::assert_not_impl_any!(Savepoint<'static, Open>: Clone, Copy);

/// Opens a savepoint one level below `depth` (0: the transaction).
pub(crate) async fn open<'t>(
    inner: &'t Inner,
    core: &'t mut SessionCore,
    depth: u32,
) -> Result<Savepoint<'t, Open>> {
    held::prepare(inner, core, Scope::Transaction { depth }, None).await?;
    let depth = core.savepoint(&inner.shared).await?;
    Ok(Savepoint {
        level: Level {
            inner,
            core: Some(core),
            depth,
            scoped: false,
        },
        state: Open(()),
        _brand: PhantomData,
    })
}

/// Runs `work` in a savepoint opened below `depth`: the shape of
/// `transaction`, one level down.
pub(crate) async fn scope<T, E, F>(
    inner: &Inner,
    core: &mut SessionCore,
    depth: u32,
    work: F,
) -> Result<T, E>
where
    F: for<'s> AsyncFnOnce(Savepoint<'s, Open>) -> Result<Savepoint<'s, Done<T>>, E>,
    E: From<Error>,
{
    let mut savepoint = open(inner, core, depth).await?;
    savepoint.level.scoped = true;
    let outcome = work(savepoint).await.map(Savepoint::into_value);
    // The closure dropped an unfinished savepoint: roll back to it now.
    inner.tidy(core).await;
    outcome
}

impl<'t, S: State> Savepoint<'t, S> {
    fn core(&mut self) -> &mut SessionCore {
        match self.level.core.as_deref_mut() {
            Some(core) => core,
            None => unreachable!("an open savepoint holds the session"),
        }
    }

    /// Ends it as `Done`, keeping `value`.
    fn finish<U>(mut self, value: U) -> Savepoint<'t, Done<U>> {
        self.level.core = None;
        Savepoint {
            level: self.level,
            state: Done(value),
            _brand: PhantomData,
        }
    }
}

impl<'t> Savepoint<'t, Open> {
    /// Its session, with the scope its statements run in (for the
    /// generic handle traits).
    pub(crate) fn held_parts(&mut self) -> Parts<'_> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        Parts::new(inner, self.core(), Scope::Transaction { depth })
    }

    /// Executes a statement inside this savepoint and returns the number
    /// of rows it affected.
    ///
    /// # Errors
    ///
    /// As [`Tx::execute`](super::Tx::execute). A failed statement aborts
    /// the transaction; [`rollback`](Self::rollback) recovers it.
    pub async fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::statement(
            inner,
            self.core(),
            Scope::Transaction { depth },
            query,
            Execute,
            params,
        )
        .await
    }

    /// Runs a query inside this savepoint and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::statement(
            inner,
            self.core(),
            Scope::Transaction { depth },
            query,
            Query,
            params,
        )
        .await
    }

    /// Runs a query inside this savepoint that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and an error if it returns no row or
    /// more than one.
    pub async fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::statement(
            inner,
            self.core(),
            Scope::Transaction { depth },
            query,
            QueryOne,
            params,
        )
        .await
    }

    /// Runs a query inside this savepoint that returns at most one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and an error if it returns more than one row.
    pub async fn query_opt<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::statement(
            inner,
            self.core(),
            Scope::Transaction { depth },
            query,
            QueryOpt,
            params,
        )
        .await
    }

    /// Runs statements separated by `;` inside this savepoint.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn batch_execute(&mut self, query: &str) -> Result<()> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::batch_execute(inner, self.core(), Scope::Transaction { depth }, query).await
    }

    /// Runs statements separated by `;` inside this savepoint and returns
    /// their rows, as text, and command tags.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::simple_query(inner, self.core(), Scope::Transaction { depth }, query).await
    }

    /// Runs a query inside this savepoint with the parameter types given, and
    /// returns its rows: one round trip, nothing prepared under a name
    /// (as the `postgres` crate's `query_typed`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn query_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::typed(
            inner,
            core,
            Scope::Transaction { depth },
            query,
            Query,
            params,
        )
        .await
    }

    /// Executes a statement inside this savepoint with the parameter types given
    /// (as [`query_typed`](Self::query_typed)), and returns the number of
    /// rows it affected.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn execute_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::typed(
            inner,
            core,
            Scope::Transaction { depth },
            query,
            Execute,
            params,
        )
        .await
    }

    /// Binds `query` with `params` to a new [`Portal`] inside this
    /// savepoint, whose rows [`query_portal`](Self::query_portal) fetches a
    /// batch at a time (a cursor: `DECLARE … NO SCROLL CURSOR FOR query`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn bind(&mut self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Portal> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::bind(inner, core, Scope::Transaction { depth }, query, params).await
    }

    /// The next `max_rows` rows of `portal` (all that are left when
    /// `max_rows` is 0 or less); an empty `Vec` once it has none left.
    ///
    /// # Errors
    ///
    /// [`Error::PortalClosed`](crate::Error::PortalClosed) if `portal`
    /// was bound in another transaction (nothing is sent); otherwise as
    /// [`execute`](Self::execute).
    pub async fn query_portal(&mut self, portal: &Portal, max_rows: i32) -> Result<Vec<Row>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::query_portal(inner, core, Scope::Transaction { depth }, portal, max_rows).await
    }

    /// Prepares a statement for repeated use on this connection.
    ///
    /// # Errors
    ///
    /// As [`Guard::prepare`](super::Guard::prepare) (the transaction is as
    /// it was when nothing was sent), and as [`execute`](Self::execute).
    pub async fn prepare(&mut self, query: &str) -> Result<Statement> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        held::prepare_statement(inner, self.core(), Scope::Transaction { depth }, query).await
    }

    /// Runs a query inside this savepoint and returns its rows as they
    /// arrive, with bounded memory however many there are: see
    /// [`RowStream`] (which borrows this savepoint until it is dropped).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), for the start of the query; each
    /// row's error comes from the stream.
    pub async fn query_raw<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<RowStream<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::query_raw(inner, core, Scope::Transaction { depth }, query, params).await?;
        Ok(RowStream::new(inner, core))
    }

    /// Starts a `COPY … FROM STDIN` inside this savepoint: write its data to
    /// the [`CopyInWriter`] and end it with
    /// [`finish`](CopyInWriter::finish).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): the server's error for a COPY it
    /// refuses (a table that does not exist); [`Error::NotACopy`](crate::Error::NotACopy)
    /// for SQL that is not a `COPY … FROM STDIN`; a failure aborts the transaction, as any failed statement does.
    pub async fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::copy(inner, core, Scope::Transaction { depth }, query, true).await?;
        Ok(CopyInWriter::new(inner, core))
    }

    /// Starts a `COPY … TO STDOUT` inside this savepoint: read its data from
    /// the [`CopyOutReader`].
    ///
    /// # Errors
    ///
    /// As [`copy_in`](Self::copy_in), for a `COPY … TO STDOUT`.
    pub async fn copy_out<T>(&mut self, query: &T) -> Result<CopyOutReader<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::copy(inner, core, Scope::Transaction { depth }, query, false).await?;
        Ok(CopyOutReader::new(inner, core))
    }

    /// Opens a savepoint inside this one.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) (`SAVEPOINT` is a statement).
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_, Open>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        open(inner, self.core(), depth).await
    }

    /// Keeps the savepoint's work as part of the transaction
    /// (`RELEASE SAVEPOINT`).
    ///
    /// # Errors
    ///
    /// [`Error::TransactionAborted`] if a statement inside had failed: the
    /// savepoint was rolled back instead, and the transaction goes on;
    /// otherwise as [`execute`](Self::execute).
    pub async fn release(mut self) -> Result<Savepoint<'t, Done>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::prepare(inner, core, Scope::Transaction { depth }, None).await?;
        let released = core.release_savepoint(&inner.shared, depth).await;
        let done = self.finish(());
        released.map(|()| done)
    }

    /// Undoes the savepoint's work (`ROLLBACK TO SAVEPOINT`); the
    /// transaction goes on, usable even if a statement inside had failed.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn rollback(mut self) -> Result<Savepoint<'t, Done>> {
        let (inner, depth) = (self.level.inner, self.level.depth);
        let core = self.core();
        held::prepare(inner, core, Scope::Transaction { depth }, None).await?;
        let rolled_back = core.rollback_to_savepoint(&inner.shared, depth).await;
        let done = self.finish(());
        rolled_back.map(|()| done)
    }
}

impl<'t, T> Savepoint<'t, Done<T>> {
    /// Attaches the value that [`savepoint_scope`](super::Tx::savepoint_scope)
    /// hands back.
    pub fn returning<U>(self, value: U) -> Savepoint<'t, Done<U>> {
        self.finish(value)
    }

    fn into_value(self) -> T {
        self.state.0
    }
}

impl Drop for Level<'_> {
    /// Dropped open: records a rollback to the savepoint (only its own
    /// work), carried out before the parent's next use.
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        let panicked = std::thread::panicking();
        let decided = verdict(
            HolderEnd::SavepointDropped { panicked },
            core.savepoint_is_open(self.depth),
        );
        if decided.roll_back {
            let report = if self.scoped && !panicked {
                None
            } else {
                decided.report
            };
            core.record_fallback(RollBackTarget::Savepoint(self.depth), report);
        }
    }
}

impl<S: State> fmt::Debug for Savepoint<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::Savepoint")
            .field("depth", &self.level.depth)
            .finish_non_exhaustive()
    }
}

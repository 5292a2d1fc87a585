//! [`Tx`]: an async transaction whose state is part of its type.

use std::fmt;
use std::marker::PhantomData;

use postgres::types::{ToSql, Type};

use crate::aio::copy::{CopyInWriter, CopyOutReader};
use crate::aio::held::{self, Parts, Scope};
use crate::aio::lease::Lease;
use crate::aio::rows::RowStream;
use crate::aio::savepoint::{self, Savepoint};
use crate::aio::scope_marks::ScopeMarks;
use crate::aio::session::Holding;
use crate::conn::request::{Execute, Query, QueryOne, QueryOpt};
use crate::error::{Error, Result};
use crate::machine::transaction_status::TransactionStatus;
use crate::pipeline::{Pipeline, PipelineResults};
use crate::state::{Done, Open, State};
use crate::statements::ToStatement;
use crate::{Portal, Row, SimpleQueryMessage, Statement};

/// An async transaction on the shared connection; `S` is its state,
/// [`Open`] or [`Done`], as for the blocking [`crate::Tx`].
///
/// Statements exist only on `Tx<'_, Open>`; [`commit`](Tx::commit) and
/// [`rollback`](Tx::rollback) consume it and give back a `Tx<'_, Done>`.
/// It is `Send` (it may be held across `.await` on a multi-threaded
/// runtime), not `Clone`, and two pointers wide.
///
/// # Dropped at any `.await`
///
/// A future of a `Tx` method can be dropped at any `.await` (a timeout, a
/// `select!`, an aborted task), and the `Tx` itself can be dropped while
/// open; `Drop` cannot wait, so:
///
/// - a `Tx<Open>` dropped is rolled back at once on a task of the runtime
///   (or by the next use, outside one) and reported as an unfinished
///   transaction; no one else is handed the connection before that;
/// - a statement whose future was dropped is cancelled on the server (a
///   cancel request) and its answer drained before the connection is used
///   again; the transaction it was part of can then only roll back: its
///   `commit` returns [`Error::TransactionAborted`](crate::Error::TransactionAborted),
///   since whether the statement ran is unknown to its caller;
/// - a `commit` whose future was dropped after `COMMIT` was sent is logged
///   with what the server did (committed or not), and counted in
///   [`ManagedConnection::interrupted_commits`](super::ManagedConnection::interrupted_commits).
#[clippy::has_significant_drop]
pub struct Tx<'m, S: State = Open> {
    lease: Lease<'m>,
    state: S,
    /// Invariant in `'m`: the brand of a `transaction` closure's `Tx`.
    _brand: PhantomData<fn(&'m ()) -> &'m ()>,
}

static_assertions::assert_impl_all!(Tx<'static, Open>: Send);
static_assertions::assert_impl_all!(Tx<'static, Done>: Send);
static_assertions::assert_not_impl_any!(Tx<'static, Open>: Clone, Copy);
static_assertions::assert_eq_size!(Tx<'static, Open>, [usize; 2]);
static_assertions::assert_eq_size!(Tx<'static, Done>, [usize; 2]);

impl<S: State> Tx<'_, S> {
    /// The transaction status, as the server last reported it.
    pub fn status(&self) -> TransactionStatus {
        self.lease.inner().status()
    }
}

impl<'m> Tx<'m, Open> {
    /// Its session, with the scope its statements run in (for the
    /// generic handle traits).
    pub(crate) fn held_parts(&mut self) -> Parts<'_> {
        let (inner, core) = self.lease.parts();
        Parts::new(inner, core, Scope::Transaction { depth: 0 })
    }

    pub(crate) fn open(mut lease: Lease<'m>) -> Tx<'m, Open> {
        lease.set_holding(Holding::OpenTx);
        Tx {
            lease,
            state: Open(()),
            _brand: PhantomData,
        }
    }

    /// Its lease, for an owner that holds it on (a two-phase participant).
    pub(crate) fn into_lease(self) -> Lease<'m> {
        self.lease
    }

    /// Marks it as a `transaction` scope's, run `attempt` of its closure
    /// (see [`Lease::set_scoped`]).
    pub(crate) fn into_scoped(mut self, attempt: u32, marks: ScopeMarks) -> Self {
        self.lease.set_scoped(marks);
        self.lease.set_attempt(attempt);
        self
    }

    /// Executes a statement inside this transaction and returns the number
    /// of rows it affected.
    ///
    /// # Errors
    ///
    /// [`Error::Db`](crate::Error::Db) if the statement fails (the
    /// transaction is then aborted: `commit` says so);
    /// [`Error::TransactionControl`](crate::Error::TransactionControl) if
    /// the SQL would end or restart the transaction (nothing sent);
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
    /// connection broke.
    pub async fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease.parts();
        held::statement(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            Execute,
            params,
        )
        .await
    }

    /// Runs a query inside this transaction and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease.parts();
        held::statement(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            Query,
            params,
        )
        .await
    }

    /// Runs a query inside this transaction that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and an error if it returns no row or
    /// more than one.
    pub async fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease.parts();
        held::statement(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            QueryOne,
            params,
        )
        .await
    }

    /// Runs a query inside this transaction that returns at most one row.
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
        let (inner, core) = self.lease.parts();
        held::statement(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            QueryOpt,
            params,
        )
        .await
    }

    /// Runs statements separated by `;` (the simple query protocol) inside
    /// this transaction.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): if any statement of the text is
    /// transaction control, none of it is sent.
    pub async fn batch_execute(&mut self, query: &str) -> Result<()> {
        let (inner, core) = self.lease.parts();
        held::batch_execute(inner, core, Scope::Transaction { depth: 0 }, query).await
    }

    /// Runs statements separated by `;` inside this transaction and
    /// returns their rows, as text, and command tags.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        let (inner, core) = self.lease.parts();
        held::simple_query(inner, core, Scope::Transaction { depth: 0 }, query).await
    }

    /// Runs a query inside this transaction with the parameter types given, and
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
        let (inner, core) = self.lease.parts();
        held::typed(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            Query,
            params,
        )
        .await
    }

    /// Executes a statement inside this transaction with the parameter types given
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
        let (inner, core) = self.lease.parts();
        held::typed(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            query,
            Execute,
            params,
        )
        .await
    }

    /// Binds `query` with `params` to a new [`Portal`] inside this
    /// transaction, whose rows [`query_portal`](Self::query_portal) fetches a
    /// batch at a time (a cursor: `DECLARE … NO SCROLL CURSOR FOR query`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn bind(&mut self, query: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Portal> {
        let (inner, core) = self.lease.parts();
        held::bind(inner, core, Scope::Transaction { depth: 0 }, query, params).await
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
        let (inner, core) = self.lease.parts();
        held::query_portal(
            inner,
            core,
            Scope::Transaction { depth: 0 },
            portal,
            max_rows,
        )
        .await
    }

    /// Prepares a statement for repeated use on this connection.
    ///
    /// # Errors
    ///
    /// As [`Guard::prepare`](super::Guard::prepare) (the transaction is as
    /// it was when nothing was sent), and as [`execute`](Self::execute).
    pub async fn prepare(&mut self, query: &str) -> Result<Statement> {
        let (inner, core) = self.lease.parts();
        held::prepare_statement(inner, core, Scope::Transaction { depth: 0 }, query).await
    }

    /// Runs a query inside this transaction and returns its rows as they
    /// arrive, with bounded memory however many there are: see
    /// [`RowStream`] (which borrows this transaction until it is dropped).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), for the start of the query; each
    /// row's error comes from the stream; a failure aborts the
    /// transaction, as any failed statement does.
    pub async fn query_raw<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<RowStream<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease.parts();
        held::query_raw(inner, core, Scope::Transaction { depth: 0 }, query, params).await?;
        Ok(RowStream::new(inner, core))
    }

    /// Starts a `COPY … FROM STDIN` inside this transaction: write its data to
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
        let (inner, core) = self.lease.parts();
        held::copy(inner, core, Scope::Transaction { depth: 0 }, query, true).await?;
        Ok(CopyInWriter::new(inner, core))
    }

    /// Starts a `COPY … TO STDOUT` inside this transaction: read its data from
    /// the [`CopyOutReader`].
    ///
    /// # Errors
    ///
    /// As [`copy_in`](Self::copy_in), for a `COPY … TO STDOUT`.
    pub async fn copy_out<T>(&mut self, query: &T) -> Result<CopyOutReader<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease.parts();
        held::copy(inner, core, Scope::Transaction { depth: 0 }, query, false).await?;
        Ok(CopyOutReader::new(inner, core))
    }

    /// Opens a savepoint: a transaction nested in this one, which can be
    /// rolled back alone. It borrows this transaction until it is
    /// released or rolled back.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) (`SAVEPOINT` is a statement).
    pub async fn savepoint(&mut self) -> Result<Savepoint<'_, Open>> {
        let (inner, core) = self.lease.parts();
        savepoint::open(inner, core, 0).await
    }

    /// Runs `work` in a savepoint and returns what it hands back: the
    /// shape of [`transaction`](super::ManagedConnection::transaction), one
    /// level down (`work` must release or roll back the savepoint it gets).
    ///
    /// # Errors
    ///
    /// Any `Err` from `work`, unchanged, after rolling back to the
    /// savepoint (the transaction goes on); or, converted into `E`, the
    /// error of opening the savepoint.
    pub async fn savepoint_scope<T, E, F>(&mut self, work: F) -> Result<T, E>
    where
        F: for<'s> AsyncFnOnce(Savepoint<'s, Open>) -> Result<Savepoint<'s, Done<T>>, E>,
        E: From<Error>,
    {
        let (inner, core) = self.lease.parts();
        savepoint::scope(inner, core, 0, work).await
    }

    /// Which run of its closure this transaction is: 1, then 2 for the
    /// first retry of [`transaction_retrying`](super::ManagedConnection::transaction_retrying), …
    pub fn attempt(&self) -> u32 {
        self.lease.attempt()
    }

    /// Commits the transaction. Returns `Ok` only if the server committed.
    ///
    /// # Errors
    ///
    /// As the blocking [`crate::Tx::commit`]: the transaction is over
    /// whatever the error (rolled back on a task when `COMMIT` was not
    /// sent: [`Error::TransactionControl`](crate::Error::TransactionControl)
    /// for a two-phase participant's transaction taken out of its
    /// [`TxRef`](super::TxRef)) ([`Error::TransactionAborted`](crate::Error::TransactionAborted)
    /// after a failed or interrupted statement,
    /// [`Error::CommitOutcomeUnknown`](crate::Error::CommitOutcomeUnknown)
    /// if the connection broke while `COMMIT` was in flight, …).
    pub async fn commit(mut self) -> Result<Tx<'m, Done>> {
        refuse_lent(&self.lease)?;
        let (inner, core) = self.lease.parts();
        // Forgotten savepoints are rolled back (and reported) first.
        held::prepare(inner, core, Scope::Transaction { depth: 0 }, None).await?;
        // Dropped from here on, `self` is dropped open: its rollback is
        // recorded, and the interrupted COMMIT's outcome, learnt when the
        // connection is drained, decides whether there is anything left
        // to roll back.
        let committed = core.commit(&inner.shared).await;
        // Whatever the answer, the transaction is over.
        self.lease.set_holding(Holding::DoneTx);
        committed?;
        Ok(Tx {
            lease: self.lease,
            state: Done(()),
            _brand: PhantomData,
        })
    }

    /// Runs `pipeline` and commits, in one round trip: every statement and
    /// the `COMMIT` leave in one write (see [`Pipeline`](crate::Pipeline)).
    /// The transaction is over whatever the outcome, as after
    /// [`commit`](Self::commit); a future dropped once it was sent is an
    /// interrupted `COMMIT` (logged with what the server did, counted).
    ///
    /// # Errors
    ///
    /// As the blocking [`crate::Tx::commit_pipeline`]:
    /// [`Error::PipelineFailed`](crate::Error::PipelineFailed) when a
    /// statement failed (nothing committed, the connection idle), otherwise
    /// as [`commit`](Self::commit).
    pub async fn commit_pipeline(
        mut self,
        pipeline: &Pipeline<'_>,
    ) -> Result<(Tx<'m, Done>, PipelineResults)> {
        refuse_lent(&self.lease)?;
        let (inner, core) = self.lease.parts();
        let ran = held::pipeline(inner, core, pipeline, true).await;
        // Whatever the answer, the transaction is over.
        self.lease.set_holding(Holding::DoneTx);
        let answers = ran?;
        let done = Tx {
            lease: self.lease,
            state: Done(()),
            _brand: PhantomData,
        };
        Ok((done, pipeline.results(answers)))
    }

    /// Runs `pipeline` inside the transaction in one round trip; the
    /// transaction goes on. A future dropped on the way leaves the
    /// transaction able only to roll back, as after a dropped statement.
    ///
    /// # Errors
    ///
    /// As the blocking [`crate::Tx::run_pipeline`].
    pub async fn run_pipeline(&mut self, pipeline: &Pipeline<'_>) -> Result<PipelineResults> {
        let (inner, core) = self.lease.parts();
        let answers = held::pipeline(inner, core, pipeline, false).await?;
        Ok(pipeline.results(answers))
    }

    /// Commits, and attaches `value` for
    /// [`ManagedConnection::transaction`](super::ManagedConnection::transaction)
    /// to hand back.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit).
    pub async fn commit_returning<T>(self, value: T) -> Result<Tx<'m, Done<T>>> {
        Ok(self.commit().await?.returning(value))
    }

    /// Rolls the transaction back. If `ROLLBACK` cannot be sent, the
    /// connection is closed instead, which makes the server roll back.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if the
    /// connection was taken over as abandoned (see
    /// [`Builder::abandon_after`](super::Builder::abandon_after)): the
    /// transaction was rolled back then, and nothing is sent.
    pub async fn rollback(mut self) -> Result<Tx<'m, Done>> {
        let (inner, core) = self.lease.parts();
        match held::prepare(inner, core, Scope::Transaction { depth: 0 }, None).await {
            Err(Error::LeaseRevoked) => return Err(Error::LeaseRevoked),
            Err(e) => log::debug!("pgtx: before ROLLBACK: {e}"),
            Ok(()) => {}
        }
        core.rollback(&inner.shared).await;
        self.lease.set_holding(Holding::DoneTx);
        Ok(Tx {
            lease: self.lease,
            state: Done(()),
            _brand: PhantomData,
        })
    }
}

impl<'m, T> Tx<'m, Done<T>> {
    /// Attaches the value that
    /// [`ManagedConnection::transaction`](super::ManagedConnection::transaction)
    /// hands back.
    pub fn returning<U>(self, value: U) -> Tx<'m, Done<U>> {
        Tx {
            lease: self.lease,
            state: Done(value),
            _brand: PhantomData,
        }
    }

    /// The value attached with [`returning`](Self::returning).
    pub fn value(&self) -> &T {
        &self.state.0
    }

    /// The value attached with [`returning`](Self::returning); releases
    /// the connection.
    pub fn into_value(self) -> T {
        self.state.0
    }
}

impl<S: State> fmt::Debug for Tx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::Tx")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Refuses to commit a two-phase participant's transaction swapped out of
/// its `TxRef` (`mem::swap`): committed alone it would break the protocol.
fn refuse_lent(lease: &Lease<'_>) -> Result<()> {
    if lease.is_lent() {
        return Err(Error::TransactionControl(
            "COMMIT of a two-phase participant's transaction (only its TwoPhase ends it)"
                .to_owned(),
        ));
    }
    Ok(())
}

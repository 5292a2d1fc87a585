//! [`Tx`]: a transaction whose state is part of its type.

use std::fmt;

use postgres::types::{ToSql, Type};

use crate::blocking::held::{Conn, Held, StatementScope};
use crate::blocking::shared::Shared;
use crate::error::Result;
use crate::machine::transaction_status::TransactionStatus;
use crate::pipeline::{Pipeline, PipelineResults};
use crate::savepoint::{self, Savepoint};
use crate::state::{Done, Open, State};
use crate::statements::ToStatement;
use crate::{CopyInWriter, CopyOutReader, Portal, Row, RowIter, SimpleQueryMessage, Statement};

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

    pub(crate) fn shared(&self) -> &'m Shared {
        self.held.shared()
    }

    pub(crate) fn conn(&self) -> Conn<'m> {
        self.held.conn(StatementScope::Transaction { depth: 0 })
    }

    /// Executes a statement inside this transaction and returns the number
    /// of rows it affected.
    ///
    /// `query` is SQL text or a [`Statement`] from [`prepare`](Self::prepare);
    /// parameters are `$1`, `$2`, …. Text is prepared once per connection
    /// and reused (see [`ToStatement`]). `SAVEPOINT`, `RELEASE` and
    /// `ROLLBACK TO` work as in PostgreSQL (after `ROLLBACK TO`, the
    /// transaction can commit again); [`savepoint`](Self::savepoint) does
    /// the same with types.
    ///
    /// # Errors
    ///
    /// - [`Error::Db`](crate::Error::Db) if the statement fails: the server
    ///   aborts the transaction, and [`commit`](Self::commit) will report
    ///   [`Error::TransactionAborted`](crate::Error::TransactionAborted);
    /// - [`Error::TransactionControl`](crate::Error::TransactionControl) if
    ///   the SQL would end or restart the transaction (`COMMIT`, `ROLLBACK`,
    ///   `BEGIN`, …): nothing was sent, and the transaction is as it was;
    /// - [`Error::TransactionAborted`](crate::Error::TransactionAborted) if
    ///   the server refused this transaction's `BEGIN` earlier: nothing was
    ///   sent, as it would run outside any transaction;
    /// - [`Error::CopyRefused`](crate::Error::CopyRefused) for a `COPY …
    ///   FROM STDIN` (nothing copied; the transaction is aborted, as by any
    ///   failed statement) or `COPY … TO STDOUT` (it ran, its output was
    ///   dropped; the transaction goes on);
    /// - [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
    ///   connection broke (the transaction is lost),
    ///   [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this
    ///   transaction lost the connection.
    pub fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().execute(query, params)
    }

    /// Runs a query inside this transaction and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query(query, params)
    }

    /// Runs a query inside this transaction that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and [`Error::Db`](crate::Error::Db)
    /// if the query returned no row or more than one (this does not abort
    /// the transaction: the server saw no error).
    pub fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query_one(query, params)
    }

    /// Runs a query inside this transaction that returns at most one row.
    ///
    /// # Errors
    ///
    /// As [`query_one`](Self::query_one), except that no row is `Ok(None)`.
    pub fn query_opt<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query_opt(query, params)
    }

    /// Runs a query inside this transaction with the parameter types
    /// given, and returns its rows: one round trip, on the unnamed
    /// statement, nothing prepared or cached (for a statement run once, a
    /// type the server would infer otherwise, or a transaction pooler).
    ///
    /// ```no_run
    /// # fn f(mut tx: pgtx::Tx<'_, pgtx::Open>) -> pgtx::Result<()> {
    /// use pgtx::types::Type;
    /// let rows = tx.query_typed("SELECT $1 + 1", &[(&41_i64, Type::INT8)])?;
    /// assert_eq!(rows[0].get::<_, i64>(0), 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); a value that does not encode as its
    /// type is [`Error::Db`](crate::Error::Db) before anything is sent.
    pub fn query_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>> {
        self.conn().query_typed(query, params)
    }

    /// Executes a statement inside this transaction with the parameter
    /// types given (as [`query_typed`](Self::query_typed)), and returns the
    /// number of rows it affected.
    ///
    /// # Errors
    ///
    /// As [`query_typed`](Self::query_typed).
    pub fn execute_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        self.conn().execute_typed(query, params)
    }

    /// Runs one or more statements separated by `;`, without parameters
    /// (the simple query protocol), inside this transaction, and returns
    /// what the server sent: each row with its columns as text, and each
    /// statement's command tag (`SimpleQueryMessage::CommandComplete`, the
    /// rows it touched).
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        self.conn().simple_query(query)
    }

    /// Runs one or more statements separated by `;`, without parameters
    /// (the simple query protocol), inside this transaction.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): if any statement of the text is
    /// transaction control, none of it is sent.
    pub fn batch_execute(&mut self, query: &str) -> Result<()> {
        self.conn().batch_execute(query)
    }

    /// Runs a query inside this transaction and returns its rows as they arrive, with
    /// bounded memory however many there are: see [`RowIter`] (which
    /// borrows this handle until it is dropped).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), for the start of the query; each
    /// row's error comes from the iterator; inside the transaction, a failure aborts it, as any failed statement does.
    pub fn query_raw<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<RowIter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        RowIter::start(self.conn(), query, params)
    }

    /// Starts a `COPY … FROM STDIN` inside this transaction: write its data to the
    /// [`CopyInWriter`] (or, for `FORMAT binary`, typed rows through a
    /// [`BinaryCopyInWriter`](crate::binary_copy::BinaryCopyInWriter)) and
    /// end it with `finish()`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): the server's error for a COPY it
    /// refuses (a table that does not exist, a `COPY … TO STDOUT`); inside the transaction, a failure aborts it, as any failed statement does.
    pub fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyInWriter::start(self.conn(), query)
    }

    /// Starts a `COPY … TO STDOUT` inside this transaction: read its data from the
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

    /// Binds `query` with `params` to a new [`Portal`] inside this transaction, whose
    /// rows [`query_portal`](Self::query_portal) fetches a batch at a
    /// time (a cursor: `DECLARE … NO SCROLL CURSOR FOR query`).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
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
    /// As [`Guard::prepare`](crate::Guard::prepare) (the transaction is as
    /// it was when nothing was sent), and as [`execute`](Self::execute).
    pub fn prepare(&mut self, query: &str) -> Result<Statement> {
        self.conn().prepare(query)
    }

    /// Opens a savepoint: a transaction nested in this one, which can be
    /// rolled back alone.
    ///
    /// The savepoint borrows this transaction, so the compiler refuses any
    /// use of the `Tx` until the savepoint is released, rolled back or
    /// dropped. See [`Savepoint`] for what happens when it is not finished,
    /// and [`savepoint_scope`](Self::savepoint_scope) for the closure form.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute) (`SAVEPOINT` is a statement); in an
    /// aborted transaction the server refuses it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// let mut tx = manager.lock()?.begin()?;
    /// tx.execute("INSERT INTO ledger VALUES (1)", &[])?;
    /// let mut sp = tx.savepoint()?;
    /// if sp.execute("INSERT INTO ledger VALUES ('not a number')", &[]).is_err() {
    ///     sp.rollback()?; // only the savepoint's work is undone
    /// } else {
    ///     sp.release()?;
    /// }
    /// tx.commit()?; // the first insert is saved
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn savepoint(&mut self) -> Result<Savepoint<'_, Open>> {
        Savepoint::open(self.conn())
    }

    /// Runs `work` in a savepoint and returns what it hands back: the
    /// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction)
    /// shape, one level down. `work` must finish the savepoint
    /// ([`Savepoint::release`] or [`Savepoint::rollback`]) to produce the
    /// `Savepoint<'_, Done<T>>` it returns.
    ///
    /// # Errors
    ///
    /// Any `Err` from `work`, unchanged, after rolling back to the
    /// savepoint (the transaction goes on); or, converted into `E`, the
    /// error of opening the savepoint (`work` has not run).
    ///
    /// # Panics
    ///
    /// If `work` panics, the savepoint is rolled back, the rollback
    /// reported as unfinished, and the panic continues (the transaction is
    /// then dropped by the unwinding too, and rolled back).
    pub fn savepoint_scope<T, E, F>(&mut self, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Savepoint<'s, Open>) -> Result<Savepoint<'s, Done<T>>, E>,
        E: From<crate::Error>,
    {
        savepoint::scope(self.savepoint()?, work)
    }

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
    /// - [`Error::TransactionControl`](crate::Error::TransactionControl): the
    ///   server left the transaction block under a statement pgtx did not
    ///   recognise as transaction control, and nothing was sent after it
    ///   (a safety net: pgtx refuses every such statement it knows before
    ///   sending it).
    ///
    /// A two-phase participant's transaction taken out of its
    /// [`TxRef`](crate::two_phase::TxRef) with `mem::swap` is refused
    /// ([`Error::TransactionControl`](crate::Error::TransactionControl);
    /// it stays its coordinator's).
    ///
    /// A savepoint that was forgotten (`mem::forget`) is rolled back, and
    /// reported, before `COMMIT`: its work is not committed.
    pub fn commit(self) -> Result<Tx<'m, Done>> {
        refuse_lent(&self.held)?;
        let Tx { mut held, .. } = self;
        let result = held
            .conn(StatementScope::Transaction { depth: 0 })
            .with_session(|s| s.commit());
        held.ticket = held.ticket.finished();
        result.map(|()| Tx {
            held,
            state: Done(()),
        })
    }

    /// Runs `pipeline` and commits, in one round trip: every statement and
    /// the `COMMIT` leave in one write (see [`Pipeline`] for when that
    /// helps, its error rule and what it cannot contain). The transaction
    /// is over whatever the outcome, as after [`commit`](Tx::commit).
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// let tx = manager.lock()?.begin()?;
    /// let mut pipeline = pgtx::Pipeline::new();
    /// let moved = pipeline.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]);
    /// pipeline.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]);
    /// let (_done, results) = tx.commit_pipeline(&pipeline)?;
    /// assert_eq!(results.get(moved), Some(&1));
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::PipelineFailed`](crate::Error::PipelineFailed): a
    ///   statement failed (or was refused before anything was sent);
    ///   nothing was committed, and the connection is idle.
    /// - Otherwise as [`commit`](Tx::commit): the `COMMIT` itself refused
    ///   (a deferred constraint), the connection lost before or during it
    ///   ([`Error::CommitOutcomeUnknown`](crate::Error::CommitOutcomeUnknown)
    ///   once it may have been sent).
    pub fn commit_pipeline(
        self,
        pipeline: &Pipeline<'_>,
    ) -> Result<(Tx<'m, Done>, PipelineResults)> {
        refuse_lent(&self.held)?;
        let Tx { mut held, .. } = self;
        let result = held
            .conn(StatementScope::Transaction { depth: 0 })
            .with_session(|s| s.pipeline(pipeline, true));
        held.ticket = held.ticket.finished();
        result.map(|answers| {
            let done = Tx {
                held,
                state: Done(()),
            };
            (done, pipeline.results(answers))
        })
    }

    /// Runs `pipeline` inside the transaction in one round trip (every
    /// statement in one write); the transaction goes on.
    ///
    /// # Errors
    ///
    /// [`Error::PipelineFailed`](crate::Error::PipelineFailed): a statement
    /// failed and the ones after it were skipped; the transaction is then
    /// aborted, as after any failed statement (`commit` rolls back and says
    /// so). A statement refused before anything was sent (transaction
    /// control, `VACUUM`, `COPY`, …) leaves the transaction as it was.
    pub fn run_pipeline(&mut self, pipeline: &Pipeline<'_>) -> Result<PipelineResults> {
        let answers = self.conn().with_session(|s| s.pipeline(pipeline, false))?;
        Ok(pipeline.results(answers))
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
        refuse_lent(&self.held)?;
        let Tx { mut held, .. } = self;
        let result = held
            .conn(StatementScope::Transaction { depth: 0 })
            .with_session(|s| {
                s.rollback();
                Ok(())
            });
        held.ticket = held.ticket.finished();
        result.map(|()| Tx {
            held,
            state: Done(()),
        })
    }

    /// Which run of its closure this transaction is: 1 for the first run,
    /// 2 for the first retry of [`transaction_retrying`](crate::ManagedConnection::transaction_retrying)
    /// after a serialization failure or deadlock, and so on; 1 for any
    /// transaction begun otherwise. To know after the call how many runs
    /// it took, hand it back from the closure (`tx.commit_returning(…)`).
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
    /// let runs = manager.transaction_retrying(&pgtx::RetryPolicy::default(), |mut tx| {
    ///     tx.execute("UPDATE counter SET n = n + 1", &[])?;
    ///     let runs = tx.attempt();
    ///     tx.commit_returning(runs)
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn attempt(&self) -> u32 {
        self.held.shared().attempt()
    }

    /// The transaction status, as the server last reported it:
    /// [`TransactionStatus::InTransaction`], or
    /// [`TransactionStatus::InError`] once a statement has failed (and
    /// `InTransaction` again after a `ROLLBACK TO SAVEPOINT`).
    pub fn status(&self) -> TransactionStatus {
        self.conn().status()
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
    /// dropped, or when the `transaction` closure returns it, so this gives
    /// the `Tx` back.
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// manager.transaction(|mut tx| {
    ///     tx.execute("ANALYZE", &[])?;
    ///     tx.commit()?.close()
    /// })?;
    /// assert!(manager.is_closed());
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this
    /// transaction had lost the connection: nothing was closed.
    pub fn close(self) -> Result<Self> {
        self.held
            .shared()
            .session(self.held.ticket.epoch())?
            .close();
        Ok(self)
    }
}

impl<S: State> fmt::Debug for Tx<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("state", &std::any::type_name::<S>())
            .field("status", &self.held.shared().status())
            .finish_non_exhaustive()
    }
}

/// Refuses to end a two-phase participant's transaction taken out of its
/// `TxRef` (`mem::swap` through `DerefMut`): only its coordinator ends it
/// (rolled back alone, it would vote as a participant that ran nothing,
/// and the others would commit). The transaction stays the
/// coordinator's, untouched.
fn refuse_lent(held: &Held<'_>) -> Result<()> {
    if held.ticket.is_lent() {
        return Err(crate::Error::TransactionControl(
            "COMMIT or ROLLBACK of a two-phase participant's transaction (only its TwoPhase \
             ends it)"
                .to_owned(),
        ));
    }
    Ok(())
}

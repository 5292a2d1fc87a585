//! [`Guard`]: the exclusive hold on the shared connection.

use std::fmt;
use std::panic::Location;

use postgres::types::{ToSql, Type};

use crate::blocking::held::{Conn, Held, StatementScope};
use crate::error::Result;
use crate::machine::fallback::Cause;
use crate::machine::options::TxOptions;
use crate::machine::transaction_status::TransactionStatus;
use crate::state::Open;
use crate::statements::ToStatement;
use crate::tx::Tx;
use crate::{CopyInWriter, CopyOutReader, Row, RowIter, SimpleQueryMessage, Statement};

/// Exclusive hold on a [`ManagedConnection`](crate::ManagedConnection)'s
/// connection, with no transaction open.
///
/// Statements run here are autocommit: each is its own transaction, as in
/// txpostgres' `runQuery` and `runOperation`. [`begin`](Self::begin) turns
/// the guard into a [`Tx<'_, Open>`](Tx), which only `commit` or `rollback`
/// can end.
///
/// Dropping the guard releases the connection. If SQL run here left a
/// transaction block open (a plain `BEGIN`), it is rolled back first and
/// reported as [`Error::UnfinishedTransaction`](crate::Error::UnfinishedTransaction)
/// (through `log` and
/// [`unfinished_transactions`](crate::ManagedConnection::unfinished_transactions)),
/// exactly as an unfinished `Tx` is: the next holder always starts idle.
///
/// It is not `Send`: the hold belongs to the thread that took it.
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

    pub(crate) fn conn(&self) -> Conn<'m> {
        self.held.conn(StatementScope::Autocommit)
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
    /// If SQL run through this guard had left a transaction block open
    /// (a plain `BEGIN`), that block is rolled back and reported as an
    /// unfinished transaction first: the new transaction starts clean.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this guard lost
    /// the connection. The connection is released.
    ///
    /// # Where it was begun
    ///
    /// The caller's file, line and column are kept while the transaction is
    /// open: if it is left unfinished (dropped, unwound by a panic,
    /// forgotten), the fallback's log line says `begun at
    /// src/orders.rs:42:17`. Without a logger (see the `log` crate) only
    /// [`unfinished_transactions`](crate::ManagedConnection::unfinished_transactions)
    /// shows that it happened, and not where.
    #[must_use = "a transaction must end with `commit()` or `rollback()`; dropping it rolls back"]
    #[track_caller]
    pub fn begin(self) -> Result<Tx<'m, Open>> {
        self.begin_with(TxOptions::default())
    }

    /// Begins a transaction with an isolation level, read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`begin`](Self::begin), which also says what is kept of the
    /// caller's location.
    #[must_use = "a transaction must end with `commit()` or `rollback()`; dropping it rolls back"]
    #[track_caller]
    pub fn begin_with(self, options: TxOptions) -> Result<Tx<'m, Open>> {
        self.begin_at(options, Location::caller(), 1)
    }

    /// [`begin_with`](Self::begin_with), the transaction begun at `at` (for
    /// the report if it is left unfinished) as run `attempt` of its closure.
    pub(crate) fn begin_at(
        self,
        options: TxOptions,
        at: &'static Location<'static>,
        attempt: u32,
    ) -> Result<Tx<'m, Open>> {
        let Guard { held } = self;
        let shared = held.shared();
        let rolled_back =
            shared.with_session(held.ticket.epoch(), |s| Ok(s.begin(options.begin_sql())))?;
        if rolled_back {
            shared.report_unfinished(Cause::UserBlock);
        }
        shared.begun_at(at, attempt);
        Ok(Tx::open(held))
    }

    /// Executes a statement on its own (autocommit) and returns the number
    /// of rows it affected.
    ///
    /// `query` is SQL text or a [`Statement`] from [`prepare`](Self::prepare);
    /// parameters are `$1`, `$2`, …. Text is prepared once per connection
    /// and reused (see [`ToStatement`]).
    ///
    /// # Errors
    ///
    /// [`Error::Db`](crate::Error::Db) if the statement fails,
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
    /// connection broke, [`Error::LeaseRevoked`](crate::Error::LeaseRevoked)
    /// if this guard lost the connection,
    /// [`Error::CopyRefused`](crate::Error::CopyRefused) for a `COPY … FROM
    /// STDIN` (nothing copied) or `COPY … TO STDOUT` (it ran, its output
    /// dropped). The guard still holds
    /// it, ready for the next statement.
    pub fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().execute(query, params)
    }

    /// Runs a query on its own (autocommit) and returns all its rows.
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

    /// Runs a query on its own (autocommit) that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and [`Error::Db`](crate::Error::Db)
    /// if the query returned no row or more than one.
    pub fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.conn().query_one(query, params)
    }

    /// Runs a query on its own (autocommit) that returns at most one row.
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

    /// Runs a query on its own (autocommit) with the parameter types
    /// given, and returns its rows: one round trip, on the unnamed
    /// statement, nothing prepared or cached (for a statement run once, a
    /// type the server would infer otherwise, or a transaction pooler).
    ///
    /// ```no_run
    /// # fn f(mut guard: pgtx::Guard<'_>) -> pgtx::Result<()> {
    /// use pgtx::types::Type;
    /// let rows = guard.query_typed("SELECT $1 + 1", &[(&41_i64, Type::INT8)])?;
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

    /// Executes a statement on its own (autocommit) with the parameter
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
    /// (the simple query protocol), as one implicit transaction, and returns
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
    /// (the simple query protocol), as one implicit transaction.
    ///
    /// A `BEGIN` here opens a transaction block that this guard must end
    /// with `COMMIT` or `ROLLBACK` before it lets go; otherwise it is rolled
    /// back and reported (see [`Guard`]). [`begin`](Self::begin) is the
    /// safer way.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub fn batch_execute(&mut self, query: &str) -> Result<()> {
        self.conn().batch_execute(query)
    }

    /// Runs a query on its own (autocommit) and returns its rows as they arrive, with
    /// bounded memory however many there are: see [`RowIter`] (which
    /// borrows this handle until it is dropped).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), for the start of the query; each
    /// row's error comes from the iterator.
    pub fn query_raw<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<RowIter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        RowIter::start(self.conn(), query, params)
    }

    /// Starts a `COPY … FROM STDIN` on its own (autocommit): write its data to the
    /// [`CopyInWriter`] (or, for `FORMAT binary`, typed rows through a
    /// [`BinaryCopyInWriter`](crate::binary_copy::BinaryCopyInWriter)) and
    /// end it with `finish()`.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): the server's error for a COPY it
    /// refuses (a table that does not exist, a `COPY … TO STDOUT`).
    pub fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyInWriter::start(self.conn(), query)
    }

    /// Starts a `COPY … TO STDOUT` on its own (autocommit): read its data from the
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

    /// Prepares a statement for repeated use on this connection.
    ///
    /// A prepared statement belongs to the connection it was prepared on;
    /// after a reconnect, using it fails with a server error, so prepare
    /// again in each new holder.
    ///
    /// # Errors
    ///
    /// [`Error::TransactionControl`](crate::Error::TransactionControl) if
    /// `query` is `BEGIN`, `COMMIT` or the like (a prepared statement could
    /// later run inside a transaction, where it would end it);
    /// [`Error::PreparedStatementsOff`](crate::Error::PreparedStatementsOff)
    /// on a manager built with
    /// [`statement_cache(false)`](crate::Builder::statement_cache);
    /// [`Error::ShapeDecidedAtRunTime`](crate::Error::ShapeDecidedAtRunTime)
    /// for `FETCH`, `EXECUTE` and `CALL`, whose rows a prepared description
    /// could decode wrongly (pass their text to the statement methods, which
    /// describe it each time);
    /// [`Error::CopyNotPreparable`](crate::Error::CopyNotPreparable) for
    /// `COPY` from or to the client: all before anything is sent;
    /// otherwise as [`execute`](Self::execute).
    pub fn prepare(&mut self, query: &str) -> Result<Statement> {
        self.conn().prepare(query)
    }

    /// The transaction status, as the server last reported it:
    /// [`TransactionStatus::Idle`] on a healthy guard, or
    /// [`TransactionStatus::InTransaction`] after a plain `BEGIN`.
    pub fn status(&self) -> TransactionStatus {
        self.conn().status()
    }

    /// Releases the connection, as dropping the guard does, and says
    /// whether it was left clean: the explicit form of the seed's context
    /// exit, which raises "Did not commit or rollback open transaction
    /// before releasing connection." when a transaction is still open.
    ///
    /// # Errors
    ///
    /// - [`Error::UnfinishedTransaction`](crate::Error::UnfinishedTransaction)
    ///   if SQL run through this guard opened a transaction block (a plain
    ///   `BEGIN`) and left it open: it has been rolled back (and, like
    ///   every fallback rollback, logged and counted in
    ///   [`unfinished_transactions`](crate::ManagedConnection::unfinished_transactions)),
    ///   and the connection released idle.
    /// - [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this guard
    ///   had lost the connection: its new holder has it, untouched.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let manager = pgtx::ManagedConnection::new("host=localhost")?;
    /// let mut guard = manager.lock()?;
    /// guard.batch_execute("BEGIN; INSERT INTO log VALUES ('never committed')")?;
    /// assert!(matches!(guard.release(), Err(pgtx::Error::UnfinishedTransaction)));
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn release(self) -> Result<()> {
        self.held.release_reporting()
    }

    /// Closes the connection and releases it; the next holder reconnects
    /// (the seed's `close=True`). A transaction block that SQL here left
    /// open ends with the session: the server rolls it back.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if this guard
    /// had lost the connection: nothing was closed.
    pub fn close(self) -> Result<()> {
        let epoch = self.held.ticket.epoch();
        self.held.shared().session(epoch)?.close();
        Ok(())
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

//! [`Guard`]: the async connection, held.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use postgres::types::{ToSql, Type};

use crate::aio::copy::{CopyInWriter, CopyOutReader};
use crate::aio::held::{self, Parts, Scope};
use crate::aio::lease::Lease;
use crate::aio::rows::RowStream;
use crate::aio::session::Inner;
use crate::aio::tx::Tx;
use crate::conn::request::{Execute, Query, QueryOne, QueryOpt};
use crate::error::Result;
use crate::machine::fallback::Cause;
use crate::machine::options::TxOptions;
use crate::machine::transaction_status::TransactionStatus;
use crate::state::Open;
use crate::statements::ToStatement;
use crate::{Row, SimpleQueryMessage, Statement};

/// The connection, held: from [`ManagedConnection::lock`](super::ManagedConnection::lock).
///
/// Statements on a guard commit on their own (autocommit);
/// [`begin`](Self::begin) turns it into a [`Tx`]. Holding it holds the
/// connection; it is `Send`, so it may be held across `.await` on a
/// multi-threaded runtime.
///
/// Dropped with a transaction block open that its SQL began (a plain
/// `BEGIN`), the block is rolled back (at once, on a task of the runtime)
/// and reported as an unfinished transaction: the next holder always
/// starts idle.
#[clippy::has_significant_drop]
#[must_use = "dropping the guard releases the connection"]
pub struct Guard<'m> {
    lease: Lease<'m>,
    /// Invariant in `'m`, as [`Tx`]'s brand is.
    _brand: PhantomData<fn(&'m ()) -> &'m ()>,
}

static_assertions::assert_impl_all!(Guard<'static>: Send);
static_assertions::assert_eq_size!(Guard<'static>, [usize; 2]);

impl<'m> Guard<'m> {
    pub(crate) fn new(lease: Lease<'m>) -> Guard<'m> {
        Guard {
            lease,
            _brand: PhantomData,
        }
    }

    /// The manager the guard's connection belongs to.
    pub(crate) fn inner(&self) -> &'m Arc<Inner> {
        self.lease.inner()
    }

    fn lease(&mut self) -> &mut Lease<'m> {
        &mut self.lease
    }

    /// Its session, with the scope its statements run in (for the
    /// generic handle traits).
    pub(crate) fn held_parts(&mut self) -> Parts<'_> {
        let (inner, core) = self.lease().parts();
        Parts::new(inner, core, Scope::Autocommit)
    }

    /// Begins a transaction with PostgreSQL's default options. Nothing is
    /// sent yet: `BEGIN` goes out with the transaction's first statement,
    /// in the same write and Sync group (two round trips for a
    /// one-statement transaction).
    ///
    /// # Errors
    ///
    /// As [`begin_with`](Self::begin_with).
    pub async fn begin(self) -> Result<Tx<'m, Open>> {
        self.begin_with(TxOptions::default()).await
    }

    /// Begins a transaction with an isolation level, read-only or
    /// deferrable mode.
    ///
    /// If SQL run through this guard had left a transaction block open (a
    /// plain `BEGIN`), that block is rolled back and reported as an
    /// unfinished transaction first.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`](crate::Error::LeaseRevoked) if the
    /// connection was taken over as abandoned (see
    /// [`Builder::abandon_after`](super::Builder::abandon_after)).
    pub async fn begin_with(mut self, options: TxOptions) -> Result<Tx<'m, Open>> {
        let lease = self.lease();
        let (inner, core) = lease.parts();
        inner.check_current(core)?;
        inner.tidy(core).await;
        if core.begin(&inner.shared, options.begin_sql()).await {
            inner.report_unfinished(Cause::UserBlock);
        }
        Ok(Tx::open(self.lease))
    }

    /// Executes a statement on its own and returns the number of rows it
    /// affected. `query` is SQL text or a prepared statement; text is
    /// prepared once per connection and reused.
    ///
    /// # Errors
    ///
    /// [`Error::Db`](crate::Error::Db) if the statement fails;
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
    /// connection broke.
    pub async fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease().parts();
        held::statement(inner, core, Scope::Autocommit, query, Execute, params).await
    }

    /// Runs a query on its own and returns all its rows.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease().parts();
        held::statement(inner, core, Scope::Autocommit, query, Query, params).await
    }

    /// Runs a query that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute), and an error if it returns no row or
    /// more than one.
    pub async fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease().parts();
        held::statement(inner, core, Scope::Autocommit, query, QueryOne, params).await
    }

    /// Runs a query that returns at most one row.
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
        let (inner, core) = self.lease().parts();
        held::statement(inner, core, Scope::Autocommit, query, QueryOpt, params).await
    }

    /// Runs statements separated by `;` (the simple query protocol), as one
    /// implicit transaction.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn batch_execute(&mut self, query: &str) -> Result<()> {
        let (inner, core) = self.lease().parts();
        held::batch_execute(inner, core, Scope::Autocommit, query).await
    }

    /// Runs statements separated by `;` and returns their rows, as text,
    /// and command tags.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute).
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        let (inner, core) = self.lease().parts();
        held::simple_query(inner, core, Scope::Autocommit, query).await
    }

    /// Runs a query on its own with the parameter types given, and
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
        let (inner, core) = self.lease().parts();
        held::typed(inner, core, Scope::Autocommit, query, Query, params).await
    }

    /// Executes a statement on its own with the parameter types given
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
        let (inner, core) = self.lease().parts();
        held::typed(inner, core, Scope::Autocommit, query, Execute, params).await
    }

    /// Prepares a statement for repeated use on this connection: pass the
    /// [`Statement`] to the statement methods instead of the SQL text.
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
    /// [`statement_cache(false)`](super::Builder::statement_cache);
    /// [`Error::ShapeDecidedAtRunTime`](crate::Error::ShapeDecidedAtRunTime)
    /// for `FETCH`, `EXECUTE` and `CALL`, whose rows a prepared description
    /// could decode wrongly (pass their text to the statement methods, which
    /// describe it each time);
    /// [`Error::CopyNotPreparable`](crate::Error::CopyNotPreparable) for
    /// `COPY` from or to the client: all before anything is sent; otherwise as
    /// [`execute`](Self::execute).
    pub async fn prepare(&mut self, query: &str) -> Result<Statement> {
        let (inner, core) = self.lease().parts();
        held::prepare_statement(inner, core, Scope::Autocommit, query).await
    }

    /// Runs a query on its own and returns its rows as they arrive, with
    /// bounded memory however many there are: see [`RowStream`] (which
    /// borrows this guard until it is dropped).
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
        let (inner, core) = self.lease().parts();
        held::query_raw(inner, core, Scope::Autocommit, query, params).await?;
        Ok(RowStream::new(inner, core))
    }

    /// Starts a `COPY … FROM STDIN` on its own (autocommit): write its data to
    /// the [`CopyInWriter`] and end it with
    /// [`finish`](CopyInWriter::finish).
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute): the server's error for a COPY it
    /// refuses (a table that does not exist); [`Error::NotACopy`](crate::Error::NotACopy)
    /// for SQL that is not a `COPY … FROM STDIN`.
    pub async fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease().parts();
        held::copy(inner, core, Scope::Autocommit, query, true).await?;
        Ok(CopyInWriter::new(inner, core))
    }

    /// Starts a `COPY … TO STDOUT` on its own (autocommit): read its data from
    /// the [`CopyOutReader`].
    ///
    /// # Errors
    ///
    /// As [`copy_in`](Self::copy_in), for a `COPY … TO STDOUT`.
    pub async fn copy_out<T>(&mut self, query: &T) -> Result<CopyOutReader<'_>>
    where
        T: ?Sized + ToStatement,
    {
        let (inner, core) = self.lease().parts();
        held::copy(inner, core, Scope::Autocommit, query, false).await?;
        Ok(CopyOutReader::new(inner, core))
    }

    /// The transaction status, as the server last reported it.
    pub fn status(&self) -> TransactionStatus {
        self.lease.inner().status()
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::Guard")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

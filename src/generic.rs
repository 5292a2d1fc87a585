//! Code generic over the handles: [`GenericClient`] for whatever runs
//! statements (a [`Guard`], a [`Tx<Open>`](Tx), a
//! [`Savepoint<Open>`](Savepoint)), and [`ConnectionSource`] for whatever
//! hands out connections and runs transactions (a [`ManagedConnection`],
//! a [`Pool`]). A repository written against them works on any of them.
//!
//! [`GenericClient`]'s methods are provided once, here, for every handle:
//! each is the handle's own method of the same name.

use std::time::Duration;

use crate::blocking::held::Conn;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::machine::options::TxOptions;
use crate::machine::retry::RetryPolicy;
use crate::manager::ManagedConnection;
use crate::pool::Pool;
use crate::savepoint::Savepoint;
use crate::state::{Done, Open};
use crate::statements::ToStatement;
use crate::tx::Tx;
use crate::types::{ToSql, Type};
use crate::{CopyInWriter, CopyOutReader, Row, RowIter, SimpleQueryMessage, Statement};

/// Runs statements: implemented by [`Guard`] (each statement on its own),
/// [`Tx<Open>`](Tx) and [`Savepoint<Open>`](Savepoint) (inside the
/// transaction), so that code can take any of them, as
/// `postgres::GenericClient` lets code take a client or a transaction.
///
/// Each method is the handle's own method of the same name, with its
/// behaviour and errors (transaction control refused inside a
/// transaction, and so on).
///
/// This trait is sealed: only the handles above implement it.
///
/// # Examples
///
/// ```no_run
/// use pgtx::GenericClient;
///
/// fn add_item(db: &mut impl GenericClient, id: i32, note: &str) -> pgtx::Result<u64> {
///     db.execute("INSERT INTO items VALUES ($1, $2)", &[&id, &note])
/// }
///
/// let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
/// let mut guard = manager.lock()?;
/// add_item(&mut guard, 1, "on its own")?;
/// let mut tx = guard.begin()?;
/// add_item(&mut tx, 2, "in a transaction")?;
/// tx.commit()?;
/// # Ok::<(), pgtx::Error>(())
/// ```
pub trait GenericClient: sealed::Sealed {
    /// See [`Tx::execute`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        T: ?Sized + ToStatement,
    {
        self.statements().0.execute(query, params)
    }

    /// See [`Tx::query`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.statements().0.query(query, params)
    }

    /// See [`Tx::query_one`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        T: ?Sized + ToStatement,
    {
        self.statements().0.query_one(query, params)
    }

    /// See [`Tx::query_opt`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_opt<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>>
    where
        T: ?Sized + ToStatement,
    {
        self.statements().0.query_opt(query, params)
    }

    /// See [`Tx::query_typed`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>> {
        self.statements().0.query_typed(query, params)
    }

    /// See [`Tx::execute_typed`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn execute_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        self.statements().0.execute_typed(query, params)
    }

    /// See [`Tx::batch_execute`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn batch_execute(&mut self, query: &str) -> Result<()> {
        self.statements().0.batch_execute(query)
    }

    /// See [`Tx::simple_query`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn simple_query(&mut self, query: &str) -> Result<Vec<SimpleQueryMessage>> {
        self.statements().0.simple_query(query)
    }

    /// See [`Tx::prepare`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn prepare(&mut self, query: &str) -> Result<Statement> {
        self.statements().0.prepare(query)
    }

    /// See [`Tx::query_raw`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_raw<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<RowIter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        RowIter::start(self.statements().0, query, params)
    }

    /// See [`Tx::copy_in`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn copy_in<T>(&mut self, query: &T) -> Result<CopyInWriter<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyInWriter::start(self.statements().0, query)
    }

    /// See [`Tx::copy_out`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn copy_out<T>(&mut self, query: &T) -> Result<CopyOutReader<'_>>
    where
        T: ?Sized + ToStatement,
    {
        CopyOutReader::start(self.statements().0, query)
    }
}

impl GenericClient for Guard<'_> {}
impl GenericClient for Tx<'_, Open> {}
impl GenericClient for Savepoint<'_, Open> {}

/// Hands out the connection and runs transactions on it: implemented by
/// [`ManagedConnection`] and [`Pool`], so that code can take either.
/// Each method is the type's own method of the same name.
///
/// This trait is sealed: only the types above implement it.
///
/// # Examples
///
/// ```no_run
/// use pgtx::ConnectionSource;
///
/// fn count_items(db: &impl ConnectionSource) -> pgtx::Result<i64> {
///     db.transaction(|mut tx| {
///         let n: i64 = tx.query_one("SELECT count(*) FROM items", &[])?.get(0);
///         tx.commit_returning(n)
///     })
/// }
///
/// let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
/// let pool = pgtx::Pool::new("host=localhost user=postgres", 4)?;
/// assert_eq!(count_items(&manager)?, count_items(&pool)?);
/// # Ok::<(), pgtx::Error>(())
/// ```
pub trait ConnectionSource: sealed::Source {
    /// See [`ManagedConnection::lock`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn lock(&self) -> Result<Guard<'_>>;

    /// See [`ManagedConnection::try_lock`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn try_lock(&self) -> Result<Guard<'_>>;

    /// See [`ManagedConnection::lock_timeout`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>>;

    /// See [`ManagedConnection::transaction_with`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    ///
    /// # Panics
    ///
    /// As the type's own method.
    #[track_caller]
    fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>;

    /// See [`ManagedConnection::transaction`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    ///
    /// # Panics
    ///
    /// As the type's own method.
    #[track_caller]
    fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_with(TxOptions::default(), work)
    }

    /// See [`ManagedConnection::transaction_retrying_with`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    ///
    /// # Panics
    ///
    /// As the type's own method.
    #[track_caller]
    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>;

    /// See [`ManagedConnection::transaction_retrying`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    ///
    /// # Panics
    ///
    /// As the type's own method.
    #[track_caller]
    fn transaction_retrying<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_retrying_with(TxOptions::default(), policy, work)
    }
}

impl ConnectionSource for ManagedConnection {
    fn lock(&self) -> Result<Guard<'_>> {
        ManagedConnection::lock(self)
    }

    fn try_lock(&self) -> Result<Guard<'_>> {
        ManagedConnection::try_lock(self)
    }

    fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        ManagedConnection::lock_timeout(self, timeout)
    }

    #[track_caller]
    fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        ManagedConnection::transaction_with(self, options, work)
    }

    #[track_caller]
    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        ManagedConnection::transaction_retrying_with(self, options, policy, work)
    }
}

impl ConnectionSource for Pool {
    fn lock(&self) -> Result<Guard<'_>> {
        Pool::lock(self)
    }

    fn try_lock(&self) -> Result<Guard<'_>> {
        Pool::try_lock(self)
    }

    fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        Pool::lock_timeout(self, timeout)
    }

    #[track_caller]
    fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        Pool::transaction_with(self, options, work)
    }

    #[track_caller]
    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        Pool::transaction_retrying_with(self, options, policy, work)
    }
}

pub(crate) mod sealed {
    use super::{Conn, Guard, ManagedConnection, Open, Pool, Savepoint, Tx};

    /// The statements of a handle, for [`GenericClient`](super::GenericClient)'s
    /// provided methods.
    #[doc(hidden)]
    pub struct Statements<'a>(pub(super) Conn<'a>);

    /// Keeps [`GenericClient`](super::GenericClient) implemented by this crate only.
    pub trait Sealed {
        #[doc(hidden)]
        fn statements(&self) -> Statements<'_>;
    }

    impl Sealed for Guard<'_> {
        fn statements(&self) -> Statements<'_> {
            Statements(self.conn())
        }
    }

    impl Sealed for Tx<'_, Open> {
        fn statements(&self) -> Statements<'_> {
            Statements(self.conn())
        }
    }

    impl Sealed for Savepoint<'_, Open> {
        fn statements(&self) -> Statements<'_> {
            Statements(self.conn())
        }
    }

    /// Keeps [`ConnectionSource`](super::ConnectionSource) implemented by this crate only.
    pub trait Source {}

    impl Source for ManagedConnection {}
    impl Source for Pool {}
}

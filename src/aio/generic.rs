//! Async code generic over the handles, as [`crate::GenericClient`] and
//! [`crate::ConnectionSource`] are for the blocking ones:
//! [`GenericClient`] for whatever runs statements (a [`Guard`], a
//! [`Tx<Open>`](Tx), a [`Savepoint<Open>`](Savepoint)), and
//! [`ConnectionSource`] for whatever hands out connections and runs
//! transactions (a [`ManagedConnection`], a [`Pool`]).
//!
//! [`GenericClient`]'s methods are written once, here, for every handle:
//! each runs what the handle's own method of the same name runs, in the
//! handle's scope (on its own for a guard, inside the transaction or the
//! savepoint otherwise).

use std::future::Future;
use std::time::Duration;

use postgres::types::{ToSql, Type};

use super::copy::{CopyInWriter, CopyOutReader};
use super::guard::Guard;
use super::held::{self, Parts};
use super::manager::ManagedConnection;
use super::pool::Pool;
use super::rows::RowStream;
use super::savepoint::Savepoint;
use super::tx::Tx;
use crate::conn::request::{Execute, Query, QueryOne, QueryOpt};
use crate::error::{Error, Result};
use crate::machine::options::TxOptions;
use crate::machine::retry::RetryPolicy;
use crate::state::{Done, Open};
use crate::statements::ToStatement;
use crate::{Row, SimpleQueryMessage, Statement};

/// Runs statements: implemented by [`Guard`] (each statement on its own),
/// [`Tx<Open>`](Tx) and [`Savepoint<Open>`](Savepoint) (inside the
/// transaction), so that async code can take any of them, as
/// `tokio_postgres::GenericClient` lets code take a client or a
/// transaction.
///
/// Each method is the handle's own method of the same name, with its
/// behaviour, its errors (transaction control refused inside a
/// transaction, and so on) and its cancel safety; every future it returns
/// is `Send`, in generic code too, so a repository function can run in
/// `tokio::spawn` or an axum handler.
///
/// This trait is sealed: only the handles above implement it.
///
/// # Examples
///
/// ```no_run
/// use pgtx::aio::GenericClient;
///
/// async fn add_item(db: &mut impl GenericClient, id: i32, note: &str) -> pgtx::Result<u64> {
///     db.execute("INSERT INTO items VALUES ($1, $2)", &[&id, &note]).await
/// }
///
/// # async fn run() -> pgtx::Result<()> {
/// let manager = pgtx::aio::ManagedConnection::new("host=localhost user=postgres")?;
/// let mut guard = manager.lock().await?;
/// add_item(&mut guard, 1, "on its own").await?;
/// let mut tx = guard.begin().await?;
/// add_item(&mut tx, 2, "in a transaction").await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub trait GenericClient: Send + sealed::Sealed {
    /// See [`Tx::execute`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn execute<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::statement(h.inner, h.core, h.scope, query, Execute, params).await
        }
    }

    /// See [`Tx::query`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::statement(h.inner, h.core, h.scope, query, Query, params).await
        }
    }

    /// See [`Tx::query_one`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_one<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::statement(h.inner, h.core, h.scope, query, QueryOne, params).await
        }
    }

    /// See [`Tx::query_opt`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_opt<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::statement(h.inner, h.core, h.scope, query, QueryOpt, params).await
        }
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
    ) -> impl Future<Output = Result<Vec<Row>>> + Send {
        async move {
            let h = self.held();
            held::typed(h.inner, h.core, h.scope, query, Query, params).await
        }
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
    ) -> impl Future<Output = Result<u64>> + Send {
        async move {
            let h = self.held();
            held::typed(h.inner, h.core, h.scope, query, Execute, params).await
        }
    }

    /// See [`Tx::batch_execute`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn batch_execute(&mut self, query: &str) -> impl Future<Output = Result<()>> + Send {
        async move {
            let h = self.held();
            held::batch_execute(h.inner, h.core, h.scope, query).await
        }
    }

    /// See [`Tx::simple_query`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn simple_query(
        &mut self,
        query: &str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>>> + Send {
        async move {
            let h = self.held();
            held::simple_query(h.inner, h.core, h.scope, query).await
        }
    }

    /// See [`Tx::prepare`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn prepare(&mut self, query: &str) -> impl Future<Output = Result<Statement>> + Send {
        async move {
            let h = self.held();
            held::prepare_statement(h.inner, h.core, h.scope, query).await
        }
    }

    /// See [`Tx::query_raw`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn query_raw<T>(
        &mut self,
        query: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<RowStream<'_>>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::query_raw(h.inner, h.core, h.scope, query, params).await?;
            Ok(RowStream::new(h.inner, h.core))
        }
    }

    /// See [`Tx::copy_in`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn copy_in<T>(&mut self, query: &T) -> impl Future<Output = Result<CopyInWriter<'_>>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::copy(h.inner, h.core, h.scope, query, true).await?;
            Ok(CopyInWriter::new(h.inner, h.core))
        }
    }

    /// See [`Tx::copy_out`].
    ///
    /// # Errors
    ///
    /// As the handle's own method.
    fn copy_out<T>(&mut self, query: &T) -> impl Future<Output = Result<CopyOutReader<'_>>> + Send
    where
        T: ?Sized + ToStatement + Sync,
    {
        async move {
            let h = self.held();
            held::copy(h.inner, h.core, h.scope, query, false).await?;
            Ok(CopyOutReader::new(h.inner, h.core))
        }
    }
}

impl GenericClient for Guard<'_> {}
impl GenericClient for Tx<'_, Open> {}
impl GenericClient for Savepoint<'_, Open> {}

/// Hands out connections and runs transactions on them: implemented by
/// [`ManagedConnection`] and [`Pool`], so that async code can take either.
/// Each method is the type's own method of the same name.
///
/// The futures of [`lock`](Self::lock), [`try_lock`](Self::try_lock) and
/// [`lock_timeout`](Self::lock_timeout) are `Send` in generic code. Those
/// of the `transaction` methods are `Send` when the closure's are, but in
/// code generic over the source the compiler cannot see it (stable Rust
/// cannot yet name the future of an async closure): where such code must
/// be `Send` (`tokio::spawn`, an axum handler), open the transaction with
/// `lock().await?.begin().await?`, or call the method on the concrete
/// type.
///
/// This trait is sealed: only the types above implement it.
///
/// # Examples
///
/// ```no_run
/// use pgtx::aio::ConnectionSource;
///
/// async fn count_items(db: &impl ConnectionSource) -> pgtx::Result<i64> {
///     db.transaction(async |mut tx| {
///         let n: i64 = tx.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
///         tx.commit_returning(n).await
///     })
///     .await
/// }
///
/// # async fn run() -> pgtx::Result<()> {
/// let manager = pgtx::aio::ManagedConnection::new("host=localhost user=postgres")?;
/// let pool = pgtx::aio::Pool::new("host=localhost user=postgres", 4)?;
/// assert_eq!(count_items(&manager).await?, count_items(&pool).await?);
/// # Ok(())
/// # }
/// ```
pub trait ConnectionSource: Sync + sealed::Source {
    /// See [`ManagedConnection::lock`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send;

    /// See [`ManagedConnection::try_lock`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn try_lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send;

    /// See [`ManagedConnection::lock_timeout`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn lock_timeout(&self, timeout: Duration) -> impl Future<Output = Result<Guard<'_>>> + Send;

    /// See [`ManagedConnection::transaction_with`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn transaction_with<T, E, F>(
        &self,
        options: TxOptions,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>;

    /// See [`ManagedConnection::transaction`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn transaction<T, E, F>(&self, work: F) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_with(TxOptions::default(), work)
    }

    /// See [`ManagedConnection::transaction_retrying_with`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>;

    /// See [`ManagedConnection::transaction_retrying`].
    ///
    /// # Errors
    ///
    /// As the type's own method.
    fn transaction_retrying<T, E, F>(
        &self,
        policy: &RetryPolicy,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_retrying_with(TxOptions::default(), policy, work)
    }
}

impl ConnectionSource for ManagedConnection {
    fn lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        ManagedConnection::lock(self)
    }

    fn try_lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        ManagedConnection::try_lock(self)
    }

    fn lock_timeout(&self, timeout: Duration) -> impl Future<Output = Result<Guard<'_>>> + Send {
        ManagedConnection::lock_timeout(self, timeout)
    }

    fn transaction_with<T, E, F>(
        &self,
        options: TxOptions,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        ManagedConnection::transaction_with(self, options, work)
    }

    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        ManagedConnection::transaction_retrying_with(self, options, policy, work)
    }
}

impl ConnectionSource for Pool {
    fn lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        Pool::lock(self)
    }

    fn try_lock(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        Pool::try_lock(self)
    }

    fn lock_timeout(&self, timeout: Duration) -> impl Future<Output = Result<Guard<'_>>> + Send {
        Pool::lock_timeout(self, timeout)
    }

    fn transaction_with<T, E, F>(
        &self,
        options: TxOptions,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        Pool::transaction_with(self, options, work)
    }

    fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        Pool::transaction_retrying_with(self, options, policy, work)
    }
}

pub(crate) mod sealed {
    use super::{Guard, ManagedConnection, Open, Parts, Pool, Savepoint, Tx};

    /// Keeps [`GenericClient`](super::GenericClient) implemented by this
    /// crate only, and gives its provided methods the handle's session.
    pub trait Sealed {
        #[doc(hidden)]
        fn held(&mut self) -> Parts<'_>;
    }

    impl Sealed for Guard<'_> {
        fn held(&mut self) -> Parts<'_> {
            self.held_parts()
        }
    }

    impl Sealed for Tx<'_, Open> {
        fn held(&mut self) -> Parts<'_> {
            self.held_parts()
        }
    }

    impl Sealed for Savepoint<'_, Open> {
        fn held(&mut self) -> Parts<'_> {
            self.held_parts()
        }
    }

    /// Keeps [`ConnectionSource`](super::ConnectionSource) implemented by
    /// this crate only.
    pub trait Source {}

    impl Source for ManagedConnection {}
    impl Source for Pool {}
}

//! The statement methods that [`Guard`](crate::Guard) (autocommit) and
//! `Tx<'_, Open>` share, written once, and what they accept as a statement.

use crate::Statement;

/// SQL text (`str`, `String`) or a [`Statement`] from `prepare`: what the
/// statement methods accept.
///
/// SQL text is prepared once per connection and the prepared statement is
/// reused whenever the same text runs again, so passing text costs one round
/// trip, as a prepared [`Statement`] does. The cache belongs to the
/// connection and is emptied when it is replaced.
///
/// This trait is sealed: only the types above implement it.
pub trait ToStatement: sealed::Sealed {}

impl ToStatement for str {}
impl ToStatement for String {}
impl ToStatement for Statement {}

pub(crate) use sealed::Sql;

pub(crate) mod sealed {
    /// What the statement methods were given.
    #[doc(hidden)]
    pub enum Sql<'a> {
        Text(&'a str),
        Prepared(&'a crate::Statement),
    }

    /// Keeps [`ToStatement`](super::ToStatement) implemented by this crate only.
    pub trait Sealed {
        #[doc(hidden)]
        fn sql(&self) -> super::Sql<'_>;
    }

    impl Sealed for str {
        fn sql(&self) -> super::Sql<'_> {
            super::Sql::Text(self)
        }
    }

    impl Sealed for String {
        fn sql(&self) -> super::Sql<'_> {
            super::Sql::Text(self)
        }
    }

    impl Sealed for crate::Statement {
        fn sql(&self) -> super::Sql<'_> {
            super::Sql::Prepared(self)
        }
    }
}

/// Expands to the statement methods of a type with a `held: Held` field.
/// `$context` completes "Runs the statement …" in each method's docs.
macro_rules! statement_methods {
    ($context:literal) => {
        /// Executes a statement and returns the number of rows it affected.
        #[doc = concat!("Runs ", $context, ".")]
        ///
        /// `query` is SQL text or a [`Statement`](crate::Statement) from
        /// `prepare`; parameters are `$1`, `$2`, ….
        ///
        /// # Errors
        ///
        /// [`Error::Db`](crate::Error::Db) if the statement fails (inside a
        /// transaction a server error aborts it; see
        /// [`Tx::commit`](crate::Tx::commit)),
        /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
        /// connection broke, [`Error::LeaseRevoked`](crate::Error::LeaseRevoked)
        /// if this holder lost the connection.
        pub fn execute<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
        where
            T: ?Sized + ToStatement,
        {
            self.held.execute(query, params)
        }

        /// Runs a query and returns all its rows.
        #[doc = concat!("Runs ", $context, ".")]
        ///
        /// # Errors
        ///
        /// As [`execute`](Self::execute).
        pub fn query<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
        where
            T: ?Sized + ToStatement,
        {
            self.held.query(query, params)
        }

        /// Runs a query that returns exactly one row.
        #[doc = concat!("Runs ", $context, ".")]
        ///
        /// # Errors
        ///
        /// As [`execute`](Self::execute), and [`Error::Db`](crate::Error::Db)
        /// if the query returned no row or more than one (this does not abort
        /// a transaction: the server saw no error).
        pub fn query_one<T>(&mut self, query: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
        where
            T: ?Sized + ToStatement,
        {
            self.held.query_one(query, params)
        }

        /// Runs a query that returns at most one row.
        #[doc = concat!("Runs ", $context, ".")]
        ///
        /// # Errors
        ///
        /// As [`query_one`](Self::query_one), except that no row is `Ok(None)`.
        pub fn query_opt<T>(
            &mut self,
            query: &T,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Option<Row>>
        where
            T: ?Sized + ToStatement,
        {
            self.held.query_opt(query, params)
        }

        /// Runs one or more statements separated by `;`, without parameters
        /// (the simple query protocol).
        #[doc = concat!("Runs ", $context, ".")]
        ///
        /// Send no `BEGIN`, `COMMIT` or `ROLLBACK` here: this crate tracks the
        /// transaction through its own methods.
        ///
        /// # Errors
        ///
        /// As [`execute`](Self::execute).
        pub fn batch_execute(&mut self, query: &str) -> Result<()> {
            self.held.batch_execute(query)
        }

        /// Prepares a statement for repeated use on this connection.
        ///
        /// A prepared statement belongs to the connection it was prepared on;
        /// after a reconnect, using it fails with a server error, so prepare
        /// again in each new holder.
        ///
        /// # Errors
        ///
        /// As [`execute`](Self::execute).
        pub fn prepare(&mut self, query: &str) -> Result<Statement> {
            self.held.prepare(query)
        }
    };
}

pub(crate) use statement_methods;

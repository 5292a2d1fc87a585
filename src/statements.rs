//! What the statement methods accept as a statement.

use crate::Statement;
use crate::types::ToSql;

/// The parameters of one statement, as the statement methods take them.
pub(crate) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// SQL text (`str`, `String`) or a [`Statement`] from `prepare`: what the
/// statement methods accept.
///
/// SQL text is prepared once per connection and the prepared statement is
/// reused whenever the same text runs again, so passing text costs one round
/// trip, as a prepared [`Statement`] does. The cache belongs to the
/// connection and is emptied when it is replaced, or when the server says
/// a statement is gone or no longer fits its tables. `FETCH`, `EXECUTE`
/// and `CALL` text, whose rows take their shape only when it runs, is not
/// cached: it is described again each time it runs, in the same round trip.
///
/// On a manager built with
/// [`statement_cache(false)`](crate::Builder::statement_cache) (for
/// transaction poolers), text is parsed again each time it runs, as the
/// unnamed statement, still in one round trip; only its parameters' types
/// are remembered per connection.
///
/// This trait is sealed: only the types above implement it.
pub trait ToStatement: sealed::Sealed {}

impl ToStatement for str {}
impl ToStatement for String {}
impl ToStatement for Statement {}

pub(crate) use sealed::Sql;

/// How a connection runs SQL text ([`Builder::statement_cache`](crate::Builder::statement_cache)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Naming {
    /// Each text is prepared once per connection under a name of its own
    /// and bound by that name afterwards (not pgtx's own statements, nor
    /// text whose rows take their shape when it runs).
    #[default]
    Cached,
    /// Only the unnamed statement, parsed again in every Sync group: nothing
    /// outlives the group that made it, so a transaction pooler may hand
    /// each group (outside a transaction) another server connection.
    Unnamed,
}

impl Naming {
    /// As the builders' `statement_cache(on)` says.
    pub(crate) fn with_statement_cache(on: bool) -> Naming {
        if on { Naming::Cached } else { Naming::Unnamed }
    }
}

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

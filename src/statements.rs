//! What the statement methods accept as a statement.

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

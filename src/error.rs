//! The one error type of this crate.

use std::time::Duration;

use postgres::error::{DbError, SqlState};

use crate::config::SettingsError;

/// The documented report of a transaction that was neither committed nor
/// rolled back, word for word the message psycopg2-managed-connection raises.
pub const UNFINISHED_TRANSACTION: &str =
    "Did not commit or rollback open transaction before releasing connection.";

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, named after what the caller experienced.
///
/// Each variant says what holds afterwards; in every case the lock on the
/// connection has been released or is still held exactly as the method's
/// `# Errors` section says, and no transaction is left open for another
/// thread.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection settings could not be read. Nothing was connected.
    /// (The detail is in the message, so it is not repeated as a source.)
    #[error("invalid connection settings: {0}")]
    Settings(SettingsError),

    /// Connecting (or reconnecting) to the server failed. The lock has been
    /// released; the next holder tries again.
    ///
    /// The source is the last attempt's error: a [`postgres::Error`] when the
    /// server (or TLS) turned the connection down, else an I/O error from
    /// the socket; [`Error::as_db_error`] finds the server's reason.
    #[error("could not connect to the server")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The connection broke while a statement was in flight, or before it
    /// could be sent. A transaction that was open is not committed (the server
    /// rolls back a transaction whose session ends); the next holder reconnects.
    #[error("the connection to the server was lost")]
    ConnectionLost(#[source] Option<postgres::Error>),

    /// The connection broke while `COMMIT` was in flight: the server may or
    /// may not have committed, and nobody can tell from this side. Check the
    /// data (for example with an idempotency key) before retrying.
    #[error("the connection was lost during COMMIT: the transaction may or may not have committed")]
    CommitOutcomeUnknown(#[source] Option<postgres::Error>),

    /// `commit` was called after a statement in the transaction had failed
    /// (or a statement after its `BEGIN` was refused). The server had
    /// aborted the transaction, so it was rolled back and nothing it did was
    /// saved. Carries the first error the server reported.
    ///
    /// [`Savepoint::release`](crate::Savepoint::release) returns it too when
    /// a statement inside the savepoint had failed: then only the
    /// savepoint's work was rolled back, and the transaction goes on.
    #[error("the transaction was aborted by an earlier error and has been rolled back{}", first_error(.0))]
    TransactionAborted(#[source] Option<Box<DbError>>),

    /// SQL given to a [`Tx`](crate::Tx) or [`Savepoint`](crate::Savepoint)
    /// would end or restart the transaction behind pgtx's back (`COMMIT`,
    /// `ROLLBACK`, `BEGIN`, `END`, `ABORT`, `START TRANSACTION`,
    /// `PREPARE TRANSACTION`, `COMMIT/ROLLBACK PREPARED`), or a statement
    /// [`prepare`](crate::Guard::prepare)d anywhere is one. Nothing of it
    /// was sent; the transaction is as it was. End a transaction with
    /// [`Tx::commit`](crate::Tx::commit) or [`Tx::rollback`](crate::Tx::rollback),
    /// and use [`Tx::savepoint`](crate::Tx::savepoint) for partial rollbacks
    /// (`SAVEPOINT`, `RELEASE` and `ROLLBACK TO` in SQL work too).
    #[error(
        "transaction control is not allowed here: {0}; end the transaction with commit() or rollback()"
    )]
    TransactionControl(String),

    /// The connection was asked for (`lock`, `try_lock`, `lock_timeout`,
    /// `transaction`, `close`) by a thread that already holds it inside a
    /// [`ManagedConnection::transaction`](crate::ManagedConnection::transaction)
    /// scope. Waiting would deadlock, and the earlier hold is provably
    /// alive, so it is refused at once; the transaction in progress is
    /// untouched. Pass its `Tx` down instead.
    #[error(
        "this thread already holds the connection in a transaction scope; pass its Tx down instead of asking again"
    )]
    Reentrant,

    /// A transaction was released without `commit` or `rollback`; it has been
    /// rolled back. Its message is exactly [`UNFINISHED_TRANSACTION`].
    #[error("{}", UNFINISHED_TRANSACTION)]
    UnfinishedTransaction,

    /// This guard or transaction no longer holds the connection: another
    /// acquirer found it abandoned (forgotten, left on an exited thread, idle
    /// past [`Builder::abandon_after`](crate::Builder::abandon_after), or the
    /// same thread acquired the connection again) and took it over, rolling
    /// back whatever was open. Nothing it did after that point reached the server.
    #[error(
        "the connection was taken over because this holder looked abandoned; its transaction was rolled back"
    )]
    LeaseRevoked,

    /// The connection was not free within the time given. Nothing was done.
    #[error("timed out after {0:?} waiting for the connection")]
    LockTimeout(Duration),

    /// The connection was held by someone else and a non-blocking attempt was
    /// made. Nothing was done.
    #[error("the connection is held by another thread")]
    WouldBlock,

    /// A statement failed: on the server (see [`Error::as_db_error`]) or on
    /// this side (a parameter or column type mismatch, an unexpected row
    /// count). Inside a transaction a server error aborts it: only
    /// [`Tx::rollback`](crate::Tx::rollback) can follow, and
    /// [`Tx::commit`](crate::Tx::commit) reports [`Error::TransactionAborted`].
    #[error("{}", describe(.0))]
    Db(#[source] postgres::Error),

    /// The private runtime that drives the connection could not be created.
    #[error("could not start the runtime that drives the connection")]
    Runtime(#[source] std::io::Error),
}

fn first_error(first: &Option<Box<DbError>>) -> String {
    match first {
        Some(db) => format!(
            ": {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => String::new(),
    }
}

/// `postgres::Error` shows only "db error" for a server error; say what
/// the server said, with its SQLSTATE code.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

impl From<SettingsError> for Error {
    fn from(e: SettingsError) -> Self {
        Error::Settings(e)
    }
}

impl Error {
    /// The server's error, if the server reported one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Db(e) => e.as_db_error(),
            Error::Connect(e) => e
                .downcast_ref::<postgres::Error>()
                .and_then(postgres::Error::as_db_error),
            Error::ConnectionLost(e) | Error::CommitOutcomeUnknown(e) => {
                e.as_ref().and_then(postgres::Error::as_db_error)
            }
            Error::TransactionAborted(e) => e.as_deref(),
            _ => None,
        }
    }

    /// The SQLSTATE code of the server's error, if any.
    pub fn code(&self) -> Option<&SqlState> {
        self.as_db_error().map(DbError::code)
    }

    /// Whether running the same work again may succeed: a lost connection, a
    /// timeout, a serialization failure or a deadlock.
    ///
    /// [`Error::CommitOutcomeUnknown`] is deliberately not transient: the
    /// first attempt may have committed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect(_) | Error::ConnectionLost(_) | Error::LockTimeout(_) => true,
            Error::WouldBlock | Error::LeaseRevoked => true,
            _ => matches!(
                self.code(),
                Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_transaction_reads_like_the_seed() {
        assert_eq!(
            Error::UnfinishedTransaction.to_string(),
            "Did not commit or rollback open transaction before releasing connection."
        );
    }

    #[test]
    fn commit_outcome_unknown_is_not_transient() {
        assert!(!Error::CommitOutcomeUnknown(None).is_transient());
        assert!(Error::ConnectionLost(None).is_transient());
    }
}

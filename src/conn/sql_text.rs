//! How SQL text runs on a connection: prepared once per connection and
//! bound by name afterwards (prepared again when the server says the cached
//! statement went stale), or, for transaction poolers, on the unnamed
//! statement with its parameters' types looked up once per connection.

use std::sync::atomic::{AtomicBool, Ordering};

use postgres::error::SqlState;

use super::request::{Opens, Request, StatementKind};
use super::{Connection, Target};
use crate::statements::Params;

/// A statement's text run as a cached prepared statement: prepared once
/// per connection, prepared again once when the server says it is stale
/// outside a transaction (see `SessionCore::cached_statement`).
pub(super) struct CachedRun<'a, K> {
    pub(super) sql: &'a str,
    pub(super) kind: K,
    pub(super) params: Params<'a>,
    pub(super) may_retry: bool,
    /// The last run failed because its cached statement was stale.
    pub(super) stale: AtomicBool,
    /// tokio-postgres' own statements (those it looks types up with) are
    /// gone: `DISCARD ALL` or `DEALLOCATE ALL` ran. They cannot be
    /// prepared again on this connection; only a new one has them.
    pub(super) internals_gone: AtomicBool,
}

impl<K: StatementKind> Request for CachedRun<'_, K> {
    type Output = K::Output;
    const OPENS: Opens = K::OPENS;

    async fn send(&self, conn: &mut Connection) -> Result<K::Output, postgres::Error> {
        self.stale.store(false, Ordering::Relaxed);
        let statement = match conn.prepare_cached(self.sql).await {
            // Preparing fresh text meets a missing statement only in
            // tokio-postgres' type lookup.
            Err(e) if is_stale(&e) && !conn.has_ended() => {
                self.internals_gone.store(true, Ordering::Relaxed);
                return Err(e);
            }
            other => other?,
        };
        let first = self
            .kind
            .send(&mut *conn, Target::Prepared(&statement), self.params)
            .await;
        match first {
            Err(e) if is_stale(&e) && !conn.has_ended() => {
                log::debug!("pgtx: cached statement is stale ({e}); emptying the cache");
                conn.forget_statements();
                if !self.may_retry {
                    self.stale.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                let statement = conn.prepare_cached(self.sql).await?;
                let again = self
                    .kind
                    .send(&mut *conn, Target::Prepared(&statement), self.params)
                    .await;
                if again.as_ref().is_err_and(is_stale) {
                    // Prepared just now, and gone at once: a statement
                    // of tokio-postgres' own is.
                    self.internals_gone.store(true, Ordering::Relaxed);
                }
                again
            }
            result => result,
        }
    }
}

/// A statement's text run on the unnamed statement, with its parameters'
/// types looked up once per connection (see
/// `SessionCore::unnamed_statement`).
pub(super) struct UnnamedRun<'a, K> {
    pub(super) sql: &'a str,
    pub(super) kind: K,
    pub(super) params: Params<'a>,
    pub(super) may_retry: bool,
}

impl<K: StatementKind> Request for UnnamedRun<'_, K> {
    type Output = K::Output;
    const OPENS: Opens = K::OPENS;

    async fn send(&self, conn: &mut Connection) -> Result<K::Output, postgres::Error> {
        let (sql, params) = (self.sql, self.params);
        if params.is_empty() {
            return self
                .kind
                .send(conn, Target::Unnamed(sql, &[]), params)
                .await;
        }
        let known = conn.has_description(sql);
        let types = conn.describe(sql).await?;
        let first = self
            .kind
            .send(&mut *conn, Target::Unnamed(sql, &types), params)
            .await;
        match first {
            Err(e) if known && may_be_stale_types(&e, self.may_retry) && !conn.has_ended() => {
                conn.forget_description(sql);
                let fresh = conn.describe(sql).await?;
                if fresh == types {
                    return Err(e);
                }
                log::debug!("pgtx: parameter types changed ({e}); running it again");
                self.kind
                    .send(conn, Target::Unnamed(sql, &fresh), params)
                    .await
            }
            result => result,
        }
    }
}

/// Whether `e` may come from parameter types remembered before a column
/// changed type, so that looking them up again and, if they changed,
/// running the statement again is right: a parameter that did not encode
/// as the type (nothing was sent), or, when running it again is allowed
/// (`may_retry`: outside a transaction), the server finding a type it did
/// not expect.
fn may_be_stale_types(e: &postgres::Error, may_retry: bool) -> bool {
    use std::error::Error as _;
    if e.source()
        .is_some_and(|s| s.is::<postgres::types::WrongType>())
    {
        return true;
    }
    may_retry
        && e.code().is_some_and(|code| {
            *code == SqlState::DATATYPE_MISMATCH || *code == SqlState::UNDEFINED_FUNCTION
        })
}

/// Whether `e` says a prepared statement no longer fits the database (so it
/// must be prepared again) rather than that the statement itself failed.
///
/// Only the server's refusal to bind a statement of tokio-postgres' own
/// counts: it is gone ("prepared statement "s12" does not exist"; not a
/// name of the user's that the statement's own SQL deallocated), or its
/// plan no longer fits its tables (raised when binding, so with no
/// PL/pgSQL context). Then nothing of the statement ran: the server
/// skipped the rest of the Sync group at its Bind.
pub(super) fn is_stale(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    if *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME {
        // tokio-postgres names its statements `s` and a number (its
        // `Statement::name` is not public).
        let named = db
            .message()
            .strip_prefix("prepared statement \"s")
            .and_then(|rest| rest.strip_suffix("\" does not exist"));
        return named.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    }
    *db.code() == SqlState::FEATURE_NOT_SUPPORTED
        && db.where_().is_none()
        && db
            .message()
            .starts_with("cached plan must not change result type")
}

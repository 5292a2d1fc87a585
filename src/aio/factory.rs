//! The one place the async front makes connections: settings → connect
//! (each host in turn) → the `on_connect` hook → after an outage, the
//! recovery handlers. The async twin of the blocking front's factory;
//! hooks are async (they run statements on the new connection).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Settings;
use crate::conn::request::{Batch, Execute, Prepare, Query, QueryOne, Request, StatementKind};
use crate::conn::writable::WritableWatch;
use crate::conn::{Connection, NoticeHandler};
use crate::connect::wire::CopyRefused;
use crate::error::{Error, HookError, Result};
use crate::machine::transaction_status::ServerStatus;
use crate::statements::{Naming, Params, Sql, ToStatement};
use crate::types::ToSql;
use crate::user_code::catch_panic_async;
use crate::{Row, Statement};

/// A boxed future that can move between threads: what an async hook
/// returns (`Box::pin(async move { … })`), as in sqlx's `after_connect`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type HookFn =
    dyn for<'c> Fn(&'c mut NewConnection) -> BoxFuture<'c, Result<(), HookError>> + Send + Sync;

/// A hook given to the builder.
#[derive(Clone)]
pub(crate) struct Hook(Arc<HookFn>);

impl Hook {
    pub(crate) fn new<F>(hook: F) -> Hook
    where
        F: for<'c> Fn(&'c mut NewConnection) -> BoxFuture<'c, Result<(), HookError>>
            + Send
            + Sync
            + 'static,
    {
        Hook(Arc::new(hook))
    }
}

/// A connection just opened, before anyone gets it: what an async
/// [`on_connect`](super::Builder::on_connect) hook and
/// [`on_reconnect`](super::Builder::on_reconnect) handlers run statements
/// on, in autocommit mode.
pub struct NewConnection {
    conn: Connection,
}

impl NewConnection {
    /// Runs one or more statements separated by semicolons (the simple
    /// query protocol), each in its own implicit transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] if a statement fails (those before it took effect);
    /// [`Error::ConnectionLost`] if the connection broke.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.request(Some(sql), &Batch(sql)).await
    }

    /// Executes a statement and returns the number of rows it affected.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub async fn execute<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, Execute, params).await
    }

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub async fn query<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, Query, params).await
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute), and [`Error::Db`] if
    /// there was not exactly one row.
    pub async fn query_one<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, QueryOne, params).await
    }

    /// Prepares a statement on this connection.
    ///
    /// # Errors
    ///
    /// [`Error::PreparedStatementsOff`] with `statement_cache(false)`;
    /// [`Error::ShapeDecidedAtRunTime`] for a statement whose result's
    /// shape the server decides when it runs; [`Error::CopyNotPreparable`]
    /// for `COPY` from or to the client; otherwise as
    /// [`batch_execute`](Self::batch_execute).
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if self.conn.naming() == Naming::Unnamed {
            return Err(Error::PreparedStatementsOff);
        }
        if let Some(command) = crate::machine::control::shape_decided_at_run_time(sql) {
            return Err(Error::ShapeDecidedAtRunTime(command));
        }
        if crate::machine::control::copy_direction(sql).is_some() {
            return Err(Error::CopyNotPreparable);
        }
        self.request(Some(sql), &Prepare(sql)).await
    }

    async fn statement<Q, K>(&mut self, query: &Q, kind: K, params: Params<'_>) -> Result<K::Output>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        let sql = match query.sql() {
            Sql::Text(sql) => Some(sql),
            Sql::Prepared(_) => None,
        };
        self.conn.take_copy_refused();
        let result = self.conn.run_statement(query, kind, params).await;
        self.outcome(sql, result)
    }

    async fn request<R: Request>(&mut self, sql: Option<&str>, request: &R) -> Result<R::Output> {
        self.conn.take_copy_refused();
        let result = request.send(&mut self.conn).await;
        self.outcome(sql, result)
    }

    fn outcome<T>(&mut self, sql: Option<&str>, result: Result<T, postgres::Error>) -> Result<T> {
        let copy = self.conn.take_copy_refused();
        match self.conn.outcome(result) {
            lost @ Err(Error::ConnectionLost(_)) => lost,
            _ if let Some(copy) = copy => {
                Err(Error::copy_refused(copy == CopyRefused::FromClient, sql))
            }
            other => other,
        }
    }
}

impl fmt::Debug for NewConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::NewConnection").finish_non_exhaustive()
    }
}

/// Why a connection is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Occasion {
    /// The first, or one opened after another was closed on purpose.
    Fresh,
    /// The last one was lost: this one ends an outage, and the recovery
    /// handlers run on it.
    EndsOutage,
}

/// How new connections are made, as the builder was given.
pub(crate) struct Factory {
    pub(crate) settings: Settings,
    pub(crate) naming: Naming,
    pub(crate) on_connect: Option<Hook>,
    pub(crate) on_reconnect: Vec<Hook>,
    pub(crate) on_notice: Option<NoticeHandler>,
    /// Shared with the connections of the same builder.
    pub(crate) watch: WritableWatch,
}

impl Factory {
    /// A new connection, set up by the `on_connect` hook if there is one
    /// (closed again if the hook fails), and by the recovery handlers when
    /// it ends an outage (whose failures and panics are logged, not
    /// returned).
    ///
    /// # Errors
    ///
    /// As `Connection::open`, and [`Error::OnConnect`] if the hook failed
    /// or left a transaction block open.
    ///
    /// # Panics
    ///
    /// When the `on_connect` hook panics (the background reconnection
    /// catches it).
    pub(crate) async fn open(&self, occasion: Occasion) -> Result<Connection> {
        let conn = Connection::open(
            &self.settings,
            self.naming,
            self.on_notice.clone(),
            &self.watch,
        )
        .await?;
        let mut new = NewConnection { conn };
        if let Some(hook) = &self.on_connect
            && let Err(e) = run_on_connect(hook, &mut new).await
        {
            log::warn!(
                "pgtx: closing a new connection: {}",
                crate::error::chain(&e)
            );
            new.conn.close().await;
            return Err(e);
        }
        if occasion == Occasion::EndsOutage {
            for (i, handler) in self.on_reconnect.iter().enumerate() {
                let outcome = catch_panic_async(
                    || format!("recovery handler #{i} panicked"),
                    (handler.0)(&mut new),
                )
                .await;
                if let Some(Err(e)) = outcome {
                    log::error!("pgtx: recovery handler #{i} failed: {e}");
                }
            }
            if new
                .conn
                .server_status()
                .is_some_and(|s| s != ServerStatus::Idle)
            {
                log::error!(
                    "pgtx: a recovery handler left a transaction block open; rolling it back"
                );
                new.batch_execute("ROLLBACK").await?;
            }
        }
        Ok(new.conn)
    }
}

async fn run_on_connect(hook: &Hook, new: &mut NewConnection) -> Result<()> {
    (hook.0)(new).await.map_err(Error::OnConnect)?;
    if new.conn.has_ended() {
        return Err(Error::OnConnect(
            "the connection was lost while the on_connect hook ran".into(),
        ));
    }
    match new.conn.server_status() {
        Some(ServerStatus::Idle) | None => Ok(()),
        Some(_) => Err(Error::OnConnect(
            "the on_connect hook left a transaction block open (it must end what it begins)".into(),
        )),
    }
}

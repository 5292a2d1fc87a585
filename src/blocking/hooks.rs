//! Code the user runs on every new connection before anyone gets it
//! (txpostgres' connection factories, sqlx's `after_connect`, r2d2's
//! `CustomizeConnection`).

use std::fmt;
use std::sync::Arc;

use crate::blocking::driver::Driver;
use crate::conn::request::{Batch, Execute, Prepare, Query, QueryOne, StatementKind};
use crate::error::{Error, HookError, Result};
use crate::machine::transaction_status::ServerStatus;
use crate::statements::{Naming, Params, Sql, ToStatement};
use crate::types::ToSql;
use crate::{Row, Statement};

type HookFn = dyn Fn(&mut NewConnection<'_>) -> Result<(), HookError> + Send + Sync;

/// A function the user gave to run on a connection.
#[derive(Clone)]
pub(crate) struct Hook(Arc<HookFn>);

impl Hook {
    pub(crate) fn new(hook: Arc<HookFn>) -> Hook {
        Hook(hook)
    }

    pub(crate) fn call(&self, conn: &mut NewConnection<'_>) -> Result<(), HookError> {
        (self.0)(conn)
    }
}

/// A hook given to [`Builder::on_connect`](crate::Builder::on_connect).
pub(crate) type OnConnect = Hook;

/// A hook given to [`Builder::on_reconnect`](crate::Builder::on_reconnect).
pub(crate) type OnReconnect = Hook;

/// A connection just opened, handed to the
/// [`on_connect`](crate::Builder::on_connect) hook before anyone else
/// gets it: run `SET`, `PREPARE` or any setup here.
///
/// Statements run in autocommit mode, one by one, as on a [`Guard`](crate::Guard).
/// The hook must leave no transaction block open: a connection handed back
/// inside one is closed and the attempt fails with [`Error::OnConnect`].
///
/// With [`statement_cache(false)`](crate::Builder::statement_cache) they
/// run on the unnamed statement, and `prepare` is refused. Through a
/// transaction pooler, mind that the hook's session settings (`SET`) land
/// on whichever server connection the pooler lends for that statement,
/// which other clients then share (see the builder option).
pub struct NewConnection<'a> {
    driver: &'a mut Driver,
}

impl<'a> NewConnection<'a> {
    pub(crate) fn new(driver: &'a mut Driver) -> NewConnection<'a> {
        NewConnection { driver }
    }
}

impl NewConnection<'_> {
    /// Runs one or more statements separated by `;` in one round trip
    /// (the simple query protocol), returning nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] if the server refused a statement (those before it
    /// ran); [`Error::ConnectionLost`] if the connection broke.
    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.run(Some(sql), |driver| driver.request(&Batch(sql)))
    }

    /// Runs one statement and returns the number of rows it affected.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub fn execute<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<u64>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, Execute, params)
    }

    /// Runs one statement and returns its rows.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute).
    pub fn query<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, Query, params)
    }

    /// Runs one statement that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As [`batch_execute`](Self::batch_execute), and [`Error::Db`] if
    /// there was not exactly one row.
    pub fn query_one<Q>(&mut self, query: &Q, params: &[&(dyn ToSql + Sync)]) -> Result<Row>
    where
        Q: ?Sized + ToStatement,
    {
        self.statement(query, QueryOne, params)
    }

    /// Prepares a statement on this connection (a [`Statement`] is only
    /// valid on the connection that prepared it).
    ///
    /// # Errors
    ///
    /// [`Error::PreparedStatementsOff`] with
    /// [`statement_cache(false)`](crate::Builder::statement_cache), and
    /// [`Error::ShapeDecidedAtRunTime`] for `FETCH`, `EXECUTE` and `CALL`,
    /// and [`Error::CopyNotPreparable`] for `COPY` from or to the client,
    /// before anything is sent; otherwise as [`batch_execute`](Self::batch_execute).
    pub fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if self.driver.naming() == Naming::Unnamed {
            return Err(Error::PreparedStatementsOff);
        }
        if let Some(command) = crate::machine::control::shape_decided_at_run_time(sql) {
            return Err(Error::ShapeDecidedAtRunTime(command));
        }
        if crate::machine::control::copy_direction(sql).is_some() {
            return Err(Error::CopyNotPreparable);
        }
        self.run(Some(sql), |driver| driver.request(&Prepare(sql)))
    }

    /// Runs `query` as a statement of `kind` (see `Connection::run_statement`).
    fn statement<Q, K>(&mut self, query: &Q, kind: K, params: Params<'_>) -> Result<K::Output>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        let sql = match query.sql() {
            Sql::Text(sql) => Some(sql),
            Sql::Prepared(_) => None,
        };
        self.run(sql, |driver| driver.run_statement(query, kind, params))
    }

    /// Runs one request; `sql` names it in a [`Error::CopyRefused`].
    fn run<T>(
        &mut self,
        sql: Option<&str>,
        request: impl FnOnce(&mut Driver) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        self.driver.take_copy_refused();
        let result = request(self.driver);
        let copy = self.driver.take_copy_refused();
        match self.driver.outcome(result) {
            lost @ Err(Error::ConnectionLost(_)) => lost,
            _ if let Some(copy) = copy => Err(Error::copy_refused(
                copy == crate::connect::wire::CopyRefused::FromClient,
                sql,
            )),
            other => other,
        }
    }
}

impl fmt::Debug for NewConnection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConnection").finish_non_exhaustive()
    }
}

/// Runs `hook` on the connection `driver` just opened.
///
/// # Errors
///
/// [`Error::OnConnect`] if the hook failed, or left a transaction block
/// open; the caller must then not use the connection.
pub(crate) fn run_on_connect(hook: &OnConnect, driver: &mut Driver) -> Result<()> {
    let outcome = hook.call(&mut NewConnection::new(driver));
    if let Err(e) = outcome {
        return Err(Error::OnConnect(e));
    }
    if driver.has_ended() {
        return Err(Error::OnConnect(
            "the connection was lost while the on_connect hook ran".into(),
        ));
    }
    match driver.server_status() {
        Some(ServerStatus::Idle) | None => Ok(()),
        Some(_) => Err(Error::OnConnect(
            "the on_connect hook left a transaction block open (it must end what it begins)".into(),
        )),
    }
}

//! Sync over async: the blocking shell over one [`Connection`] of the
//! async core, driven on a private current-thread runtime, the way the
//! `postgres` crate drives its own. Every method hands its work to the
//! core in one line; this file holds the only `block_on` of the shell.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::types::Type;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, Notification, Row, Statement};

use crate::config::Settings;
use crate::conn::Connection;
pub(crate) use crate::conn::Target;
use crate::connect::CancelTarget;
use crate::error::Error;
use crate::statements::{Naming, Params};
use crate::wire::{BeginOutcome, CopyRefused, ServerStatus};

/// One open connection and the runtime that drives it.
pub(crate) struct Driver {
    runtime: Runtime,
    conn: Connection,
}

impl Driver {
    /// Opens a new connection with `settings` (see [`Connection::open`])
    /// and drives it on a runtime of its own.
    ///
    /// # Errors
    ///
    /// As [`Connection::open`], and [`Error::Runtime`] if the runtime
    /// could not be made.
    pub(crate) fn open(settings: &Settings, naming: Naming) -> Result<Driver, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let conn = runtime.block_on(Connection::open(settings, naming))?;
        Ok(Driver { runtime, conn })
    }

    /// How SQL text runs on this connection.
    pub(crate) fn naming(&self) -> Naming {
        self.conn.naming()
    }

    /// See [`Connection::prepare_cached`].
    pub(crate) fn prepare_cached(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        self.runtime.block_on(self.conn.prepare_cached(sql))
    }

    /// See [`Connection::describe`].
    pub(crate) fn describe(&mut self, sql: &str) -> Result<Arc<[Type]>, postgres::Error> {
        self.runtime.block_on(self.conn.describe(sql))
    }

    /// See [`Connection::has_description`].
    pub(crate) fn has_description(&self, sql: &str) -> bool {
        self.conn.has_description(sql)
    }

    /// See [`Connection::forget_description`].
    pub(crate) fn forget_description(&mut self, sql: &str) {
        self.conn.forget_description(sql);
    }

    /// See [`Connection::execute`].
    pub(crate) fn execute(
        &mut self,
        target: Target<'_>,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        self.runtime.block_on(self.conn.execute(target, params))
    }

    /// See [`Connection::query`].
    pub(crate) fn query(
        &mut self,
        target: Target<'_>,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        self.runtime.block_on(self.conn.query(target, params))
    }

    /// See [`Connection::query_one`].
    pub(crate) fn query_one(
        &mut self,
        target: Target<'_>,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        self.runtime.block_on(self.conn.query_one(target, params))
    }

    /// See [`Connection::query_opt`].
    pub(crate) fn query_opt(
        &mut self,
        target: Target<'_>,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        self.runtime.block_on(self.conn.query_opt(target, params))
    }

    /// See [`Connection::arm_begin`].
    pub(crate) fn arm_begin(&mut self, begin: &str) {
        self.conn.arm_begin(begin);
    }

    /// See [`Connection::last_command_tag`].
    pub(crate) fn last_command_tag(&self) -> String {
        self.conn.last_command_tag()
    }

    /// See [`Connection::take_copy_refused`].
    pub(crate) fn take_copy_refused(&mut self) -> Option<CopyRefused> {
        self.conn.take_copy_refused()
    }

    /// See [`Connection::begin_outcome`].
    pub(crate) fn begin_outcome(&mut self) -> BeginOutcome {
        self.conn.begin_outcome()
    }

    /// See [`Connection::server_status`].
    pub(crate) fn server_status(&self) -> Option<ServerStatus> {
        self.conn.server_status()
    }

    /// See [`Connection::reads_utf8`].
    pub(crate) fn reads_utf8(&self) -> bool {
        self.conn.reads_utf8()
    }

    /// See [`Connection::forget_statements`].
    pub(crate) fn forget_statements(&mut self) {
        self.conn.forget_statements();
    }

    /// Runs one request to completion (see [`Connection::run`]).
    pub(crate) fn run<'a, T, F, Fut>(&'a mut self, request: F) -> Result<T, postgres::Error>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, postgres::Error>> + 'a,
    {
        let Driver { runtime, conn } = self;
        runtime.block_on(conn.run(request))
    }

    /// See [`Connection::cancel_target`].
    pub(crate) fn cancel_target(&self) -> &Arc<CancelTarget> {
        self.conn.cancel_target()
    }

    /// See [`Connection::answered_within`].
    pub(crate) fn answered_within(&self, span: Duration) -> bool {
        self.conn.answered_within(span)
    }

    /// See [`Connection::is_alive`].
    pub(crate) fn is_alive(&mut self) -> bool {
        self.runtime.block_on(self.conn.is_alive())
    }

    /// See [`Connection::has_ended`].
    pub(crate) fn has_ended(&self) -> bool {
        self.conn.has_ended()
    }

    /// See [`Connection::take_end_cause`].
    pub(crate) fn take_end_cause(&mut self) -> Option<postgres::Error> {
        self.conn.take_end_cause()
    }

    /// See [`Connection::outcome`].
    pub(crate) fn outcome<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, Error> {
        self.conn.outcome(result)
    }

    /// See [`Connection::why_lost`].
    pub(crate) fn why_lost(&mut self, request_error: postgres::Error) -> postgres::Error {
        self.conn.why_lost(request_error)
    }

    /// See [`Connection::notifications`].
    pub(crate) fn notifications(&mut self) -> &mut VecDeque<Notification> {
        self.conn.notifications()
    }

    /// See [`Connection::wait_notification`].
    pub(crate) fn wait_notification(&mut self, deadline: Option<Instant>) -> bool {
        self.runtime.block_on(self.conn.wait_notification(deadline))
    }

    /// See [`Connection::close`].
    pub(crate) fn close(self) {
        let Driver { runtime, conn } = self;
        runtime.block_on(conn.close());
    }
}

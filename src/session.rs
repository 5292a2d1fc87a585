//! The shared connection itself, and what we know about its transaction.
//!
//! Only the holder of the lease (see `lease.rs`) locks the session, and only
//! for as long as one request takes, so the mutex here is never held while
//! user code runs. What is known about the transaction is `track.rs`'s
//! state machine; this file does the I/O that drives it. The transaction
//! status is mirrored into an atomic so that any thread can read it
//! without waiting.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use postgres::error::{DbError, SqlState};

use crate::cancel::CancelCell;
use crate::config::Settings;
use crate::control;
use crate::driver::{Driver, Target};
use crate::error::{Error, Result};
use crate::factory::{ConnectionFactory, Occasion};
use crate::outage::{BackgroundReconnect, Status};
use crate::statements::{Naming, Sql, ToStatement};
use crate::track::{CommitPlan, Machine, PreparePlan, Refusal, ReleasePlan, Reply};
use crate::transaction_status::{StatusCell, TransactionStatus};
use crate::wire::{BeginOutcome, CopyRefused, ServerStatus};

/// A connection that answered this recently is not checked again (when
/// taken, or before a transaction's first statement): the check is for
/// connections that died while idle, and costs a turn of the I/O driver.
const RECHECK_AFTER: Duration = Duration::from_millis(1);

/// The shape of a request, what it sends: which decides how a pending
/// `BEGIN` goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestShape {
    /// Bind and Execute (after a Parse, the first time a text is seen):
    /// `BEGIN` rides in front of the first Parse or Bind.
    Bind,
    /// A simple Query: `BEGIN` goes first, on its own.
    Query,
    /// Only Parse and Describe, which touch no data: no `BEGIN` needed yet.
    Parse,
}

/// What the session's mutex guards: the connection, the state machine it
/// drives, whether the last connection was lost, and the last failure.
struct SessionState {
    driver: Option<Driver>,
    machine: Machine,
    /// The last connection was lost (not closed on purpose): the next one
    /// opened ends an outage, and the recovery handlers run on it.
    lost: bool,
    /// The connection must be replaced as soon as no transaction is open
    /// on it (tokio-postgres' own prepared statements are gone).
    replace: bool,
    /// The last error the server reported in the current (or last)
    /// transaction, `COMMIT`'s included: what a retrying transaction looks
    /// at, whatever error type its closure returned.
    failure: Option<Box<DbError>>,
}

/// How new connections are made, and how an outage is ridden out.
pub(crate) struct ConnectionSetup {
    pub(crate) factory: Arc<ConnectionFactory>,
    pub(crate) background_reconnect: Option<BackgroundReconnect>,
}

pub(crate) struct Session {
    state: Mutex<SessionState>,
    status: StatusCell,
    /// Connections opened after one was lost.
    replaced: AtomicU64,
    cancel: Arc<CancelCell>,
    setup: ConnectionSetup,
}

/// The session, locked by the lease holder for one operation.
pub(crate) struct LockedSession<'a> {
    state: MutexGuard<'a, SessionState>,
    status: &'a StatusCell,
    replaced: &'a AtomicU64,
    cancel: &'a CancelCell,
    setup: &'a ConnectionSetup,
}

impl Session {
    pub(crate) fn new(setup: ConnectionSetup) -> Self {
        Session {
            state: Mutex::new(SessionState {
                driver: None,
                machine: Machine::new(),
                lost: false,
                replace: false,
                failure: None,
            }),
            status: StatusCell::new(),
            replaced: AtomicU64::new(0),
            cancel: Arc::default(),
            setup,
        }
    }

    pub(crate) fn lock(&self) -> LockedSession<'_> {
        LockedSession {
            state: self.state.lock(),
            status: &self.status,
            replaced: &self.replaced,
            cancel: &self.cancel,
            setup: &self.setup,
        }
    }

    /// Fails at once while the connection is down and being reconnected
    /// in the background (one atomic load when it is not).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionDead`] while the background thread reconnects.
    pub(crate) fn refuse_while_down(&self) -> Result<()> {
        match &self.setup.background_reconnect {
            Some(background) => background.refuse_while_down(),
            None => Ok(()),
        }
    }

    /// The manager is going away: no more reconnecting.
    pub(crate) fn stop_reconnecting(&self) {
        if let Some(background) = &self.setup.background_reconnect {
            background.shut_down();
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        self.setup.factory.settings()
    }

    pub(crate) fn status(&self) -> TransactionStatus {
        self.status.get()
    }

    /// Connections opened after one was lost, over the session's life.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// What cancel handles share with the statements they cancel.
    pub(crate) fn cancel_cell(&self) -> &Arc<CancelCell> {
        &self.cancel
    }
}

impl LockedSession<'_> {
    /// Makes sure there is a live connection, opening one if there is none or
    /// if the server closed the old one while it sat idle.
    ///
    /// Must only be called when nothing of a transaction has reached the
    /// server (none is open, or one is pending).
    pub(crate) fn ensure_open(&mut self) -> Result<()> {
        if std::mem::take(&mut self.state.replace)
            && let Some(driver) = self.state.driver.take()
        {
            // Nothing of a transaction is on it (see above): a pending
            // BEGIN goes out on the new one.
            driver.close();
            self.cancel.disconnected();
        }
        if let Some(driver) = self.state.driver.as_mut() {
            if driver.answered_within(RECHECK_AFTER) || driver.is_alive() {
                return Ok(());
            }
            let cause = driver.take_end_cause();
            match cause {
                Some(cause) => {
                    log::info!("pgtx: connection closed while idle ({cause}); reconnecting")
                }
                None => log::info!("pgtx: connection closed while idle; reconnecting"),
            }
            self.lose_connection();
        }
        let setup = self.setup;
        if let Some(background) = &setup.background_reconnect {
            match background.status() {
                Ok(Status::Up) => {}
                Ok(Status::Ready(driver)) => {
                    // The background thread reconnected (and ran the
                    // recovery handlers).
                    self.install(*driver);
                    return Ok(());
                }
                Err(e) => {
                    self.status.set(TransactionStatus::Closed);
                    return Err(e);
                }
            }
        }
        let since = std::time::Instant::now();
        let occasion = if self.state.lost {
            Occasion::EndsOutage
        } else {
            Occasion::Fresh
        };
        match setup.factory.open(occasion) {
            Ok(driver) => {
                self.install(driver);
                Ok(())
            }
            Err(e) => {
                self.status.set(TransactionStatus::Closed);
                if let Some(background) = &setup.background_reconnect
                    && matches!(e, Error::Connect(_) | Error::OnConnect(_))
                {
                    background.begin(since, &e, &setup.factory);
                }
                Err(e)
            }
        }
    }

    fn install(&mut self, driver: Driver) {
        if self.state.lost {
            self.replaced.fetch_add(1, Ordering::Relaxed);
        }
        self.state.driver = Some(driver);
        self.state.lost = false;
        self.publish();
    }

    /// The last error the server reported in the current (or last)
    /// transaction, taken.
    pub(crate) fn take_failure(&mut self) -> Option<Box<DbError>> {
        self.state.failure.take()
    }

    /// How SQL text runs on this session's connections.
    pub(crate) fn naming(&self) -> Naming {
        self.setup.factory.naming()
    }

    /// Whether a transaction block is (or was, before the connection broke)
    /// open, pgtx's or one that user SQL opened.
    pub(crate) fn in_transaction(&self) -> bool {
        self.state.machine.in_transaction()
    }

    /// Runs one statement, keeping the transaction status exact; a pending
    /// `BEGIN` goes out with it (or before it, see [`RequestShape`]).
    /// `sql`: the statement's text, for an error that names it (`None`
    /// for a prepared statement).
    pub(crate) fn statement<T>(
        &mut self,
        shape: RequestShape,
        sql: Option<&str>,
        request: impl FnOnce(&mut Driver) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let server = self.server_status();
        let pending = self
            .state
            .machine
            .before_statement(shape != RequestShape::Parse, server)
            .map_err(refused)?;
        if pending.is_some() {
            // A connection that died while the transaction waited for its
            // first statement is replaced: nothing of it reached the server.
            self.ensure_open().inspect_err(|_| {
                self.state.machine.lose();
                self.publish();
            })?;
        }
        let Some(driver) = self.state.driver.as_mut() else {
            return Err(Error::ConnectionLost(None));
        };
        self.status.set(TransactionStatus::Active);
        // Only this request's COPY counts (an on_connect hook's was its own).
        driver.take_copy_refused();
        let serial = self.cancel.start(driver.cancel_target());
        let mut began = false;
        let result = match (&pending, shape) {
            (Some(begin), RequestShape::Bind) => {
                driver.arm_begin(begin);
                let result = request(driver);
                began = driver.begin_outcome() == BeginOutcome::Began;
                result
            }
            // A simple Query cannot share BEGIN's Sync group: BEGIN first, alone.
            (Some(begin), _) => match driver.run(|client| client.batch_execute(begin)) {
                Ok(()) => {
                    began = true;
                    request(driver)
                }
                Err(e) => Err(e),
            },
            (None, _) => request(driver),
        };
        let cancelled = self.cancel.finish(serial);
        let copy = driver.take_copy_refused();
        let result = match driver.outcome(result) {
            lost @ Err(Error::ConnectionLost(_)) => lost,
            _ if let Some(copy) = copy => {
                Err(Error::copy_refused(copy == CopyRefused::FromClient, sql))
            }
            Err(Error::Db(e)) if cancelled && e.code() == Some(&SqlState::QUERY_CANCELED) => {
                Err(Error::Cancelled(e))
            }
            other => other,
        };
        let reply = self.reply(&result, began);
        self.state.machine.after_statement(reply);
        if let Some(e) = result.as_ref().err().and_then(Error::as_db_error)
            && self.state.machine.in_transaction()
        {
            self.state.failure = Some(Box::new(e.clone()));
        }
        self.publish();
        result
    }

    /// Runs one statement given as SQL text or a prepared statement, with
    /// `params` parameters. Text is prepared once per connection (see
    /// `Driver::prepare_cached`).
    ///
    /// A cached statement can go stale where freshly prepared text would not:
    /// a table's columns changed ("cached plan must not change result type")
    /// or the user deallocated it. Then the cache is emptied, and, outside a
    /// transaction, the statement is prepared again and retried once (the
    /// server ran nothing). As a transaction's first statement, its `BEGIN`
    /// ran in the same Sync group and nothing else did: the block is rolled
    /// back, begun again and the statement retried once. Later inside a
    /// transaction the error has aborted it, as any statement error does.
    ///
    /// With [`Naming::Unnamed`], text runs on the unnamed statement (see
    /// [`LockedSession::unnamed_statement`]).
    pub(crate) fn cached_statement<Q, T>(
        &mut self,
        query: &Q,
        params: usize,
        mut request: impl FnMut(&mut Driver, Target<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T>
    where
        Q: ?Sized + ToStatement,
    {
        let sql = match query.sql() {
            Sql::Prepared(statement) => {
                return self.statement(RequestShape::Bind, None, |driver| {
                    request(driver, Target::Prepared(statement))
                });
            }
            Sql::Text(sql) => sql,
        };
        if self.naming() == Naming::Unnamed || control::shape_decided_at_run_time(sql).is_some() {
            // A cached description of such text could decode a later
            // shape's bytes as the old columns' types: describe it each time.
            return self.unnamed_statement(sql, params, request);
        }
        let may_retry = !self.in_transaction();
        let first_of_transaction = self.state.machine.pending_begin();
        // Whether the last run failed because its cached statement was stale.
        let stale = std::cell::Cell::new(false);
        // Whether tokio-postgres' own statements (those it looks types up
        // with) are gone: `DISCARD ALL` or `DEALLOCATE ALL` ran. They cannot
        // be prepared again on this connection; only a new one has them.
        let internals_gone = std::cell::Cell::new(false);
        let mut run = |driver: &mut Driver| {
            stale.set(false);
            let statement = match driver.prepare_cached(sql) {
                // Preparing fresh text meets a missing statement only in
                // tokio-postgres' type lookup.
                Err(e) if is_stale(&e) && !driver.has_ended() => {
                    internals_gone.set(true);
                    return Err(e);
                }
                other => other?,
            };
            match request(driver, Target::Prepared(&statement)) {
                Err(e) if is_stale(&e) && !driver.has_ended() => {
                    log::debug!("pgtx: cached statement is stale ({e}); emptying the cache");
                    driver.forget_statements();
                    if !may_retry {
                        stale.set(true);
                        return Err(e);
                    }
                    let statement = driver.prepare_cached(sql)?;
                    let again = request(driver, Target::Prepared(&statement));
                    if again.as_ref().is_err_and(is_stale) {
                        // Prepared just now, and gone at once: a statement
                        // of tokio-postgres' own is.
                        internals_gone.set(true);
                    }
                    again
                }
                result => result,
            }
        };
        let mut outcome = self.statement(RequestShape::Bind, Some(sql), &mut run);
        // At most twice more: once prepared anew, once on a new connection.
        for _ in 0..2 {
            let Err(Error::Db(e)) = &outcome else {
                break;
            };
            if !stale.get() && !internals_gone.get() {
                break;
            }
            if first_of_transaction.is_some() {
                // BEGIN went in the statement's Sync group, and the server
                // skipped the rest of it at the stale statement: nothing of
                // the transaction ran. Begin again.
                log::debug!("pgtx: first statement was stale ({e}); beginning again");
                self.rollback();
            } else if self.in_transaction() {
                // The error aborted the transaction; the connection is
                // replaced once it is over.
                self.state.replace = internals_gone.get();
                break;
            }
            if internals_gone.get() {
                log::info!(
                    "pgtx: the connection's own prepared statements are gone (DISCARD ALL or \
                     DEALLOCATE ALL); replacing the connection"
                );
                self.replace_connection()?;
                internals_gone.set(false);
            }
            if let Some(begin) = &first_of_transaction {
                self.begin(begin.clone());
            }
            outcome = self.statement(RequestShape::Bind, Some(sql), &mut run);
        }
        outcome
    }

    /// Runs SQL text on the unnamed statement, with `params` parameters:
    /// their types are looked up once per connection (`Driver::describe`;
    /// not at all when there are none).
    ///
    /// Remembered types can go stale (a column changed type). When the
    /// error says they may have (see [`may_be_stale_types`]), they are
    /// looked up again, and if they changed the statement runs again, once.
    fn unnamed_statement<T>(
        &mut self,
        sql: &str,
        params: usize,
        mut request: impl FnMut(&mut Driver, Target<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let may_retry = !self.in_transaction();
        self.statement(RequestShape::Bind, Some(sql), |driver| {
            if params == 0 {
                return request(driver, Target::Unnamed(sql, &[]));
            }
            let known = driver.has_description(sql);
            let types = driver.describe(sql)?;
            match request(driver, Target::Unnamed(sql, &types)) {
                Err(e) if known && may_be_stale_types(&e, may_retry) && !driver.has_ended() => {
                    driver.forget_description(sql);
                    let fresh = driver.describe(sql)?;
                    if fresh == types {
                        return Err(e);
                    }
                    log::debug!("pgtx: parameter types changed ({e}); running it again");
                    request(driver, Target::Unnamed(sql, &fresh))
                }
                result => result,
            }
        })
    }

    /// Begins a transaction: nothing is sent until its first statement
    /// (see `track.rs`'s `Track::Pending`). Returns whether a transaction
    /// block that user SQL had opened had to be rolled back first (the
    /// caller reports it).
    pub(crate) fn begin(&mut self, begin: Cow<'static, str>) -> bool {
        let rolled_back = self.in_transaction();
        if rolled_back {
            self.rollback();
        }
        self.state.machine.begin(begin);
        self.state.failure = None;
        self.publish();
        rolled_back
    }

    /// Sends `COMMIT`, and says truthfully whether the server committed.
    ///
    /// On `Err` the transaction is over either way (rolled back, or of unknown
    /// outcome when the connection broke during `COMMIT`).
    pub(crate) fn commit(&mut self) -> Result<()> {
        match self.state.machine.commit() {
            CommitPlan::Nothing => {
                self.publish();
                Ok(())
            }
            CommitPlan::Lost => {
                self.publish();
                Err(Error::ConnectionLost(None))
            }
            CommitPlan::Escaped => {
                self.publish();
                Err(escaped())
            }
            CommitPlan::RollBack(first) => {
                self.rollback();
                Err(Error::TransactionAborted(first))
            }
            CommitPlan::Send => self.send_commit(),
        }
    }

    fn send_commit(&mut self) -> Result<()> {
        let Some(driver) = self.state.driver.as_mut() else {
            self.publish();
            return Err(Error::ConnectionLost(None));
        };
        if !driver.answered_within(RECHECK_AFTER) && !driver.is_alive() {
            // The server closed the connection before COMMIT was written:
            // it rolled back, and nothing is in doubt.
            let cause = driver.take_end_cause();
            self.discard();
            return Err(Error::ConnectionLost(cause));
        }
        self.status.set(TransactionStatus::Active);
        // As a simple Query, never a named statement: SQL can redefine a
        // name behind the tap's back (see wire.rs), and a COMMIT that runs
        // something else would be reported as done. Once it is written, a
        // broken connection leaves its outcome unknown.
        let sent = driver.run(|client| client.batch_execute("COMMIT"));
        self.committed(sent)
    }

    /// Follows what the server answered to `COMMIT`.
    fn committed(&mut self, sent: Result<(), postgres::Error>) -> Result<()> {
        let Some(driver) = self.state.driver.as_mut() else {
            self.publish();
            return Err(Error::ConnectionLost(None));
        };
        match sent {
            Ok(()) => {
                // The server's word, not the request's success: `COMMIT` of
                // a block the server had aborted answers `ROLLBACK`.
                let tag = driver.last_command_tag();
                let server = driver.server_status();
                if tag == "COMMIT" && server == Some(ServerStatus::Idle) {
                    self.publish();
                    return Ok(());
                }
                log::warn!(
                    "pgtx: COMMIT was answered {tag:?} with the session {server:?}: not committed"
                );
                if server != Some(ServerStatus::Idle) {
                    self.rollback_whatever_is_open();
                }
                self.publish();
                Err(Error::TransactionAborted(None))
            }
            Err(e) if e.as_db_error().is_some() && !driver.has_ended() => {
                // The server refused to commit (a deferred constraint, a
                // serialization failure): the transaction is rolled back.
                self.state.failure = e.as_db_error().map(|d| Box::new(d.clone()));
                self.publish();
                Err(Error::Db(e))
            }
            Err(e) => {
                let cause = driver.why_lost(e);
                self.discard();
                self.status.set(TransactionStatus::Unknown);
                Err(Error::CommitOutcomeUnknown(Some(cause)))
            }
        }
    }

    /// Ends the transaction without saving it. Never fails: when `ROLLBACK`
    /// cannot be sent, the connection is closed, which makes the server roll
    /// back, and no one can inherit it.
    pub(crate) fn rollback(&mut self) {
        let server = self.server_status();
        let must_send = self.state.machine.rollback(server);
        self.send_rollback(must_send);
    }

    /// Rolls back whatever the server has open, whatever the machine thought.
    fn rollback_whatever_is_open(&mut self) {
        let server = self.server_status();
        let must_send = self.state.machine.force_rollback(server);
        self.send_rollback(must_send);
    }

    /// Sends `ROLLBACK` if the machine said it `must_send` it; when it
    /// cannot be sent, closes the connection, which makes the server roll
    /// back.
    fn send_rollback(&mut self, must_send: bool) {
        if !must_send {
            self.publish();
            return;
        }
        let Some(driver) = self.state.driver.as_mut() else {
            self.publish();
            return;
        };
        self.status.set(TransactionStatus::Active);
        if let Err(e) = driver.run(|client| client.batch_execute("ROLLBACK")) {
            log::warn!(
                "pgtx: ROLLBACK failed ({e}); closing the connection so the server rolls back"
            );
            self.discard();
        }
        self.publish();
    }

    /// Runs one of pgtx's own statements (`SAVEPOINT`, `RELEASE`) on the
    /// unnamed statement, never a named one that SQL could redefine, with
    /// a pending `BEGIN` in its Sync group.
    fn own_statement(&mut self, sql: &str) -> Result<()> {
        self.statement(RequestShape::Bind, None, |d| {
            d.execute(Target::Unnamed(sql, &[]), &[])
        })
        .map(drop)
    }

    /// Opens savepoint number `depth + 1` inside the transaction; returns its number.
    pub(crate) fn savepoint(&mut self) -> Result<u32> {
        let depth = self.state.machine.next_savepoint();
        let sql = format!("SAVEPOINT {}", savepoint_name(depth));
        self.own_statement(&sql)?;
        self.state.machine.savepoint_opened(depth);
        Ok(depth)
    }

    /// Releases savepoint `depth` (the innermost): its work joins the
    /// transaction's. If the server aborted the transaction inside the
    /// savepoint, rolls back to it instead and reports the first error,
    /// which leaves the transaction usable.
    pub(crate) fn release_savepoint(&mut self, depth: u32) -> Result<()> {
        if let ReleasePlan::RollBack(first) = self.state.machine.release_savepoint() {
            self.rollback_to_savepoint(depth)?;
            return Err(Error::TransactionAborted(first));
        }
        let sql = format!("RELEASE SAVEPOINT {}", savepoint_name(depth));
        let result = self.own_statement(&sql);
        self.state.machine.savepoint_ended(depth);
        result.map(drop)
    }

    /// Undoes savepoint `depth` and everything inside it, and removes it:
    /// the transaction is healthy again even if a statement inside failed.
    pub(crate) fn rollback_to_savepoint(&mut self, depth: u32) -> Result<()> {
        let name = savepoint_name(depth);
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        let result = self.statement(RequestShape::Query, None, |d| {
            d.run(|c| c.batch_execute(&sql))
        });
        self.state.machine.savepoint_ended(depth);
        result
    }

    /// Savepoints deeper than `depth` are still open although their holder
    /// is using an outer level again: they were forgotten (`mem::forget`).
    /// Rolls them back; returns whether there were any (the caller reports).
    pub(crate) fn restore_depth(&mut self, depth: u32) -> Result<bool> {
        let Some(outermost) = self.state.machine.forgotten_savepoints(depth) else {
            return Ok(false);
        };
        self.rollback_to_savepoint(outermost)?;
        Ok(true)
    }

    /// Whether SQL text reaches the server as pgtx reads it: UTF8, unless
    /// user SQL changed `client_encoding` (a closed connection has not).
    pub(crate) fn reads_utf8(&self) -> bool {
        self.state.driver.as_ref().is_none_or(Driver::reads_utf8)
    }

    /// The vote of a two-phase commit: `PREPARE TRANSACTION gid`. Returns
    /// whether a transaction was prepared (one that sent nothing has
    /// nothing to prepare, and nothing to commit later) and, if so, its
    /// transaction id (`txid_current()`, asked in the same round trip),
    /// by which the server can tell later whether it committed.
    ///
    /// On `Err` nothing is prepared under `gid` on this session's account,
    /// except after [`Error::ConnectionLost`], when the server may have
    /// prepared it (recovery, or `ROLLBACK PREPARED`, decides).
    pub(crate) fn prepare_transaction(&mut self, gid: &str) -> Result<Vote> {
        match self.state.machine.prepare() {
            PreparePlan::Nothing => {
                self.publish();
                return Ok(Vote::Nothing);
            }
            PreparePlan::Lost => {
                self.publish();
                return Err(Error::ConnectionLost(None));
            }
            PreparePlan::Escaped => {
                self.publish();
                return Err(escaped());
            }
            PreparePlan::RollBack(first) => {
                self.rollback();
                return Err(Error::TransactionAborted(first));
            }
            PreparePlan::Send => {}
        }
        let Some(driver) = self.state.driver.as_mut() else {
            self.state.machine.reset();
            self.publish();
            return Err(Error::ConnectionLost(None));
        };
        self.status.set(TransactionStatus::Active);
        // One simple query: if the SELECT fails, PREPARE is not run.
        let sql = format!(
            "SELECT txid_current()::text; PREPARE TRANSACTION {}",
            quote_literal(gid)
        );
        let result = driver.run(|client| client.simple_query(&sql));
        let result = driver.outcome(result);
        let xid = result.as_ref().ok().and_then(|messages| {
            messages.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i64>().ok(),
                _ => None,
            })
        });
        let reply = self.reply(&result, false);
        if self.state.machine.after_prepare(gid, reply) {
            // Refused and left failed: end the block.
            self.rollback();
        }
        self.publish();
        result.map(|_| Vote::Prepared { xid })
    }

    /// `COMMIT PREPARED gid` (or `ROLLBACK PREPARED`): the second phase.
    /// Any session on the same database may send it, so a connection that
    /// broke is replaced first.
    pub(crate) fn finish_prepared(&mut self, gid: &str, commit: bool) -> Result<()> {
        if !self.state.machine.finish_prepared() {
            return Err(escaped());
        }
        self.ensure_open()?;
        let Some(driver) = self.state.driver.as_mut() else {
            return Err(Error::ConnectionLost(None));
        };
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let sql = format!("{verb} PREPARED {}", quote_literal(gid));
        self.status.set(TransactionStatus::Active);
        let result = driver.run(|client| client.batch_execute(&sql));
        let result = driver.outcome(result);
        if matches!(result, Err(Error::ConnectionLost(_))) {
            self.lose_connection();
        }
        self.publish();
        result
    }

    /// Whether pgtx's savepoint number `depth` is still open (see
    /// `Machine::savepoint_is_open`).
    pub(crate) fn savepoint_is_open(&self, depth: u32) -> bool {
        self.state.machine.savepoint_is_open(depth)
    }

    /// What a request came back with, for the machine to follow: the
    /// server's answer (its status, and its error if it refused), or a
    /// broken connection, which is dropped here. `began`: a pending `BEGIN`
    /// went out with the request and the server began the transaction.
    fn reply<'r, T>(&mut self, result: &'r Result<T>, began: bool) -> Reply<'r> {
        if let Err(Error::ConnectionLost(_)) = result {
            self.lose_connection();
            return Reply::Lost;
        }
        Reply::Answered {
            began,
            server: self.server_status().unwrap_or(ServerStatus::Idle),
            error: result.as_ref().err().and_then(Error::as_db_error),
        }
    }

    /// Closes the connection (if any). The next holder opens a new one.
    pub(crate) fn close(&mut self) {
        if let Some(driver) = self.state.driver.take() {
            driver.close();
        }
        self.state.lost = false;
        self.state.replace = false;
        self.cancel.disconnected();
        self.state.machine.reset();
        self.publish();
    }

    /// Closes the connection and opens a new one at once (no transaction
    /// is open): its `on_connect` hook runs, as on any new connection.
    fn replace_connection(&mut self) -> Result<()> {
        self.close();
        self.ensure_open()
    }

    /// The connection broke (or cannot be trusted): it is dropped, the next
    /// one opened ends an outage (recovery handlers, `replaced`), and
    /// cancel requests have nowhere to go.
    fn lose_connection(&mut self) {
        self.state.driver = None;
        self.state.lost = true;
        self.cancel.disconnected();
    }

    /// Drops a connection that cannot be trusted any more.
    fn discard(&mut self) {
        self.lose_connection();
        self.state.machine.reset();
        self.publish();
    }

    fn server_status(&self) -> Option<ServerStatus> {
        self.state.driver.as_ref().and_then(Driver::server_status)
    }

    /// Mirrors the session's state into the status everyone can read.
    fn publish(&self) {
        let status = self
            .state
            .machine
            .status(self.state.driver.is_some(), self.server_status());
        self.status.set(status);
    }
}

/// `text` as an SQL string literal (for the gids of two-phase commit,
/// which `PREPARE TRANSACTION` takes as a literal, not a parameter).
/// What a participant's vote did ([`Session::prepare_transaction`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vote {
    /// It sent nothing: nothing to prepare, nothing to commit later.
    Nothing,
    /// Prepared; `xid` is its transaction id (epoch included, as
    /// `txid_current()` gives it) when the server's answer said it.
    Prepared { xid: Option<i64> },
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The name of pgtx's savepoint number `depth`, quoted. User SQL may make
/// savepoints of its own; these names are pgtx's.
fn savepoint_name(depth: u32) -> String {
    format!("\"pgtx_savepoint_{depth}\"")
}

fn refused(refusal: Refusal) -> Error {
    match refusal {
        Refusal::Aborted(first) => Error::TransactionAborted(first),
        Refusal::Escaped => escaped(),
        Refusal::Lost => Error::ConnectionLost(None),
        Refusal::Prepared => Error::TransactionControl(
            "the transaction was prepared for two-phase commit; nothing more can run in it"
                .to_owned(),
        ),
    }
}

fn escaped() -> Error {
    Error::TransactionControl(
        "a statement ended the transaction block on the server; nothing after it was sent"
            .to_owned(),
    )
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
fn is_stale(e: &postgres::Error) -> bool {
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

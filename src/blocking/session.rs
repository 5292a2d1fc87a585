//! The shared connection as the blocking shell holds it: the async core's
//! session (`conn/session.rs`) behind a mutex, driven on the session's
//! runtime, one `block_on` per operation.
//!
//! Only the holder of the lease (see `lease.rs`) locks the session, and
//! only for as long as one operation takes, so the mutex is never held
//! while user code runs. Connections are opened here, outside the runtime:
//! opening runs the user's `on_connect` hook and recovery handlers, which
//! block. The transaction status is mirrored into an atomic so that any
//! thread can read it without waiting.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use postgres::error::DbError;
use postgres::types::Type;
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyOutRow;

use crate::blocking::driver::{Blocking, Driver};
use crate::blocking::factory::{ConnectionFactory, Occasion};
use crate::blocking::outage::{BackgroundReconnect, Status};
use crate::config::Settings;
use crate::conn::cancel_serials::CancelCell;
use crate::conn::request::{Request, StatementKind};
pub(crate) use crate::conn::session::RollBackTarget;
pub(crate) use crate::conn::session::{RequestShape, Vote};
use crate::conn::session::{Retries, SessionCore, SessionShared, Step};
pub(crate) use crate::conn::streaming::Fetched;
use crate::error::{Error, Result};
use crate::machine::fallback::{Cause, Verdict};
use crate::machine::transaction_status::TransactionStatus;
use crate::statements::{Naming, Params, ToStatement};

/// How new connections are made, the runtime they are driven on, and how
/// an outage is ridden out.
pub(crate) struct ConnectionSetup {
    pub(crate) factory: Arc<ConnectionFactory>,
    pub(crate) background_reconnect: Option<BackgroundReconnect>,
    pub(crate) runtime: Blocking,
}

pub(crate) struct Session {
    core: Mutex<SessionCore>,
    shared: SessionShared,
    setup: ConnectionSetup,
}

/// The session, locked by the lease holder for one operation.
pub(crate) struct LockedSession<'a> {
    core: MutexGuard<'a, SessionCore>,
    shared: &'a SessionShared,
    setup: &'a ConnectionSetup,
}

impl Session {
    pub(crate) fn new(setup: ConnectionSetup) -> Self {
        Session {
            core: Mutex::new(SessionCore::new(setup.factory.naming())),
            shared: SessionShared::default(),
            setup,
        }
    }

    pub(crate) fn lock(&self) -> LockedSession<'_> {
        LockedSession {
            core: self.core.lock(),
            shared: &self.shared,
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
        self.shared.status.get()
    }

    /// Connections opened after one was lost, over the session's life.
    pub(crate) fn replaced(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    /// What cancel handles share with the statements they cancel.
    pub(crate) fn cancel_cell(&self) -> &Arc<CancelCell> {
        &self.shared.cancel
    }
}

impl LockedSession<'_> {
    /// Makes sure there is a live connection, opening one if there is none or
    /// if the server closed the old one while it sat idle.
    ///
    /// Must only be called when nothing of a transaction has reached the
    /// server (none is open, or one is pending).
    pub(crate) fn ensure_open(&mut self) -> Result<()> {
        let (shared, setup) = (self.shared, self.setup);
        let runtime = &setup.runtime;
        let core = &mut *self.core;
        if core.writes_in_doubt() {
            runtime.block_on(core.confirm_writable());
        }
        if let Some(replaced) = core.take_if_replaced(shared) {
            // Nothing of a transaction is on it (see above): a pending
            // BEGIN goes out on the new one.
            runtime.block_on(replaced.close());
        }
        // The check turns the runtime's I/O driver (it must see a socket
        // the server closed): not for a connection that just answered.
        if core.answered_recently()
            || (core.has_connection() && runtime.block_on(core.keep_if_alive(shared)))
        {
            return Ok(());
        }
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
                    core.open_failed(shared);
                    return Err(e);
                }
            }
        }
        let since = Instant::now();
        let occasion = if core.was_lost() {
            Occasion::EndsOutage
        } else {
            Occasion::Fresh
        };
        match setup.factory.open(runtime, occasion) {
            Ok(driver) => {
                self.install(driver);
                Ok(())
            }
            Err(e) => {
                core.open_failed(shared);
                if let Some(background) = &setup.background_reconnect
                    && matches!(e, Error::Connect(_) | Error::OnConnect(_))
                {
                    background.begin(since, &e, &setup.factory, runtime);
                }
                Err(e)
            }
        }
    }

    fn install(&mut self, driver: Driver) {
        let (runtime, conn) = driver.into_parts();
        debug_assert!(
            runtime.is(&self.setup.runtime),
            "opened on the session's runtime"
        );
        self.core.install(self.shared, conn);
    }

    /// Before a request of `shape`: a transaction's first statement gets a
    /// live connection (one that died while the transaction waited is
    /// replaced: nothing of it reached the server).
    fn ensure_for(&mut self, shape: RequestShape) -> Result<()> {
        if self.core.needs_connection_for(shape) {
            self.ensure_open()
                .inspect_err(|_| self.core.lose_pending(self.shared))?;
        }
        Ok(())
    }

    /// The last error the server reported in the current (or last)
    /// transaction, taken.
    pub(crate) fn take_failure(&mut self) -> Option<Box<DbError>> {
        self.core.take_failure()
    }

    /// How SQL text runs on this session's connections.
    pub(crate) fn naming(&self) -> Naming {
        self.core.naming()
    }

    /// Whether a transaction block is (or was, before the connection broke)
    /// open, pgtx's or one that user SQL opened.
    pub(crate) fn in_transaction(&self) -> bool {
        self.core.in_transaction()
    }

    /// Runs one request (see `SessionCore::statement`).
    pub(crate) fn statement<R: Request>(
        &mut self,
        shape: RequestShape,
        sql: Option<&str>,
        request: &R,
    ) -> Result<R::Output> {
        self.ensure_for(shape)?;
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.statement(shared, shape, sql, request))
    }

    /// Runs one statement given as SQL text or a prepared statement (see
    /// `SessionCore::cached_statement`), opening a new connection when the
    /// core asks for one.
    pub(crate) fn cached_statement<Q, K>(
        &mut self,
        query: &Q,
        kind: K,
        params: Params<'_>,
    ) -> Result<K::Output>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        self.retrying(|core, shared, retries, runtime| {
            runtime.block_on(core.cached_statement(shared, query, kind, params, retries))
        })
    }

    /// Runs `run` (a statement that may meet a stale statement, see
    /// `SessionCore::cached_statement`) until it is done, opening a new
    /// connection when the core asks for one.
    fn retrying<T>(
        &mut self,
        mut run: impl FnMut(&mut SessionCore, &SessionShared, &mut Retries, &Blocking) -> Step<T>,
    ) -> Result<T> {
        let mut retries = Retries::new();
        loop {
            self.ensure_for(RequestShape::Bind)?;
            let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
            let step = run(core, shared, &mut retries, &setup.runtime);
            match step {
                Step::Done(result) => return result,
                Step::Reconnect => {
                    if let Err(e) = self.ensure_open() {
                        if self.core.needs_connection_for(RequestShape::Bind) {
                            self.core.lose_pending(self.shared);
                        }
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Starts `query` and keeps its rows as a stream (see
    /// `SessionCore::query_raw`).
    pub(crate) fn query_raw<Q: ?Sized + ToStatement>(
        &mut self,
        query: &Q,
        params: Params<'_>,
    ) -> Result<()> {
        self.retrying(|core, shared, retries, runtime| {
            runtime.block_on(core.query_raw(shared, query, params, retries))
        })
    }

    /// Starts a `COPY … FROM STDIN` (`copy_in`) or `COPY … TO STDOUT`
    /// (see `SessionCore::copy`).
    pub(crate) fn copy<Q: ?Sized + ToStatement>(&mut self, query: &Q, copy_in: bool) -> Result<()> {
        self.retrying(|core, shared, retries, runtime| {
            runtime.block_on(core.copy(shared, query, copy_in, retries))
        })
    }

    /// The transaction a portal bound now belongs to, and its number in
    /// it (see `SessionCore::next_portal`).
    pub(crate) fn next_portal(&mut self) -> (u64, u32) {
        self.core.next_portal()
    }

    /// The number of the current transaction on this session.
    pub(crate) fn transaction_number(&self) -> u64 {
        self.core.transaction_number()
    }

    /// Whether a stream is open (see `SessionCore::has_stream`).
    pub(crate) fn has_stream(&self) -> bool {
        self.core.has_stream()
    }

    /// Ends a stream its handle left open (see `SessionCore::end_stream`);
    /// the cause to report, for an unfinished COPY FROM STDIN.
    pub(crate) fn end_stream(&mut self) -> Option<Cause> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on_unless_done(core.end_stream(shared))
    }

    /// The rows of the open `query_raw` that have arrived, appended to `out`.
    pub(crate) fn next_rows(&mut self, out: &mut VecDeque<Row>) -> Result<Fetched> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.next_rows(shared, out))
    }

    /// The data of the open `COPY … TO STDOUT` that has arrived, appended to `out`.
    pub(crate) fn next_copy_data(&mut self, out: &mut BytesMut) -> Result<Fetched> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.next_copy_data(shared, out))
    }

    /// The rows of the open binary `COPY … TO STDOUT` that have arrived,
    /// appended to `out`.
    pub(crate) fn next_binary_rows(
        &mut self,
        out: &mut VecDeque<BinaryCopyOutRow>,
    ) -> Result<Fetched> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.next_binary_rows(shared, out))
    }

    /// Reads the open `COPY … TO STDOUT` as binary rows of `types`.
    pub(crate) fn type_copy_out(&mut self, types: &[Type]) -> Result<()> {
        self.core.type_copy_out(types)
    }

    /// Sends a chunk of the open `COPY … FROM STDIN`'s data.
    pub(crate) fn send_copy_data(&mut self, data: Bytes) -> Result<()> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.send_copy_data(shared, data))
    }

    /// Ends the open `COPY … FROM STDIN`: the rows copied.
    pub(crate) fn finish_copy_in(&mut self) -> Result<u64> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.finish_copy_in(shared))
    }

    /// Begins a transaction (see `SessionCore::begin`); whether a block
    /// that user SQL had opened had to be rolled back first.
    pub(crate) fn begin(&mut self, begin: Cow<'static, str>) -> bool {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on_unless_done(core.begin(shared, begin))
    }

    /// Sends `COMMIT` (see `SessionCore::commit`).
    pub(crate) fn commit(&mut self) -> Result<()> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.commit(shared))
    }

    /// Runs `pipeline` in one round trip (see `SessionCore::pipeline`);
    /// with `commit`, the transaction's `COMMIT` goes with it.
    pub(crate) fn pipeline(
        &mut self,
        pipeline: &crate::pipeline::Pipeline<'_>,
        commit: bool,
    ) -> Result<Vec<crate::pipeline::Answer>> {
        // A transaction that has sent nothing yet needs a live connection
        // (one that died while it waited is replaced: nothing of it ran).
        self.ensure_for(RequestShape::Bind)?;
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.pipeline(shared, pipeline, commit))
    }

    /// Ends the transaction without saving it (see `SessionCore::rollback`).
    pub(crate) fn rollback(&mut self) {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on_unless_done(core.rollback(shared));
    }

    /// Opens savepoint number `depth + 1` inside the transaction; returns its number.
    pub(crate) fn savepoint(&mut self) -> Result<u32> {
        self.ensure_for(RequestShape::Bind)?;
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on(core.savepoint(shared))
    }

    /// Releases savepoint `depth` (see `SessionCore::release_savepoint`).
    pub(crate) fn release_savepoint(&mut self, depth: u32) -> Result<()> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.release_savepoint(shared, depth))
    }

    /// Undoes savepoint `depth` and everything inside it, and removes it.
    pub(crate) fn rollback_to_savepoint(&mut self, depth: u32) -> Result<()> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.rollback_to_savepoint(shared, depth))
    }

    /// Rolls back savepoints deeper than `depth` that were forgotten (see
    /// `SessionCore::restore_depth`); whether there were any.
    pub(crate) fn restore_depth(&mut self, depth: u32) -> Result<bool> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on_unless_done(core.restore_depth(shared, depth))
    }

    /// Refuses transaction control (see `SessionCore::refuse_control`).
    pub(crate) fn refuse_control(&self, sql: &str) -> Result<()> {
        self.core.refuse_control(sql)
    }

    /// The vote of a two-phase commit (see `SessionCore::prepare_transaction`).
    pub(crate) fn prepare_transaction(&mut self, gid: &str) -> Result<Vote> {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.prepare_transaction(shared, gid))
    }

    /// `COMMIT PREPARED gid` (or `ROLLBACK PREPARED`): the second phase.
    /// Any session on the same database may send it, so a connection that
    /// broke is replaced first.
    pub(crate) fn finish_prepared(&mut self, gid: &str, commit: bool) -> Result<()> {
        self.core.start_finish_prepared()?;
        self.ensure_open()?;
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on(core.finish_prepared(shared, gid, commit))
    }

    /// Whether pgtx's savepoint number `depth` is still open.
    pub(crate) fn savepoint_is_open(&self, depth: u32) -> bool {
        self.core.savepoint_is_open(depth)
    }

    /// Carries out what the fallback decided (see `fallback.rs`) at the end
    /// of a hold: rolls `target` back if the verdict says so, at once (the
    /// next holder starts idle). Returns the cause to report.
    pub(crate) fn fall_back(&mut self, target: RollBackTarget, verdict: Verdict) -> Option<Cause> {
        if !verdict.roll_back {
            return None;
        }
        self.core.record_fallback(target, verdict.report);
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup
            .runtime
            .block_on_unless_done(core.settle_fallback(shared))
    }

    /// Closes the connection (if any). The next holder opens a new one.
    pub(crate) fn close(&mut self) {
        let (shared, setup, core) = (self.shared, self.setup, &mut *self.core);
        setup.runtime.block_on_unless_done(core.close(shared));
    }
}

//! The session of the async core: the connection and what is known about
//! its transaction. What is known is `track.rs`'s state machine (every
//! decision a pure transition there); this file carries the decisions out
//! on the connection.
//!
//! It never opens a connection itself: opening runs the user's hooks,
//! which belong to a front (blocking hooks to the blocking shell). Where a
//! connection is needed, the front makes sure of one before the call
//! ([`SessionCore::needs_connection_for`], [`SessionCore::keep_if_alive`])
//! or is asked for one ([`Step::Reconnect`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use postgres::error::{DbError, SqlState};
use postgres::types::Type;
use tokio_postgres::binary_copy::BinaryCopyOutRow;
use tokio_postgres::{Row, Statement};

use super::pipeline::Piped;
use super::request::{
    Batch, CopyIn, CopyOut, Describe, Opens, PrepareAll, PrepareCached, QueryRaw, Request,
    StatementKind,
};
use super::sql_text::{CachedRun, UnnamedRun};
use super::statement_cache::{STATEMENT_CACHE_SIZE, StatementCache};
use super::streaming::{Fetched, Pinnable, Streaming, WrongStream};
use super::{Connection, Target};
use crate::conn::cancel_serials::CancelCell;
use crate::connect::Severer;
use crate::connect::wire::{BeginOutcome, CopyRefused};
use crate::error::{Error, Result};
use crate::machine::control;
use crate::machine::fallback::Cause;
use crate::machine::stale::{StalePlan, StaleRun, after_stale};
use crate::machine::track::{
    CommitAnswer, CommitPlan, Machine, PreparePlan, Refusal, ReleasePlan, Reply, commit_answer,
};
use crate::machine::transaction_status::{ServerStatus, StatusCell, TransactionStatus};
use crate::pipeline::{Answer, Entry, Pipeline};
use crate::statements::{Naming, Params, Sql, ToStatement};

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

/// What the session shares with every thread or task, beside the core
/// that only the lease holder touches: readable without the lease.
#[derive(Default)]
pub(crate) struct SessionShared {
    /// The transaction status, mirrored for anyone to read.
    pub(crate) status: StatusCell,
    /// Connections opened after one was lost.
    pub(crate) replaced: AtomicU64,
    /// What cancel handles share with the statements they cancel.
    pub(crate) cancel: Arc<CancelCell>,
    /// Shuts the current connection's socket down from outside (the
    /// async front's takeover of an abandoned holder).
    severer: parking_lot::Mutex<Option<Arc<Severer>>>,
    /// The generation of the session that is current (see
    /// [`SessionCore::refuse_if_stale`]): the async front moves it on when
    /// it takes an abandoned holder's session over.
    pub(crate) generation: AtomicU64,
}

impl SessionShared {
    /// Shuts the current connection down from outside, whoever holds it:
    /// its holder's next read or write fails, and the server rolls back
    /// what was open on it.
    #[cfg(feature = "aio")]
    pub(crate) fn sever(&self) {
        if let Some(severer) = self.severer.lock().take() {
            severer.sever();
        }
    }
}

/// The connection, the state machine it drives, whether the last
/// connection was lost, and the last failure.
pub(crate) struct SessionCore {
    conn: Option<Connection>,
    machine: Machine,
    naming: Naming,
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
    /// Texts a pipeline ran lately, whose refusals were checked (they are
    /// a pure function of the text): not read again each time.
    piped_texts: StatementCache<()>,
    /// A rollback the fallback decided (see `fallback.rs`) that has not
    /// been carried out yet, and the cause to report once it is.
    fallback: Option<(RollBackTarget, Option<Cause>)>,
    /// A statement whose rows or COPY data are still being read or
    /// written (the connection holds the stream itself).
    stream: Option<OpenStream>,
    /// `COMMIT` is being sent: still set afterwards, its future was
    /// dropped (see [`SessionCore::recover_interrupted`]).
    committing: bool,
    /// A `PREPARE TRANSACTION` is being sent (its future, dropped now,
    /// leaves the gid perhaps prepared: see `recover_interrupted`).
    preparing: bool,
    /// Transactions begun on this session: which one a portal belongs to.
    begun: u64,
    /// Portals bound in the current transaction.
    portals: u32,
    /// Which of its manager's sessions this is: the async front makes a
    /// new one when it takes an abandoned holder's over, and the old one
    /// is then refused.
    generation: u64,
}

/// What the session knows of a statement that goes on over a stream's
/// calls, to follow its end as any other statement's.
struct OpenStream {
    /// A pending `BEGIN` went out with it and began the transaction.
    began: bool,
    /// Its cancel serial: a cancel request meanwhile cancels it.
    serial: u64,
    sql: Option<Box<str>>,
    /// A `COPY … FROM STDIN`: ending it unfinished fails the COPY.
    copy_in: bool,
    /// The COPY runs in a block of its own, ended at the stream's end
    /// (see [`SessionCore::copy`]).
    own_block: bool,
}

#[cfg(feature = "aio")]
/// What [`SessionCore::recover_interrupted`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interruption {
    /// The interrupted request was `COMMIT`: whether the server committed
    /// (`None`: the connection was lost, nobody can tell).
    pub(crate) commit: Option<Option<bool>>,
    /// It was a `COPY … FROM STDIN` being written: it failed, storing nothing.
    pub(crate) copy_in: bool,
}

/// What makes the server abort a transaction whose statement was
/// interrupted: an error that says so.
#[cfg(feature = "aio")]
const INTERRUPTED_STATEMENT: &str = "DO $pgtx$ BEGIN RAISE EXCEPTION USING \
     MESSAGE = 'pgtx: a statement of this transaction was interrupted (its future was dropped), \
     so the transaction can only roll back', ERRCODE = '25P02'; END $pgtx$";

/// What makes the server abort a transaction whose pipeline failed where
/// the server did not see it (a statement's parameters did not encode, or
/// its answer could not be read): the others must not be committed later.
const UNSENT_STATEMENT: &str = "DO $pgtx$ BEGIN RAISE EXCEPTION USING \
     MESSAGE = 'pgtx: a statement of this pipeline could not be sent, \
     so the transaction can only roll back', ERRCODE = '25P02'; END $pgtx$";

/// How long an interrupted request's connection may take to answer
/// before it is dropped instead (see [`SessionCore::recover_interrupted`]).
#[cfg(feature = "aio")]
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What a fallback rolls back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RollBackTarget {
    /// The whole transaction (or a block user SQL opened).
    Transaction,
    /// Only savepoint number `depth`, and what is inside it.
    Savepoint(u32),
}

static_assertions::assert_impl_all!(SessionCore: Send);

/// What a statement that may need a new connection came to.
pub(crate) enum Step<T> {
    /// It ran (or failed for good).
    Done(Result<T>),
    /// The connection's own prepared statements are gone: the front opens
    /// a new connection ([`SessionCore::install`]) and calls again with the
    /// same [`Retries`].
    Reconnect,
}

/// How many more times a cached statement may run after it met a stale
/// statement (once prepared anew, once on a new connection), carried over
/// a [`Step::Reconnect`].
pub(crate) struct Retries {
    left: u32,
    /// Whether the statement may run again (none of a transaction ran).
    may_retry: Option<bool>,
}

impl Retries {
    pub(crate) fn new() -> Retries {
        Retries {
            left: 2,
            may_retry: None,
        }
    }
}

impl SessionCore {
    pub(crate) fn new(naming: Naming) -> SessionCore {
        SessionCore {
            conn: None,
            machine: Machine::new(),
            naming,
            lost: false,
            replace: false,
            failure: None,
            fallback: None,
            stream: None,
            committing: false,
            preparing: false,
            piped_texts: StatementCache::default(),
            begun: 0,
            portals: 0,
            generation: 0,
        }
    }

    #[cfg(feature = "aio")]
    /// A new session of generation `generation` (see `generation`).
    pub(crate) fn of_generation(naming: Naming, generation: u64) -> SessionCore {
        SessionCore {
            generation,
            ..SessionCore::new(naming)
        }
    }

    /// Refuses a session that is no longer its manager's current one (its
    /// holder was taken over as abandoned): nothing it does may touch what
    /// the current session shares (status, cancel cell, socket).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`] if it is not current.
    pub(crate) fn refuse_if_stale(&self, shared: &SessionShared) -> Result<()> {
        if self.generation == shared.generation.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::LeaseRevoked)
        }
    }

    /// Records what the fallback decided when a hold ended unfinished
    /// (no I/O: callable from `Drop` anywhere); [`settle_fallback`](Self::settle_fallback)
    /// carries it out. A later decision replaces one not carried out yet
    /// only when it rolls back more.
    pub(crate) fn record_fallback(&mut self, target: RollBackTarget, report: Option<Cause>) {
        if matches!(self.fallback, Some((RollBackTarget::Transaction, _)))
            && target != RollBackTarget::Transaction
        {
            return;
        }
        self.fallback = Some((target, report));
    }

    /// Carries out the recorded fallback, if any: rolls back (a rollback
    /// never fails: when it cannot be sent the connection is dropped, and
    /// the server rolls back). Returns the cause to report.
    ///
    /// The decision is kept until the rollback is done: a future dropped
    /// meanwhile leaves it for the next use (which first recovers the
    /// interrupted `ROLLBACK`, see [`recover_interrupted`](Self::recover_interrupted)).
    pub(crate) async fn settle_fallback(&mut self, shared: &SessionShared) -> Option<Cause> {
        let (target, report) = self.fallback?;
        match target {
            RollBackTarget::Transaction => self.rollback(shared).await,
            RollBackTarget::Savepoint(depth) => {
                if let Err(e) = self.rollback_to_savepoint(shared, depth).await {
                    log::warn!("pgtx: could not roll back to an unfinished savepoint: {e}");
                }
            }
        }
        self.fallback = None;
        report
    }

    #[cfg(feature = "aio")]
    /// Whether a fallback was recorded and not carried out yet.
    pub(crate) fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    /// How SQL text runs on this session's connections.
    pub(crate) fn naming(&self) -> Naming {
        self.naming
    }

    /// Whether the last connection was lost, so that the next one ends an outage.
    pub(crate) fn was_lost(&self) -> bool {
        self.lost
    }

    /// Whether there is a connection (it may have died since).
    pub(crate) fn has_connection(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection, if it must be replaced now (see `replace`, and
    /// [`Connection::refuses_writes`]): taken out for the front to close.
    /// Only when nothing of a transaction reached the server.
    pub(crate) fn take_if_replaced(&mut self, shared: &SessionShared) -> Option<Connection> {
        let refuses_writes = self.conn.as_ref().is_some_and(Connection::refuses_writes);
        if !std::mem::take(&mut self.replace) && !refuses_writes {
            return None;
        }
        let conn = self.conn.take()?;
        shared.cancel.disconnected();
        if refuses_writes {
            // A failover demoted the server, or a pooler or address now
            // leads to a standby: the writable server is elsewhere. The
            // next connection looks for it, and ends an outage.
            self.lost = true;
        }
        Some(conn)
    }

    /// Before [`take_if_replaced`](Self::take_if_replaced): a connection
    /// that may have found itself on a server that no longer takes writes
    /// asks the server (see `Connection::confirm_writable`). Only when
    /// nothing of a transaction reached the server.
    pub(crate) async fn confirm_writable(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && conn.writes_in_doubt()
        {
            conn.confirm_writable().await;
        }
    }

    /// Whether [`confirm_writable`](Self::confirm_writable) has a question
    /// to ask (a blocking front enters its runtime only then).
    pub(crate) fn writes_in_doubt(&self) -> bool {
        self.conn.as_ref().is_some_and(Connection::writes_in_doubt)
    }

    /// Whether the connection answered so recently that it needs no check
    /// ([`keep_if_alive`](Self::keep_if_alive) would say yes at once).
    pub(crate) fn answered_recently(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|conn| conn.answered_within(RECHECK_AFTER))
    }

    /// Whether the connection is alive, without a round trip (see
    /// [`Connection::is_alive`]); a dead one is dropped, and the next one
    /// opened ends an outage.
    pub(crate) async fn keep_if_alive(&mut self, shared: &SessionShared) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if conn.answered_within(RECHECK_AFTER) || conn.is_alive().await {
            return true;
        }
        match conn.take_end_cause() {
            Some(cause) => {
                log::info!("pgtx: connection closed while idle ({cause}); reconnecting")
            }
            None => log::info!("pgtx: connection closed while idle; reconnecting"),
        }
        self.lose_connection(shared);
        false
    }

    /// Takes a connection just opened (on the runtime that will drive it).
    pub(crate) fn install(&mut self, shared: &SessionShared, conn: Connection) {
        if self.lost {
            shared.replaced.fetch_add(1, Ordering::Relaxed);
        }
        *shared.severer.lock() = Some(Arc::clone(conn.severer()));
        let mut conn = conn;
        conn.report_activity_to(&shared.cancel);
        self.conn = Some(conn);
        self.lost = false;
        self.publish(shared);
    }

    /// No connection could be opened: the status says so.
    pub(crate) fn open_failed(&mut self, shared: &SessionShared) {
        shared.status.set(TransactionStatus::Closed);
    }

    /// No connection could be opened for a transaction's first statement:
    /// nothing of it reached the server, and it is lost.
    pub(crate) fn lose_pending(&mut self, shared: &SessionShared) {
        self.machine.lose();
        self.publish(shared);
    }

    /// The last error the server reported in the current (or last)
    /// transaction, taken.
    pub(crate) fn take_failure(&mut self) -> Option<Box<DbError>> {
        self.failure.take()
    }

    /// Whether a transaction block is (or was, before the connection broke)
    /// open, pgtx's or one that user SQL opened.
    pub(crate) fn in_transaction(&self) -> bool {
        self.machine.in_transaction()
    }

    /// Whether a request of `shape` must first make sure of a live
    /// connection: it carries a pending `BEGIN` (see `Track::Pending`), and
    /// a connection that died while the transaction waited is replaced,
    /// since nothing of it reached the server.
    pub(crate) fn needs_connection_for(&self, shape: RequestShape) -> bool {
        shape != RequestShape::Parse && self.machine.is_pending()
    }

    /// Runs one request, keeping the transaction status exact; a pending
    /// `BEGIN` goes out with it (or before it, see [`RequestShape`]).
    /// `sql`: the statement's text, for an error that names it (`None`
    /// for a prepared statement). The front made sure of a connection
    /// first when [`needs_connection_for`](Self::needs_connection_for) said so.
    pub(crate) async fn statement<R: Request>(
        &mut self,
        shared: &SessionShared,
        shape: RequestShape,
        sql: Option<&str>,
        request: &R,
    ) -> Result<R::Output> {
        self.refuse_if_stale(shared)?;
        let server = self.server_status();
        let pending = self
            .machine
            .before_statement(shape != RequestShape::Parse, server)
            .map_err(refused)?;
        let Some(conn) = self.conn.as_mut() else {
            if pending.is_some() {
                self.lose_pending(shared);
            }
            return Err(Error::ConnectionLost(None));
        };
        let serial = shared.cancel.start(conn.cancel_target()).await;
        shared.status.set(TransactionStatus::Active);
        // Only this request's COPY counts (an on_connect hook's was its own).
        conn.take_copy_refused();
        let mut began = false;
        let result = match (&pending, shape) {
            (Some(begin), RequestShape::Bind) => {
                conn.arm_begin(begin);
                let result = request.send(conn).await;
                began = conn.begin_outcome() == BeginOutcome::Began;
                result
            }
            // A simple Query cannot share BEGIN's Sync group: BEGIN first, alone.
            (Some(begin), _) => match Batch(begin).send(conn).await {
                Ok(()) => {
                    began = true;
                    request.send(conn).await
                }
                Err(e) => Err(e),
            },
            (None, _) => request.send(conn).await,
        };
        if R::OPENS != Opens::Nothing && result.is_ok() {
            // The statement goes on over the stream's calls; what the
            // server says at its end is followed then (`end_of_stream`).
            self.stream = Some(OpenStream {
                began,
                serial,
                sql: sql.map(Box::from),
                copy_in: false,
                own_block: false,
            });
            return result.map_err(Error::Db);
        }
        self.after_request(shared, result, began, serial, sql)
    }

    /// Follows what the server said to a request (or to a stream, at its
    /// end): its error, the transaction status, a COPY that a statement
    /// method met, a cancel.
    fn after_request<T>(
        &mut self,
        shared: &SessionShared,
        result: std::result::Result<T, postgres::Error>,
        began: bool,
        serial: u64,
        sql: Option<&str>,
    ) -> Result<T> {
        let cancelled = shared.cancel.finish(serial);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::ConnectionLost(result.err()));
        };
        let copy = conn.take_copy_refused();
        let result = match conn.outcome(result) {
            lost @ Err(Error::ConnectionLost(_)) => lost,
            _ if let Some(copy) = copy => {
                Err(Error::copy_refused(copy == CopyRefused::FromClient, sql))
            }
            Err(Error::Db(e)) if cancelled && e.code() == Some(&SqlState::QUERY_CANCELED) => {
                Err(Error::Cancelled(e))
            }
            other => other,
        };
        let reply = self.reply(shared, &result, began);
        self.machine.after_statement(reply);
        if let Some(e) = result.as_ref().err().and_then(Error::as_db_error)
            && self.machine.in_transaction()
        {
            self.failure = Some(Box::new(e.clone()));
        }
        self.publish(shared);
        result
    }

    /// Runs one statement given as SQL text or a prepared statement, with
    /// `params` parameters. Text is prepared once per connection (see
    /// `Connection::prepare_cached`).
    ///
    /// A cached statement can go stale where freshly prepared text would not:
    /// a table's columns changed ("cached plan must not change result type")
    /// or the user deallocated it. Then the cache is emptied, and, outside a
    /// transaction, the statement is prepared again and retried once (the
    /// server ran nothing). As a transaction's first statement, its `BEGIN`
    /// ran in the same Sync group and nothing else did: the block is rolled
    /// back, begun again and the statement retried once. Later inside a
    /// transaction the error has aborted it, as any statement error does.
    /// When tokio-postgres' own statements are gone, a new connection is
    /// needed: [`Step::Reconnect`] asks the front for one.
    ///
    /// With [`Naming::Unnamed`], text runs on the unnamed statement (see
    /// [`SessionCore::unnamed_statement`]).
    pub(crate) async fn cached_statement<Q, K>(
        &mut self,
        shared: &SessionShared,
        query: &Q,
        kind: K,
        params: Params<'_>,
        retries: &mut Retries,
    ) -> Step<K::Output>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        let sql = match query.sql() {
            Sql::Prepared(statement) => {
                let bound = super::request::Bound {
                    kind,
                    target: Target::Prepared(statement),
                    params,
                };
                return Step::Done(
                    self.statement(shared, RequestShape::Bind, None, &bound)
                        .await,
                );
            }
            Sql::Text(sql) => sql,
        };
        if self.naming == Naming::Unnamed || control::shape_decided_at_run_time(sql).is_some() {
            // A cached description of such text could decode a later
            // shape's bytes as the old columns' types: describe it each time.
            return Step::Done(self.unnamed_statement(shared, sql, kind, params).await);
        }
        let may_retry = *retries.may_retry.get_or_insert(!self.in_transaction());
        let first_of_transaction = self.machine.pending_begin();
        let run = CachedRun {
            sql,
            kind,
            params,
            may_retry,
            stale: AtomicBool::new(false),
            internals_gone: AtomicBool::new(false),
        };
        let mut outcome = self
            .statement(shared, RequestShape::Bind, Some(sql), &run)
            .await;
        while let Err(Error::Db(e)) = &outcome {
            let run_was = StaleRun {
                stale: run.stale.load(Ordering::Relaxed),
                internals_gone: run.internals_gone.load(Ordering::Relaxed),
                first_of_transaction: first_of_transaction.is_some(),
                in_transaction: self.in_transaction(),
            };
            let (begin_again, new_connection) = match after_stale(run_was, retries.left) {
                StalePlan::Stop { replace_after } => {
                    self.replace |= replace_after;
                    break;
                }
                StalePlan::Again {
                    begin_again,
                    new_connection,
                } => (begin_again, new_connection),
            };
            retries.left -= 1;
            if let Some(begin) = first_of_transaction.as_ref().filter(|_| begin_again) {
                log::debug!("pgtx: first statement was stale ({e}); beginning again");
                self.rollback(shared).await;
                self.begin(shared, begin.clone()).await;
            }
            if new_connection {
                log::info!(
                    "pgtx: the connection's own prepared statements are gone (DISCARD ALL or \
                     DEALLOCATE ALL); replacing the connection"
                );
                // Nothing of a transaction reached the server (see
                // `after_stale`): the front opens a new connection and
                // calls again.
                if let Some(conn) = self.conn.take() {
                    conn.close().await;
                }
                self.lost = false;
                self.replace = false;
                shared.cancel.disconnected();
                self.publish(shared);
                return Step::Reconnect;
            }
            outcome = self
                .statement(shared, RequestShape::Bind, Some(sql), &run)
                .await;
        }
        Step::Done(outcome)
    }

    /// Runs SQL text on the unnamed statement, with `params` parameters:
    /// their types are looked up once per connection
    /// (`Connection::describe`; not at all when there are none).
    ///
    /// Remembered types can go stale (a column changed type). When the
    /// error says they may have (see `sql_text::may_be_stale_types`), they are
    /// looked up again, and if they changed the statement runs again, once.
    async fn unnamed_statement<K: StatementKind>(
        &mut self,
        shared: &SessionShared,
        sql: &str,
        kind: K,
        params: Params<'_>,
    ) -> Result<K::Output> {
        let run = UnnamedRun {
            sql,
            kind,
            params,
            may_retry: !self.in_transaction(),
        };
        self.statement(shared, RequestShape::Bind, Some(sql), &run)
            .await
    }

    /// Starts `query` (text or a prepared statement) with `params` and
    /// keeps its rows as a stream, read with [`next_row`](Self::next_row)
    /// (see [`cached_statement`](Self::cached_statement) for the rest).
    pub(crate) async fn query_raw<Q: ?Sized + ToStatement>(
        &mut self,
        shared: &SessionShared,
        query: &Q,
        params: Params<'_>,
        retries: &mut Retries,
    ) -> Step<()> {
        match self
            .cached_statement(shared, query, QueryRaw, params, retries)
            .await
        {
            Step::Done(Ok(rows)) => {
                self.open_stream(Streaming::Rows(Pinnable::new(rows)));
                Step::Done(Ok(()))
            }
            Step::Done(Err(e)) => Step::Done(Err(e)),
            Step::Reconnect => Step::Reconnect,
        }
    }

    /// Starts `COPY … FROM STDIN` (`copy_in`) or `COPY … TO STDOUT`, and
    /// keeps its data as a stream (see `streaming.rs`).
    ///
    /// tokio-postgres runs COPY only as a statement prepared under a name
    /// (a Sync group of its own, before the one that runs it). Through a
    /// transaction pooler, outside a transaction block, each group may go
    /// to another server connection, where the name does not exist. So
    /// with [`Naming::Unnamed`] outside a block, the COPY runs in a block
    /// of its own: `BEGIN` goes in front of the Parse, and at the end of
    /// the COPY `COMMIT` (or `ROLLBACK`, when it failed) follows, as
    /// autocommit would have done; the result the caller gets is
    /// `COMMIT`'s when it fails (such as [`Error::CommitOutcomeUnknown`]).
    pub(crate) async fn copy<Q: ?Sized + ToStatement>(
        &mut self,
        shared: &SessionShared,
        query: &Q,
        copy_in: bool,
        retries: &mut Retries,
    ) -> Step<()> {
        let own_block = self.naming == Naming::Unnamed && !self.in_transaction();
        if own_block && let Some(conn) = self.conn.as_mut() {
            conn.arm_begin("BEGIN");
        }
        let stream = self.start_copy(shared, query, copy_in, retries).await;
        if own_block && let Some(conn) = self.conn.as_mut() {
            // Disarms a BEGIN that did not go out.
            conn.begin_outcome();
        }
        match stream {
            Step::Done(Ok(())) => {
                if let Some(open) = self.stream.as_mut() {
                    open.own_block = own_block;
                }
                Step::Done(Ok(()))
            }
            Step::Done(Err(e)) => {
                if own_block {
                    // A failed COPY leaves nothing to commit: this rolls back.
                    let _ = self.end_own_block(shared, false).await;
                }
                Step::Done(Err(e))
            }
            Step::Reconnect => Step::Reconnect,
        }
    }

    /// Ends the block a COPY ran in (see [`copy`](Self::copy)): commits
    /// it if the COPY succeeded (`ok`) and the server says the block is
    /// fine, rolls it back otherwise.
    async fn end_own_block(&mut self, shared: &SessionShared, ok: bool) -> Result<()> {
        if !self.in_transaction() {
            return Ok(());
        }
        if ok && self.server_status() == Some(ServerStatus::InTransaction) {
            self.commit(shared).await
        } else {
            self.rollback(shared).await;
            Ok(())
        }
    }

    async fn start_copy<Q: ?Sized + ToStatement>(
        &mut self,
        shared: &SessionShared,
        query: &Q,
        copy_in: bool,
        retries: &mut Retries,
    ) -> Step<()> {
        let stream = if copy_in {
            match self
                .cached_statement(shared, query, CopyIn, &[], retries)
                .await
            {
                Step::Done(Ok(sink)) => Step::Done(Ok(Streaming::CopyIn(Pinnable::new(sink)))),
                Step::Done(Err(e)) => Step::Done(Err(e)),
                Step::Reconnect => Step::Reconnect,
            }
        } else {
            match self
                .cached_statement(shared, query, CopyOut, &[], retries)
                .await
            {
                Step::Done(Ok(data)) => Step::Done(Ok(Streaming::CopyOut(Pinnable::new(data)))),
                Step::Done(Err(e)) => Step::Done(Err(e)),
                Step::Reconnect => Step::Reconnect,
            }
        };
        match stream {
            Step::Done(Ok(stream)) => {
                self.open_stream(stream);
                Step::Done(Ok(()))
            }
            Step::Done(Err(e)) => Step::Done(Err(e)),
            Step::Reconnect => Step::Reconnect,
        }
    }

    fn open_stream(&mut self, stream: Streaming) {
        let copy_in = matches!(stream, Streaming::CopyIn(_));
        if let Some(open) = self.stream.as_mut() {
            open.copy_in = copy_in;
        }
        match self.conn.as_mut() {
            Some(conn) => conn.open_stream(stream),
            None => self.stream = None,
        }
    }

    /// Whether a stream is open: only its own calls may use the
    /// connection until it ends ([`end_stream`](Self::end_stream)).
    pub(crate) fn has_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Ends a stream that its handle left open (dropped or forgotten, or
    /// dropped with its future): a reader's rest is read and dropped, an
    /// unfinished `COPY … FROM STDIN` fails, so nothing of it is stored
    /// (inside a transaction, the transaction is then aborted, as after
    /// any failed statement). Returns the cause to report for the COPY.
    pub(crate) async fn end_stream(&mut self, shared: &SessionShared) -> Option<Cause> {
        let open = self.stream.as_ref()?;
        let copy_in = open.copy_in;
        let ended = match self.conn.as_mut() {
            Some(conn) => conn.end_stream().await,
            None => Ok(()),
        };
        // The COPY's own error went with its sink; the server's status
        // (a failed block) says the rest.
        let _ = self.end_of_stream(shared, ended).await;
        copy_in.then_some(Cause::CopyUnfinished)
    }

    /// Follows the end of the open stream as the end of its statement.
    async fn end_of_stream<T>(
        &mut self,
        shared: &SessionShared,
        result: std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let Some(open) = self.stream.take() else {
            return result.map_err(Error::Db);
        };
        let result =
            self.after_request(shared, result, open.began, open.serial, open.sql.as_deref());
        if open.own_block {
            let ended = self.end_own_block(shared, result.is_ok()).await;
            return result.and_then(|value| ended.map(|()| value));
        }
        result
    }

    /// What a read of the stream came to, for the caller: at the end of
    /// the stream (or on its error), the statement's end is followed.
    async fn stream_read(
        &mut self,
        shared: &SessionShared,
        read: std::result::Result<Fetched, postgres::Error>,
    ) -> Result<Fetched> {
        match read {
            Ok(Fetched::More) => Ok(Fetched::More),
            Ok(end) => self.end_of_stream(shared, Ok(end)).await,
            Err(e) => self.end_of_stream(shared, Err(e)).await,
        }
    }

    /// The rows of the stream begun by [`query_raw`](Self::query_raw)
    /// that have arrived, appended to `out` (see `Connection::next_rows`).
    pub(crate) async fn next_rows(
        &mut self,
        shared: &SessionShared,
        out: &mut VecDeque<Row>,
    ) -> Result<Fetched> {
        self.refuse_if_stale(shared)?;
        let read = match self.conn.as_mut() {
            Some(conn) => conn.next_rows(out).await,
            None => Ok(Fetched::End(None)),
        };
        self.stream_read(shared, read).await
    }

    /// The `COPY … TO STDOUT` data that has arrived, appended to `out`.
    pub(crate) async fn next_copy_data(
        &mut self,
        shared: &SessionShared,
        out: &mut BytesMut,
    ) -> Result<Fetched> {
        self.refuse_if_stale(shared)?;
        let read = match self.conn.as_mut() {
            Some(conn) => conn.next_copy_data(out).await,
            None => Ok(Fetched::End(None)),
        };
        self.stream_read(shared, read).await
    }

    /// The rows of a binary `COPY … TO STDOUT` that have arrived,
    /// appended to `out`.
    pub(crate) async fn next_binary_rows(
        &mut self,
        shared: &SessionShared,
        out: &mut VecDeque<BinaryCopyOutRow>,
    ) -> Result<Fetched> {
        self.refuse_if_stale(shared)?;
        let read = match self.conn.as_mut() {
            Some(conn) => conn.next_binary_rows(out).await,
            None => Ok(Fetched::End(None)),
        };
        self.stream_read(shared, read).await
    }

    /// Reads the open `COPY … TO STDOUT` as binary rows of `types`.
    pub(crate) fn type_copy_out(&mut self, types: &[Type]) -> Result<()> {
        let typed = match self.conn.as_mut() {
            Some(conn) => conn.type_copy_out(types),
            None => Ok(()),
        };
        typed.map_err(|WrongStream| Error::CopyAlreadyUsed)
    }

    /// Sends a chunk of `COPY … FROM STDIN` data; a failure ends the COPY.
    pub(crate) async fn send_copy_data(
        &mut self,
        shared: &SessionShared,
        data: Bytes,
    ) -> Result<()> {
        self.refuse_if_stale(shared)?;
        if self.stream.is_none() {
            return Err(Error::StreamEnded);
        }
        let sent = match self.conn.as_mut() {
            Some(conn) => conn.send_copy_data(data).await,
            None => Ok(()),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.end_of_stream(shared, Err(e)).await,
        }
    }

    /// Ends a `COPY … FROM STDIN`: the number of rows copied, or the
    /// server's error (a bad row), the transaction then aborted.
    pub(crate) async fn finish_copy_in(&mut self, shared: &SessionShared) -> Result<u64> {
        self.refuse_if_stale(shared)?;
        if self.stream.is_none() {
            return Err(Error::StreamEnded);
        }
        let finished = match self.conn.as_mut() {
            Some(conn) => conn.finish_copy_in().await,
            None => Ok(0),
        };
        self.end_of_stream(shared, finished).await
    }

    /// Begins a transaction: nothing is sent until its first statement
    /// (see `track.rs`'s `Track::Pending`). Returns whether a transaction
    /// block that user SQL had opened had to be rolled back first (the
    /// caller reports it).
    pub(crate) async fn begin(&mut self, shared: &SessionShared, begin: Cow<'static, str>) -> bool {
        let rolled_back = self.in_transaction();
        if rolled_back {
            self.rollback(shared).await;
        }
        self.machine.begin(begin);
        self.failure = None;
        self.begun += 1;
        self.portals = 0;
        self.publish(shared);
        rolled_back
    }

    /// The transaction (its number on this session) a portal bound now
    /// belongs to, and the portal's number in it.
    pub(crate) fn next_portal(&mut self) -> (u64, u32) {
        self.portals += 1;
        (self.begun, self.portals)
    }

    /// The number of the current (or last) transaction on this session.
    pub(crate) fn transaction_number(&self) -> u64 {
        self.begun
    }

    /// Runs `pipeline` inside the open transaction in one round trip (see
    /// `conn/pipeline.rs`); with `commit`, its `COMMIT` goes in the same
    /// write, and the transaction is over whatever the outcome.
    ///
    /// Statements refused before anything is sent (transaction control,
    /// what cannot run in a block, `COPY`) and text whose preparation fails
    /// come back as [`Error::PipelineFailed`] too; the statements are
    /// prepared (or described) first, each once per connection, so the
    /// round trip is one from the second run on.
    ///
    /// A cached statement gone stale (its table's columns changed, or it
    /// was deallocated) fails the pipeline; when the pipeline was the whole
    /// transaction (`commit`, nothing sent before it), nothing of it ran,
    /// so it runs once more, prepared afresh, as a lone statement would.
    pub(crate) async fn pipeline(
        &mut self,
        shared: &SessionShared,
        pipeline: &Pipeline<'_>,
        commit: bool,
    ) -> Result<Vec<Answer>> {
        let whole = self.machine.pending_begin().filter(|_| commit);
        let first = self.pipeline_once(shared, pipeline, commit).await;
        // A statement's own stale error (a committed pipeline never fails
        // with `PipelineFailed`).
        let went_stale = matches!(
            &first,
            Err(Error::PipelineFailed { source, .. })
                if matches!(&**source, Error::Db(e) if super::sql_text::is_stale(e))
        );
        match whole {
            Some(begin) if went_stale && !self.machine.in_transaction() => {
                log::debug!("pgtx: a pipeline met a stale statement; beginning again");
                self.begin(shared, begin).await;
                self.pipeline_once(shared, pipeline, commit).await
            }
            _ => first,
        }
    }

    /// Prepares the texts of `entries` that this connection has not
    /// prepared, when there are several, together: one round trip for all
    /// (one alone is left to the caller). It stops at the first text that
    /// is described instead (`CALL`, `EXECUTE`, `FETCH`: their turn comes
    /// in order) and at the cache's size. The error names the first entry
    /// whose text failed (in a block, the ones after it fail with it, and
    /// stay unprepared).
    async fn prepare_together(
        &mut self,
        shared: &SessionShared,
        entries: &[Entry<'_>],
    ) -> std::result::Result<(), (usize, Error)> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        let (mut new, mut seen) = (Vec::new(), std::collections::HashSet::new());
        for sql in entries.iter().filter_map(Entry::text) {
            // Up to the first text that is described rather than prepared
            // (so that an error is still the first statement's in order),
            // and no more than the cache holds: the rest are prepared one by
            // one.
            if new.len() == STATEMENT_CACHE_SIZE
                || control::shape_decided_at_run_time(sql).is_some()
            {
                break;
            }
            if !conn.has_statement(sql) && seen.insert(sql) {
                new.push(sql);
            }
        }
        if new.len() < 2 {
            return Ok(());
        }
        let first_with = |sql: &str| {
            entries
                .iter()
                .position(|entry| entry.text() == Some(sql))
                .unwrap_or_default()
        };
        let prepared = self
            .statement(shared, RequestShape::Parse, None, &PrepareAll(&new))
            .await;
        prepared.map_err(|e| {
            // The text refused is the first left unprepared (each one
            // accepted is cached); none when the connection broke.
            let refused = self
                .conn
                .as_ref()
                .and_then(|conn| new.iter().copied().find(|sql| !conn.has_statement(sql)));
            (first_with(refused.unwrap_or(new[0])), e)
        })
    }

    async fn pipeline_once(
        &mut self,
        shared: &SessionShared,
        pipeline: &Pipeline<'_>,
        commit: bool,
    ) -> Result<Vec<Answer>> {
        self.refuse_if_stale(shared)?;
        if pipeline.entries.is_empty() {
            // Nothing to send with it: a plain COMMIT, or nothing at all.
            return match commit {
                true => self.commit(shared).await.map(|()| Vec::new()),
                false => Ok(Vec::new()),
            };
        }
        let count = pipeline.entries.len();
        let failed = |index: usize, source: Error| Error::PipelineFailed {
            index,
            skipped: count - index - 1,
            source: Box::new(source),
        };
        // 1. Refusals, before anything is sent.
        for (index, entry) in pipeline.entries.iter().enumerate() {
            let Some(sql) = entry.text() else { continue };
            if self.reads_utf8() && self.piped_texts.get(sql).is_some() {
                continue;
            }
            let refusal = match self.refuse_control(sql) {
                Err(e) => Some(e),
                Ok(()) => control::outside_transaction_only(sql).map(Error::NotInPipeline),
            };
            if let Some(refusal) = refusal {
                if commit {
                    self.rollback(shared).await;
                }
                return Err(failed(index, refusal));
            }
            self.piped_texts.insert(sql, ());
        }
        // 2. Text prepared (or its parameter types looked up), once per
        //    connection. At the first text to prepare, it and the new texts
        //    after it are prepared together, in one round trip (see
        //    `prepare_together`).
        let mut together = false;
        let mut statements: Vec<Option<Statement>> = Vec::with_capacity(count);
        // `None` stands for no parameter types (no allocation per entry).
        let mut types: Vec<Option<Arc<[Type]>>> = Vec::with_capacity(count);
        for (index, entry) in pipeline.entries.iter().enumerate() {
            let (mut statement, mut described) = (None, None);
            let known = match (entry.text(), self.conn.as_mut()) {
                (Some(sql), Some(conn)) => match self.naming {
                    Naming::Cached => conn.cached_statement(sql).map(Ok),
                    Naming::Unnamed => conn.cached_description(sql).map(Err),
                },
                _ => None,
            };
            match known {
                // Prepared (or described) on this connection already.
                Some(Ok(prepared)) => statement = Some(prepared),
                Some(Err(types)) => described = Some(types),
                None => {}
            }
            if let (Some(sql), None) = (entry.text(), &statement)
                && described.as_deref().is_none_or(<[Type]>::is_empty)
            {
                let prepared = if self.naming == Naming::Cached
                    && control::shape_decided_at_run_time(sql).is_none()
                {
                    if !std::mem::replace(&mut together, true)
                        && let Err((later, e)) = self
                            .prepare_together(shared, &pipeline.entries[index..])
                            .await
                    {
                        if commit {
                            self.rollback(shared).await;
                        }
                        return Err(failed(index + later, e));
                    }
                    match self
                        .conn
                        .as_mut()
                        .and_then(|conn| conn.cached_statement(sql))
                    {
                        Some(prepared) => {
                            statement = Some(prepared);
                            Ok(())
                        }
                        None => self
                            .statement(shared, RequestShape::Parse, Some(sql), &PrepareCached(sql))
                            .await
                            .map(|prepared| statement = Some(prepared)),
                    }
                } else if entry.params.is_empty() {
                    Ok(())
                } else {
                    self.statement(shared, RequestShape::Parse, Some(sql), &Describe(sql))
                        .await
                        .map(|types| described = Some(types))
                };
                if let Err(e) = prepared {
                    if commit {
                        self.rollback(shared).await;
                    }
                    return Err(failed(index, e));
                }
            }
            statements.push(statement);
            types.push(described);
        }
        let steps: Vec<Piped<'_>> = pipeline
            .entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let target = match (entry.prepared(), &statements[index], entry.text()) {
                    (Some(prepared), _, _) => Target::Prepared(prepared),
                    (None, Some(prepared), _) => Target::Prepared(prepared),
                    (None, None, sql) => Target::Unnamed(
                        sql.unwrap_or_default(),
                        types[index].as_deref().unwrap_or_default(),
                    ),
                };
                Piped {
                    target,
                    params: &entry.params,
                    rows: entry.rows,
                }
            })
            .collect();
        // 3. The pipeline, `BEGIN` (if still pending) in its Sync group.
        let server = self.server_status();
        let pending = match self.machine.before_statement(true, server) {
            Ok(pending) => pending,
            Err(refusal) => {
                if commit {
                    // The transaction is over whatever the error.
                    self.rollback(shared).await;
                }
                return Err(refused(refusal));
            }
        };
        let Some(conn) = self.conn.as_mut() else {
            if pending.is_some() {
                self.lose_pending(shared);
            }
            if commit {
                self.discard(shared);
            }
            return Err(Error::ConnectionLost(None));
        };
        if commit && !conn.answered_within(RECHECK_AFTER) && !conn.is_alive().await {
            // The server closed the connection before anything was
            // written: it rolled back, and nothing is in doubt.
            let cause = conn.take_end_cause();
            self.discard(shared);
            return Err(Error::ConnectionLost(cause));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::ConnectionLost(None));
        };
        if let Some(begin) = &pending {
            conn.arm_begin(begin);
        }
        let serial = shared.cancel.start(conn.cancel_target()).await;
        shared.status.set(TransactionStatus::Active);
        // Once it is written, a COMMIT whose answer is lost is of unknown
        // outcome (see `recover_interrupted` for a dropped future).
        self.committing = commit;
        let sent = conn.pipeline(&steps, commit).await;
        self.committing = false;
        let began = pending.is_some() && conn.begin_outcome() == BeginOutcome::Began;
        let cancelled = shared.cancel.finish(serial);
        // 4. What the server said.
        let (answers, end, unsent) = match sent {
            Ok(sent) => (sent.answers, sent.end, sent.unsent),
            Err(e) => (Vec::new(), Some(Err(e)), false),
        };
        let lost = conn.has_ended() || answers.len() < count;
        let first_failure = answers.iter().position(Result::is_err);
        let mut results = Vec::with_capacity(count);
        let mut failure = None;
        for (index, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(answer) => results.push(answer),
                Err(e) if Some(index) == first_failure => {
                    if super::sql_text::is_stale(&e) {
                        // A cached statement no longer fits its tables (or
                        // is gone): prepared again next time.
                        conn.forget_statements();
                    }
                    let e = match conn.outcome(Err::<(), _>(e)) {
                        Err(Error::Db(e))
                            if cancelled && e.code() == Some(&SqlState::QUERY_CANCELED) =>
                        {
                            Error::Cancelled(e)
                        }
                        Err(e) => e,
                        Ok(()) => Error::ConnectionLost(None),
                    };
                    failure = Some((index, e));
                }
                Err(_skipped) => {}
            }
        }
        if lost {
            // The server's own error for a statement means it skipped the
            // COMMIT; a COMMIT not sent cannot have committed.
            let server_refused = failure
                .as_ref()
                .is_some_and(|(_, e)| e.as_db_error().is_some());
            if commit {
                // The transaction is over: nothing of it is left here.
                self.discard(shared);
                if !unsent && !server_refused {
                    self.failure = None;
                    shared.status.set(TransactionStatus::Unknown);
                    return Err(Error::CommitOutcomeUnknown(None));
                }
            } else {
                self.machine.after_statement(Reply::Lost);
                self.lose_connection(shared);
                self.publish(shared);
            }
            return Err(match failure {
                Some((index, e)) => failed(index, e),
                None => Error::ConnectionLost(None),
            });
        }
        if commit
            && let Some(Ok(())) = &end
            && commit_answer(&conn.last_command_tag(), conn.server_status())
                == CommitAnswer::Committed
        {
            // The server committed (every statement ran): whatever failed
            // after that failed reading an answer, not the transaction.
            self.machine.reset();
            self.failure = None;
            self.publish(shared);
            return match failure {
                None => Ok(results),
                Some((index, e)) => Err(Error::PipelineResultsLost {
                    index,
                    source: Box::new(e),
                }),
            };
        }
        let db_error = failure.as_ref().and_then(|(_, e)| e.as_db_error()).cloned();
        self.machine.after_statement(Reply::Answered {
            began,
            server: if failure.is_some() {
                ServerStatus::Failed
            } else {
                ServerStatus::InTransaction
            },
            error: db_error.as_ref(),
        });
        if let Some(e) = db_error {
            self.failure = Some(Box::new(e));
        }
        if !commit {
            if failure.is_some() && self.server_status() == Some(ServerStatus::InTransaction) {
                // A statement failed where the server did not see it (its
                // parameters did not encode, its answer could not be read):
                // the others ran, and the transaction must not commit them.
                let aborted = self
                    .statement(shared, RequestShape::Query, None, &Batch(UNSENT_STATEMENT))
                    .await;
                if let Err(e) = aborted {
                    log::debug!("pgtx: the transaction is now aborted: {e}");
                }
            }
            self.publish(shared);
            return match failure {
                Some((index, e)) => Err(failed(index, e)),
                None => Ok(results),
            };
        }
        let end = end.unwrap_or(Ok(()));
        match (self.machine.commit(), failure) {
            (CommitPlan::Send, None) => {
                self.committed(shared, end).await?;
                Ok(results)
            }
            (plan, failure) => {
                // A statement failed: the server skipped the COMMIT with
                // the rest of the group (or it was not sent), and the
                // block it left is rolled back.
                if matches!(plan, CommitPlan::Send | CommitPlan::RollBack(_)) {
                    self.rollback(shared).await;
                }
                self.publish(shared);
                Err(match failure {
                    Some((index, e)) => failed(index, e),
                    None => Error::TransactionAborted(None),
                })
            }
        }
    }

    /// Sends `COMMIT`, and says truthfully whether the server committed.
    ///
    /// On `Err` the transaction is over either way (rolled back, or of unknown
    /// outcome when the connection broke during `COMMIT`).
    pub(crate) async fn commit(&mut self, shared: &SessionShared) -> Result<()> {
        self.refuse_if_stale(shared)?;
        match self.machine.commit() {
            CommitPlan::Nothing => {
                self.publish(shared);
                Ok(())
            }
            CommitPlan::Lost => {
                self.publish(shared);
                Err(Error::ConnectionLost(None))
            }
            CommitPlan::Escaped => {
                self.publish(shared);
                Err(escaped())
            }
            CommitPlan::RollBack(first) => {
                self.rollback(shared).await;
                Err(Error::TransactionAborted(first))
            }
            CommitPlan::Send => self.send_commit(shared).await,
        }
    }

    async fn send_commit(&mut self, shared: &SessionShared) -> Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            self.publish(shared);
            return Err(Error::ConnectionLost(None));
        };
        if !conn.answered_within(RECHECK_AFTER) && !conn.is_alive().await {
            // The server closed the connection before COMMIT was written:
            // it rolled back, and nothing is in doubt.
            let cause = conn.take_end_cause();
            self.discard(shared);
            return Err(Error::ConnectionLost(cause));
        }
        // A cancel request on its way (for the statement before) must not
        // land on COMMIT: COMMIT is never cancelled.
        shared.cancel.until_sent().await;
        shared.status.set(TransactionStatus::Active);
        // As a simple Query, never a named statement: SQL can redefine a
        // name behind the tap's back (see wire.rs), and a COMMIT that runs
        // something else would be reported as done. Once it is written, a
        // broken connection leaves its outcome unknown.
        self.committing = true;
        let sent = Batch("COMMIT").send(conn).await;
        self.committing = false;
        self.committed(shared, sent).await
    }

    #[cfg(feature = "aio")]
    /// Whether a request's future was dropped before its answer was read
    /// (see [`recover_interrupted`](Self::recover_interrupted)).
    pub(crate) fn was_interrupted(&self) -> bool {
        self.conn.as_ref().is_some_and(Connection::was_interrupted)
    }

    #[cfg(feature = "aio")]
    /// Whether a `COMMIT` is being sent (its future, dropped now, leaves
    /// its outcome to the recovery, which reports what the server did).
    pub(crate) fn is_committing(&self) -> bool {
        self.committing
    }

    #[cfg(feature = "aio")]
    /// Makes the connection usable again after a request's future was
    /// dropped before its answer was read (an async caller's timeout, a
    /// `select!` that chose another branch, an aborted task); `None` when
    /// none was.
    ///
    /// 1. What tokio-postgres queued is written, all of it, within
    ///    [`DRAIN_LIMIT`] (a server still reading a request ignores a
    ///    cancel).
    /// 2. A cancel request goes out, so that the interrupted statement
    ///    does not go on running, and the connection is drained: an empty
    ///    query, queued behind everything before it, is answered last,
    ///    within [`DRAIN_LIMIT`], the cancel sent again meanwhile (see
    ///    `Connection::cancel_and_drain`); a connection that does not
    ///    answer by then is dropped (the server rolls back what it had
    ///    open).
    /// 3. The server's status and the last command's tag decide the rest:
    ///    an interrupted `COMMIT` either committed (then nothing is left to
    ///    roll back) or did not; a transaction whose statement was
    ///    interrupted can only roll back from now on (its holder cannot
    ///    know what ran); a stream is over.
    pub(crate) async fn recover_interrupted(
        &mut self,
        shared: &SessionShared,
    ) -> Option<Interruption> {
        let conn = self.conn.as_mut().filter(|conn| conn.was_interrupted())?;
        // Cleared only once the interrupted request's outcome is known: a
        // recovery that is itself interrupted leaves it to the next.
        let commit = self.committing;
        let prepare = self.preparing;
        let written = tokio::time::timeout(DRAIN_LIMIT, conn.flush_queued()).await;
        let drained = match written {
            Ok(()) => tokio::time::timeout(DRAIN_LIMIT, conn.cancel_and_drain()).await,
            // The server does not read what it is sent: as good as gone.
            Err(elapsed) => Err(elapsed),
        };
        // A BEGIN armed for the interrupted statement and never sent must
        // not ride on someone else's next statement.
        conn.begin_outcome();
        let stream = self.stream.take();
        let copy_in = stream.as_ref().is_some_and(|open| open.copy_in);
        // Whatever was running has its answer now (or is gone): a cancel
        // handle has nothing to cancel.
        shared.cancel.idle();
        let drained = match drained {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                log::info!("pgtx: an interrupted request's connection failed while drained: {e}");
                false
            }
            Err(_) => {
                log::warn!(
                    "pgtx: an interrupted request's connection did not answer within {DRAIN_LIMIT:?}; \
                     closing it (the server rolls back what it had open)"
                );
                false
            }
        };
        self.committing = false;
        self.preparing = false;
        if !drained {
            self.lose_connection(shared);
            self.machine.lose();
            self.fallback = None;
            self.publish(shared);
            return Some(Interruption {
                commit: commit.then_some(None),
                copy_in,
            });
        }
        let server = self.server_status();
        let committed = commit.then(|| {
            let tag = self
                .conn
                .as_ref()
                .map(Connection::last_command_tag)
                .unwrap_or_default();
            commit_answer(&tag, server) == CommitAnswer::Committed
        });
        if commit {
            // Whatever it came to, no run of the transaction is retried
            // after it (see `transaction_retrying`).
            self.failure = None;
        }
        if committed == Some(true) {
            // Nothing is left to roll back.
            self.machine.reset();
            self.fallback = None;
        } else if prepare && server == Some(ServerStatus::Idle) {
            // The transaction left the session, prepared or not: its
            // coordinator finishes (or rolls back) the gid from here, as
            // after a vote whose connection broke.
            self.machine.reset();
            self.fallback = None;
        } else {
            self.machine.interrupted(server);
            if self.machine.is_aborted() && server == Some(ServerStatus::InTransaction) {
                // The server would go on with the transaction: make it
                // refuse to, so that it can only roll back (a later
                // statement that succeeds must not revive it), and so that
                // a savepoint enclosing the interrupted statement can still
                // be rolled back to.
                let refused = self
                    .statement(
                        shared,
                        RequestShape::Query,
                        None,
                        &Batch(INTERRUPTED_STATEMENT),
                    )
                    .await;
                if let Err(e) = refused {
                    log::debug!("pgtx: the interrupted transaction is now aborted: {e}");
                }
            }
        }
        self.publish(shared);
        Some(Interruption {
            commit: committed.map(Some),
            copy_in,
        })
    }

    /// Follows what the server answered to `COMMIT`.
    async fn committed(
        &mut self,
        shared: &SessionShared,
        sent: Result<(), postgres::Error>,
    ) -> Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            self.publish(shared);
            return Err(Error::ConnectionLost(None));
        };
        match sent {
            Ok(()) => {
                // The server's word, not the request's success: `COMMIT` of
                // a block the server had aborted answers `ROLLBACK`.
                let tag = conn.last_command_tag();
                let server = conn.server_status();
                let block_left_open = match commit_answer(&tag, server) {
                    CommitAnswer::Committed => {
                        // A run that committed is never run again.
                        self.failure = None;
                        self.publish(shared);
                        return Ok(());
                    }
                    CommitAnswer::NotCommitted { block_left_open } => block_left_open,
                };
                log::warn!(
                    "pgtx: COMMIT was answered {tag:?} with the session {server:?}: not committed"
                );
                if block_left_open {
                    self.rollback_whatever_is_open(shared).await;
                }
                self.publish(shared);
                Err(Error::TransactionAborted(None))
            }
            Err(e) if e.as_db_error().is_some() && !conn.has_ended() => {
                // The server refused to commit (a deferred constraint, a
                // serialization failure): the transaction is rolled back.
                self.failure = e.as_db_error().map(|d| Box::new(d.clone()));
                self.publish(shared);
                Err(Error::Db(e))
            }
            Err(e) => {
                let cause = conn.why_lost(e);
                self.discard(shared);
                shared.status.set(TransactionStatus::Unknown);
                // Never run again: it may have committed.
                self.failure = None;
                Err(Error::CommitOutcomeUnknown(Some(cause)))
            }
        }
    }

    /// Ends the transaction without saving it. Never fails: when `ROLLBACK`
    /// cannot be sent, the connection is closed, which makes the server roll
    /// back, and no one can inherit it.
    ///
    /// The server's word counts too: a block it reports open is rolled
    /// back even when the machine thought none was (a future dropped
    /// between a transition and its request leaves them apart).
    pub(crate) async fn rollback(&mut self, shared: &SessionShared) {
        let server = self.server_status();
        let must_send = self.machine.rollback(server) | self.server_in_block();
        self.send_rollback(shared, must_send).await;
        // A write refused as read-only is looked into before the lease
        // goes to anyone else, so that a server that turned read-only is
        // known to every connection made alongside this one at once.
        if !self.server_in_block() {
            self.confirm_writable().await;
        }
    }

    /// Whether the server, by its last answer, has a transaction block
    /// open (or failed) on the connection.
    pub(crate) fn server_in_block(&self) -> bool {
        matches!(
            self.server_status(),
            Some(ServerStatus::InTransaction | ServerStatus::Failed)
        )
    }

    /// Rolls back whatever the server has open, whatever the machine thought.
    async fn rollback_whatever_is_open(&mut self, shared: &SessionShared) {
        let server = self.server_status();
        let must_send = self.machine.force_rollback(server);
        self.send_rollback(shared, must_send).await;
    }

    /// Sends `ROLLBACK` if the machine said it `must_send` it; when it
    /// cannot be sent, closes the connection, which makes the server roll
    /// back.
    async fn send_rollback(&mut self, shared: &SessionShared, must_send: bool) {
        if !must_send {
            self.publish(shared);
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            self.publish(shared);
            return;
        };
        shared.cancel.until_sent().await;
        shared.status.set(TransactionStatus::Active);
        if let Err(e) = Batch("ROLLBACK").send(conn).await {
            log::warn!(
                "pgtx: ROLLBACK failed ({e}); closing the connection so the server rolls back"
            );
            self.discard(shared);
        }
        self.publish(shared);
    }

    /// Runs one of pgtx's own statements (`SAVEPOINT`, `RELEASE`) on the
    /// unnamed statement, never a named one that SQL could redefine, with
    /// a pending `BEGIN` in its Sync group.
    async fn own_statement(&mut self, shared: &SessionShared, sql: &str) -> Result<()> {
        let bound = super::request::Bound {
            kind: super::request::Execute,
            target: Target::Unnamed(sql, &[]),
            params: &[],
        };
        self.statement(shared, RequestShape::Bind, None, &bound)
            .await
            .map(drop)
    }

    /// Opens savepoint number `depth + 1` inside the transaction; returns its number.
    pub(crate) async fn savepoint(&mut self, shared: &SessionShared) -> Result<u32> {
        let depth = self.machine.next_savepoint();
        let sql = format!("SAVEPOINT {}", savepoint_name(depth));
        self.own_statement(shared, &sql).await?;
        self.machine.savepoint_opened(depth);
        Ok(depth)
    }

    /// Releases savepoint `depth` (the innermost): its work joins the
    /// transaction's. If the server aborted the transaction inside the
    /// savepoint, rolls back to it instead and reports the first error,
    /// which leaves the transaction usable.
    pub(crate) async fn release_savepoint(
        &mut self,
        shared: &SessionShared,
        depth: u32,
    ) -> Result<()> {
        if let ReleasePlan::RollBack(first) = self.machine.release_savepoint() {
            self.rollback_to_savepoint(shared, depth).await?;
            return Err(Error::TransactionAborted(first));
        }
        let sql = format!("RELEASE SAVEPOINT {}", savepoint_name(depth));
        let result = self.own_statement(shared, &sql).await;
        self.machine.savepoint_ended(depth);
        result
    }

    /// Undoes savepoint `depth` and everything inside it, and removes it:
    /// the transaction is healthy again even if a statement inside failed.
    pub(crate) async fn rollback_to_savepoint(
        &mut self,
        shared: &SessionShared,
        depth: u32,
    ) -> Result<()> {
        let name = savepoint_name(depth);
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        let result = self
            .statement(shared, RequestShape::Query, None, &Batch(&sql))
            .await;
        self.machine.savepoint_ended(depth);
        result
    }

    /// Savepoints deeper than `depth` are still open although their holder
    /// is using an outer level again: they were forgotten (`mem::forget`).
    /// Rolls them back; returns whether there were any (the caller reports).
    pub(crate) async fn restore_depth(
        &mut self,
        shared: &SessionShared,
        depth: u32,
    ) -> Result<bool> {
        let Some(outermost) = self.machine.forgotten_savepoints(depth) else {
            return Ok(false);
        };
        self.rollback_to_savepoint(shared, outermost).await?;
        Ok(true)
    }

    /// Whether SQL text reaches the server as pgtx reads it: UTF8, unless
    /// user SQL changed `client_encoding` (a closed connection has not).
    pub(crate) fn reads_utf8(&self) -> bool {
        self.conn.as_ref().is_none_or(Connection::reads_utf8)
    }

    /// Refuses `sql` if it would end or restart a transaction (checked
    /// before anything is sent, inside a transaction; `prepare` checks it
    /// everywhere).
    ///
    /// # Errors
    ///
    /// [`Error::TransactionControl`], naming the statement; also when the
    /// server no longer reads SQL as UTF8, since pgtx then cannot read it
    /// as the server does.
    pub(crate) fn refuse_control(&self, sql: &str) -> Result<()> {
        if !self.reads_utf8() {
            // In another encoding a byte pgtx reads as part of a character can
            // be a quote or a backslash to the server, so a COMMIT could hide
            // where pgtx sees a string.
            return Err(Error::TransactionControl(
                "client_encoding is not UTF8, so pgtx cannot read this SQL for transaction control \
                 (RESET client_encoding through the guard first)"
                    .to_owned(),
            ));
        }
        match control::find(sql) {
            Some(found) => Err(Error::TransactionControl(found.to_string())),
            None => Ok(()),
        }
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
    pub(crate) async fn prepare_transaction(
        &mut self,
        shared: &SessionShared,
        gid: &str,
    ) -> Result<Vote> {
        match self.machine.prepare() {
            PreparePlan::Nothing => {
                self.publish(shared);
                return Ok(Vote::Nothing);
            }
            PreparePlan::Lost => {
                self.publish(shared);
                return Err(Error::ConnectionLost(None));
            }
            PreparePlan::Escaped => {
                self.publish(shared);
                return Err(escaped());
            }
            PreparePlan::RollBack(first) => {
                self.rollback(shared).await;
                return Err(Error::TransactionAborted(first));
            }
            PreparePlan::Send => {}
        }
        let Some(conn) = self.conn.as_mut() else {
            self.machine.reset();
            self.publish(shared);
            return Err(Error::ConnectionLost(None));
        };
        shared.cancel.until_sent().await;
        shared.status.set(TransactionStatus::Active);
        // One simple query: if the SELECT fails, PREPARE is not run.
        let sql = format!(
            "SELECT txid_current()::text; PREPARE TRANSACTION {}",
            quote_literal(gid)
        );
        self.preparing = true;
        let result = conn.run(|client| client.simple_query(&sql)).await;
        self.preparing = false;
        let result = conn.outcome(result);
        let xid = result.as_ref().ok().and_then(|messages| {
            messages.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i64>().ok(),
                _ => None,
            })
        });
        let reply = self.reply(shared, &result, false);
        if self.machine.after_prepare(gid, reply) {
            // Refused and left failed: end the block.
            self.rollback(shared).await;
        }
        self.publish(shared);
        result.map(|_| Vote::Prepared { xid })
    }

    /// Forgets a transaction prepared on this session (it left the
    /// session; whoever has its gid finishes it): nothing of it is left
    /// here to roll back or report.
    #[cfg(feature = "aio")]
    pub(crate) fn forget_prepared(&mut self, shared: &SessionShared) {
        if self.machine.is_prepared() {
            self.machine.reset();
            self.publish(shared);
        }
    }

    /// Whether the second phase may be sent on this session now (the
    /// front then makes sure of a connection: any session on the same
    /// database may send it, so a connection that broke is replaced).
    ///
    /// # Errors
    ///
    /// [`Error::TransactionControl`] when a transaction of this session's
    /// own is under way.
    pub(crate) fn start_finish_prepared(&mut self) -> Result<()> {
        if self.machine.finish_prepared() {
            Ok(())
        } else {
            Err(escaped())
        }
    }

    /// `COMMIT PREPARED gid` (or `ROLLBACK PREPARED`): the second phase,
    /// after [`start_finish_prepared`](Self::start_finish_prepared).
    pub(crate) async fn finish_prepared(
        &mut self,
        shared: &SessionShared,
        gid: &str,
        commit: bool,
    ) -> Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::ConnectionLost(None));
        };
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let sql = format!("{verb} PREPARED {}", quote_literal(gid));
        shared.cancel.until_sent().await;
        shared.status.set(TransactionStatus::Active);
        let result = Batch(&sql).send(conn).await;
        let result = conn.outcome(result);
        if matches!(result, Err(Error::ConnectionLost(_))) {
            self.lose_connection(shared);
        }
        self.publish(shared);
        result
    }

    /// Whether pgtx's savepoint number `depth` is still open (see
    /// `Machine::savepoint_is_open`).
    pub(crate) fn savepoint_is_open(&self, depth: u32) -> bool {
        self.machine.savepoint_is_open(depth)
    }

    /// What a request came back with, for the machine to follow: the
    /// server's answer (its status, and its error if it refused), or a
    /// broken connection, which is dropped here. `began`: a pending `BEGIN`
    /// went out with the request and the server began the transaction.
    fn reply<'r, T>(
        &mut self,
        shared: &SessionShared,
        result: &'r Result<T>,
        began: bool,
    ) -> Reply<'r> {
        if let Err(Error::ConnectionLost(_)) = result {
            self.lose_connection(shared);
            return Reply::Lost;
        }
        Reply::Answered {
            began,
            server: self.server_status().unwrap_or(ServerStatus::Idle),
            error: result.as_ref().err().and_then(Error::as_db_error),
        }
    }

    /// Closes the connection (if any). The next holder opens a new one.
    pub(crate) async fn close(&mut self, shared: &SessionShared) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        self.lost = false;
        self.replace = false;
        shared.cancel.disconnected();
        self.machine.reset();
        self.publish(shared);
    }

    /// The connection broke (or cannot be trusted): it is dropped, the next
    /// one opened ends an outage (recovery handlers, `replaced`), and
    /// cancel requests have nowhere to go.
    fn lose_connection(&mut self, shared: &SessionShared) {
        self.conn = None;
        self.lost = true;
        shared.cancel.disconnected();
    }

    /// Drops a connection that cannot be trusted any more.
    fn discard(&mut self, shared: &SessionShared) {
        self.lose_connection(shared);
        self.machine.reset();
        self.publish(shared);
    }

    fn server_status(&self) -> Option<ServerStatus> {
        self.conn.as_ref().and_then(Connection::server_status)
    }

    /// Mirrors the session's state into the status everyone can read.
    fn publish(&self, shared: &SessionShared) {
        let status = self
            .machine
            .status(self.conn.is_some(), self.server_status());
        shared.status.set(status);
    }
}

/// What a participant's vote did ([`SessionCore::prepare_transaction`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vote {
    /// It sent nothing: nothing to prepare, nothing to commit later.
    Nothing,
    /// Prepared; `xid` is its transaction id (epoch included, as
    /// `txid_current()` gives it) when the server's answer said it.
    Prepared { xid: Option<i64> },
}

/// `text` as an SQL string literal (for the gids of two-phase commit,
/// which `PREPARE TRANSACTION` takes as a literal, not a parameter).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Runs a future that does no I/O (no connection) to its end.
    fn done<F: std::future::Future>(work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match work.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("no connection, yet it waited"),
        }
    }

    #[test]
    fn a_recorded_fallback_is_carried_out_once_and_its_cause_returned() {
        let (mut core, shared) = (SessionCore::new(Naming::Cached), SessionShared::default());
        assert_eq!(
            done(core.settle_fallback(&shared)),
            None,
            "nothing recorded"
        );
        core.record_fallback(RollBackTarget::Transaction, Some(Cause::Dropped));
        assert_eq!(done(core.settle_fallback(&shared)), Some(Cause::Dropped));
        assert_eq!(
            done(core.settle_fallback(&shared)),
            None,
            "carried out once"
        );
    }

    #[test]
    fn a_savepoint_s_fallback_never_replaces_a_whole_transaction_s() {
        let mut core = SessionCore::new(Naming::Cached);
        core.record_fallback(RollBackTarget::Transaction, Some(Cause::Panic));
        core.record_fallback(
            RollBackTarget::Savepoint(2),
            Some(Cause::SavepointDropped { panicked: true }),
        );
        assert_eq!(
            core.fallback,
            Some((RollBackTarget::Transaction, Some(Cause::Panic)))
        );
        let mut core = SessionCore::new(Naming::Cached);
        core.record_fallback(RollBackTarget::Savepoint(1), None);
        core.record_fallback(RollBackTarget::Transaction, Some(Cause::Dropped));
        assert_eq!(
            core.fallback,
            Some((RollBackTarget::Transaction, Some(Cause::Dropped)))
        );
    }

    /// The session's futures can move between a multi-threaded runtime's
    /// workers (checked at compile time; the futures are never polled).
    #[test]
    fn the_session_s_futures_are_send() {
        fn check(core: &mut SessionCore, shared: &SessionShared, retries: &mut Retries) {
            let one = 1_i32;
            let params: Params<'_> = &[&one];
            assert_send(&core.cached_statement(
                shared,
                "SELECT $1::int4",
                super::super::request::Query,
                params,
                retries,
            ));
        }
        fn check_others(core: &mut SessionCore, shared: &SessionShared) {
            assert_send(&core.commit(shared));
            assert_send(&core.rollback(shared));
            assert_send(&core.savepoint(shared));
            assert_send(&core.prepare_transaction(shared, "gid"));
            assert_send(&core.close(shared));
        }
        let _ = (check, check_others);
    }
}

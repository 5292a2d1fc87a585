//! The async core: one `tokio-postgres` connection, polled together with
//! each request on whatever task runs it. `Send`, no `block_on`, no lock
//! held across an `.await`: the blocking shell (`blocking/driver.rs`) drives it on a
//! runtime of its own, and an async front can drive it on the caller's.
//!
//! The connection is not spawned as a task of its own: `run` polls it with
//! the request, so an answer is read on the thread that waits for it (no
//! hand-over between threads), and a connection that sits idle can be
//! looked at without a round trip (see [`Connection::is_alive`]).

pub(crate) mod cancel_serials;
mod gate;
pub(crate) mod interrupt;
pub(crate) mod pipeline;
pub(crate) mod request;
pub(crate) mod session;
mod sql_text;
mod statement_cache;
pub(crate) mod streaming;
pub(crate) mod unnamed;
pub(crate) mod writable;

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use postgres::error::{DbError, SqlState};
use postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Notification, Statement};

use self::cancel_serials::CancelCell;
use self::gate::Gate;
use self::interrupt::Interrupt;
use self::request::{Opens, StatementKind};
use self::statement_cache::StatementCache;
use self::unnamed::{ParameterCount, describe, typed};
use self::writable::{WritableCheck, WritableWatch};
use crate::config::Settings;
use crate::connect::wire::{BeginOutcome, CopyRefused, Tap};
use crate::connect::{CancelTarget, ClosesWith, ConnectionStream, Connector, Opened, Severer};
use crate::error::Error;
use crate::machine::control;
use crate::machine::transaction_status::ServerStatus;
use crate::statements::{Naming, Params, Sql, ToStatement};
use crate::user_code::catch_panic;

/// What a statement method runs.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A statement prepared on this connection, bound by its name.
    Prepared(&'a Statement),
    /// SQL text on the unnamed statement (Parse, Bind, Describe, Execute in
    /// one Sync group), with its parameters' types (empty when it has none).
    Unnamed(&'a str, &'a [Type]),
}

/// Whether a request waits for the server's ReadyForQuery after its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Wait for it: the server's transaction status is then current.
    Yes,
    /// Return with the answer: the request opens a stream (rows or COPY
    /// data) that later calls go on reading or writing (see `streaming.rs`).
    No,
}

/// What [`Builder::on_notice`](crate::Builder::on_notice) was given: told
/// every notice the server sends on a connection.
pub(crate) type NoticeHandler = Arc<dyn Fn(&DbError) + Send + Sync>;

/// One open connection: the client, the half that reads and writes the
/// socket, the tap on the bytes, and what is cached per connection.
pub(crate) struct Connection {
    client: Client,
    connection: ConnectionStream,
    /// Slips `BEGIN` into the first statement's write; reads the server's
    /// transaction status.
    tap: Arc<Tap>,
    notifications: VecDeque<Notification>,
    /// The connection has ended; it must not be polled again.
    ended: bool,
    /// Why it ended, when the server or the socket said so.
    end_cause: Option<postgres::Error>,
    /// Statements prepared from SQL text on this connection.
    statements: StatementCache<Statement>,
    /// How SQL text runs on this connection.
    naming: Naming,
    /// With [`Naming::Unnamed`]: the parameter types of SQL text run on
    /// this connection, so that text run again costs one round trip.
    descriptions: StatementCache<Arc<[Type]>>,
    /// When the server was last heard from (or the connection last found alive).
    answered_at: Instant,
    gate: Arc<Gate>,
    /// Where this connection's cancel requests go.
    cancel: Arc<CancelTarget>,
    /// Told every notice, besides the log line.
    on_notice: Option<NoticeHandler>,
    /// A statement read or written over many calls (see `streaming.rs`).
    stream: Option<streaming::Streaming>,
    /// A request is being run: still set afterwards, the future that ran
    /// it was dropped before its answer was read (see
    /// [`Connection::was_interrupted`]).
    in_flight: bool,
    /// A statement is being described in a transaction block of its own
    /// (see [`Connection::describe`]): still set afterwards, the future was
    /// dropped before its `ROLLBACK` was answered, and the block may still
    /// be open (see [`Connection::drain`]).
    #[cfg_attr(not(feature = "aio"), allow(dead_code))]
    describing_in_block: bool,
    /// Shuts the socket down from outside (see `connect/sever.rs`); its
    /// second handle on the socket closes with this connection.
    severer: ClosesWith,
    /// The session's cancel cell, once installed: told while a request is
    /// driven, so that a holder at work is never taken for abandoned.
    activity: Option<Arc<CancelCell>>,
    /// When the settings want a writable server (`target_session_attrs`
    /// `read-write` or `primary`): what this connection knows of whether
    /// its server still is one (boxed: most connections have none).
    writable: Option<Box<WritableCheck>>,
}

static_assertions::assert_impl_all!(Connection: Send);

#[cfg(feature = "aio")]
/// Why an interrupted request's connection could not be made usable again
/// (see [`Connection::cancel_and_drain`]): it must be closed.
#[derive(Debug)]
pub(crate) enum Undrained {
    /// The connection failed while drained.
    Failed(postgres::Error),
    /// A cancel request was sent whose arrival was never confirmed: it
    /// could land on any later statement.
    CancelUnconfirmed,
}

#[cfg(feature = "aio")]
impl std::fmt::Display for Undrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undrained::Failed(e) => write!(f, "{e}"),
            Undrained::CancelUnconfirmed => {
                f.write_str("a cancel request whose arrival was never confirmed may still land")
            }
        }
    }
}

/// How many times a statement is described, outside a transaction block,
/// when the name it is prepared under is taken (see [`Connection::describe`]).
const DESCRIBE_TRIES: u32 = 3;

/// How many times in a row one poll of a request goes round again because
/// it was woken while polled, before it yields to the runtime instead (see
/// `Connection::run_until`).
const MISSED_ROUNDS: u32 = 32;

/// How soon a cancel for an interrupted request goes out again while its
/// answer has not come (see [`Connection::cancel_and_drain`]); the wait
/// doubles each time, up to [`CANCEL_AGAIN_MAX`].
#[cfg(feature = "aio")]
const CANCEL_AGAIN_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between cancels for an interrupted request.
#[cfg(feature = "aio")]
const CANCEL_AGAIN_MAX: Duration = Duration::from_secs(1);

impl Connection {
    /// Opens a new connection with `settings`, trying each server in turn
    /// as libpq does.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the settings (with the environment and files
    /// they point to) cannot be used, before anything is opened;
    /// [`Error::Connect`] if no server accepted the connection.
    pub(crate) async fn open(
        settings: &Settings,
        naming: Naming,
        on_notice: Option<NoticeHandler>,
        watch: &WritableWatch,
    ) -> Result<Connection, Error> {
        let connector = Connector::new(settings)?;
        let writable = connector
            .still_writable_question()
            .map(|question| Box::new(WritableCheck::new(question, watch)));
        let Opened {
            client,
            connection,
            tap,
            cancel,
            severer,
            role: _,
        } = connector.connect().await?;
        Ok(Connection {
            client,
            connection,
            tap,
            notifications: VecDeque::new(),
            ended: false,
            end_cause: None,
            statements: StatementCache::default(),
            naming,
            descriptions: StatementCache::default(),
            answered_at: Instant::now(),
            gate: Arc::default(),
            cancel,
            on_notice,
            stream: None,
            in_flight: false,
            describing_in_block: false,
            severer: ClosesWith(severer),
            activity: None,
            writable,
        })
    }

    /// Whether the settings want a writable server and there is a sign
    /// this one may no longer be one: it refused a write as read-only
    /// (SQLSTATE 25006), or a connection made alongside it found its own
    /// server read-only since this one was last known writable (see
    /// `writable.rs`). Then [`confirm_writable`](Self::confirm_writable)
    /// asks before the next transaction.
    pub(crate) fn writes_in_doubt(&self) -> bool {
        self.writable.as_ref().is_some_and(|w| w.in_doubt())
    }

    /// Asks the server whether it still takes writes (see
    /// `SessionTarget::still_writable_question`); a server found read-only
    /// (or a question that failed) makes the connection one to replace,
    /// and tells the connections made alongside it.
    pub(crate) async fn confirm_writable(&mut self) {
        let Some(question) = self.writable.as_ref().map(|w| w.question()) else {
            return;
        };
        let asked_at = self.writable.as_ref().map_or(0, |w| w.asked_at());
        let answer = self.run(|c| c.simple_query(question)).await;
        let writable = match &answer {
            Ok(messages) => messages.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("f"))
            }),
            Err(_) => false,
        };
        if !writable && answer.is_ok() {
            log::warn!(
                "pgtx: the server no longer accepts writes; reconnecting to find one that does"
            );
        }
        if let Some(check) = self.writable.as_mut() {
            check.answered(writable, asked_at);
        }
    }

    /// Whether the settings want a writable server and this one is not
    /// (any more): found read-only by
    /// [`confirm_writable`](Self::confirm_writable), or it reported
    /// `in_hot_standby`. Such a connection is replaced before the next
    /// transaction (see `SessionCore::take_if_replaced`), and the new one
    /// looks for the writable server again.
    pub(crate) fn refuses_writes(&self) -> bool {
        self.writable
            .as_ref()
            .is_some_and(|w| w.found_read_only() || self.tap.hot_standby_reported())
    }

    /// How SQL text runs on this connection.
    pub(crate) fn naming(&self) -> Naming {
        self.naming
    }

    /// The statement prepared from `sql` on this connection, preparing it
    /// (one round trip) the first time.
    pub(crate) async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        debug_assert_eq!(self.naming, Naming::Cached, "nothing is named when unnamed");
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement);
        }
        let statement = self.run(|client| client.prepare(sql)).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Prepares every text of `texts` (none of them cached) side by side:
    /// their requests are all queued before any is written, so they leave
    /// in one write, one round trip for all. Each is cached when it
    /// succeeds.
    ///
    /// # Errors
    ///
    /// The error of the first text (in order) that failed, once every
    /// answer is read and each text that succeeded is cached: so the
    /// first text left uncached is the one the error belongs to.
    pub(crate) async fn prepare_all(&mut self, texts: &[&str]) -> Result<(), postgres::Error> {
        debug_assert_eq!(self.naming, Naming::Cached, "nothing is named when unnamed");
        let prepared = self
            .run(|client| async move {
                let mut running: Vec<_> = texts
                    .iter()
                    .map(|sql| Box::pin(client.prepare(sql)))
                    .collect();
                let mut done: Vec<Option<Result<Statement, postgres::Error>>> =
                    texts.iter().map(|_| None).collect();
                poll_fn(|cx| pipeline::poll_each(&mut running, &mut done, cx)).await;
                Ok(done.into_iter().flatten().collect::<Vec<_>>())
            })
            .await?;
        let mut first_error = None;
        for (sql, answer) in texts.iter().zip(prepared) {
            match answer {
                Ok(statement) => self.statements.insert(sql, statement),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether a statement prepared from `sql` is cached on this connection
    /// (not counted as a use).
    pub(crate) fn has_statement(&self, sql: &str) -> bool {
        self.statements.contains(sql)
    }

    /// The statement prepared from `sql` on this connection, if it is
    /// cached (no I/O: see [`prepare_cached`](Self::prepare_cached)).
    pub(crate) fn cached_statement(&mut self, sql: &str) -> Option<Statement> {
        self.statements.get(sql)
    }

    /// The parameter types of `sql`, if they were looked up on this
    /// connection already (no I/O: see [`describe`](Self::describe)).
    pub(crate) fn cached_description(&mut self, sql: &str) -> Option<Arc<[Type]>> {
        self.descriptions.get(sql)
    }

    /// The types of the parameters of `sql`, as the server reads them
    /// (looked up once per connection, then remembered), leaving no
    /// prepared statement behind on any server connection.
    ///
    /// tokio-postgres can only describe a statement by preparing it under
    /// a name (which it closes when the statement is dropped, in a Sync
    /// group of its own). Through a transaction pooler, outside a
    /// transaction block, each Sync group may go to another server
    /// connection: the name would stay behind on one, to collide with the
    /// same name from another client later. So outside a block the
    /// statement is described in one of its own, `BEGIN` sent with the
    /// Parse and `ROLLBACK` after the Close, both on the one server
    /// connection the block keeps. Inside a block, the Close goes out
    /// before anything that could end it. Any `BEGIN` armed for the
    /// caller's statement is held back meanwhile.
    ///
    /// The names are tokio-postgres' (`s` and a number counted per
    /// process), so a pooled server connection may hold one that another
    /// client left behind: in a block of its own, the description is then
    /// made again, under the next name.
    pub(crate) async fn describe(&mut self, sql: &str) -> Result<Arc<[Type]>, postgres::Error> {
        if let Some(types) = self.descriptions.get(sql) {
            return Ok(types);
        }
        let in_block = self.server_status() != Some(ServerStatus::Idle);
        let tap = self.tap.clone();
        let mut tries = if in_block { 1 } else { DESCRIBE_TRIES };
        let types = loop {
            tries -= 1;
            let held = tap.hold_begin();
            self.describing_in_block = !in_block;
            let described = self.run(|client| describe(client, sql, in_block)).await;
            self.describing_in_block = false;
            drop(held);
            match described {
                Err(e) if tries > 0 && e.code() == Some(&SqlState::DUPLICATE_PSTATEMENT) => {
                    log::debug!("pgtx: describing under a name left on the server ({e}); again");
                }
                result => break result?,
            }
        };
        let types: Arc<[Type]> = types.into();
        if types.iter().any(|t| Type::from_oid(t.oid()).is_none()) {
            log::warn!(
                "pgtx: a parameter of a user-defined type: tokio-postgres looks such types up \
                 with named prepared statements, which a transaction pooler does not carry \
                 between server connections (cast it from a built-in type: $1::text::mytype)"
            );
        }
        self.descriptions.insert(sql, types.clone());
        Ok(types)
    }

    /// Whether the parameter types of `sql` are known on this connection.
    pub(crate) fn has_description(&self, sql: &str) -> bool {
        self.descriptions.contains(sql)
    }

    /// Forgets the parameter types of `sql` (a column may have changed
    /// type), so that they are looked up again.
    pub(crate) fn forget_description(&mut self, sql: &str) {
        self.descriptions.remove(sql);
    }

    /// Runs `target` as a statement of `kind`: a prepared statement by its
    /// name, or text on the unnamed statement with its parameters' types.
    pub(crate) async fn bind<K: StatementKind>(
        &mut self,
        kind: K,
        target: Target<'_>,
        params: Params<'_>,
    ) -> Result<K::Output, postgres::Error> {
        let settle = match K::OPENS {
            Opens::Nothing => Settle::Yes,
            Opens::Rows | Opens::Copy => Settle::No,
        };
        let tap = self.tap.clone();
        let _expected = (K::OPENS == Opens::Copy).then(|| tap.expect_copy());
        match target {
            Target::Prepared(statement) => {
                self.run_until(|c| kind.prepared(c, statement, params), settle)
                    .await
            }
            Target::Unnamed(sql, types) => match typed(params, types) {
                Ok(typed) => self.run_until(|c| kind.typed(c, sql, &typed), settle).await,
                Err(count) => self.refuse_parameters(&count).await,
            },
        }
    }

    /// Runs `query` (SQL text or a prepared statement) as a statement of
    /// `kind`, the way this connection runs text: prepared once and cached,
    /// or on the unnamed statement (with [`Naming::Unnamed`], and for text
    /// whose rows take their shape when it runs). No retry: that is the
    /// session's (`SessionCore::cached_statement`); this serves hooks on a
    /// connection no session holds yet.
    pub(crate) async fn run_statement<Q, K>(
        &mut self,
        query: &Q,
        kind: K,
        params: Params<'_>,
    ) -> Result<K::Output, postgres::Error>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        match query.sql() {
            Sql::Prepared(statement) => kind.send(self, Target::Prepared(statement), params).await,
            Sql::Text(sql)
                if self.naming == Naming::Cached
                    && control::shape_decided_at_run_time(sql).is_none() =>
            {
                let statement = self.prepare_cached(sql).await?;
                kind.send(self, Target::Prepared(&statement), params).await
            }
            Sql::Text(sql) => {
                let types = match params.len() {
                    0 => None,
                    _ => Some(self.describe(sql).await?),
                };
                let types = types.as_deref().unwrap_or_default();
                kind.send(self, Target::Unnamed(sql, types), params).await
            }
        }
    }

    /// The error for a wrong number of parameters, made before anything is
    /// sent, as tokio-postgres makes it for a prepared statement.
    async fn refuse_parameters<T>(&mut self, count: &ParameterCount) -> Result<T, postgres::Error> {
        // tokio-postgres' own error for this cannot be made from outside;
        // a parameter that fails to encode yields one that says the same
        // (the request fails while it is encoded, before it is sent).
        let refused = [(count as &(dyn ToSql + Sync), Type::TEXT)];
        match self.run(|c| c.execute_typed("", &refused)).await {
            Err(e) => Err(e),
            // `ParameterCount::to_sql` always fails.
            Ok(_) => unreachable!("a ParameterCount was encoded"),
        }
    }

    /// Sends `begin` in front of the next statement, in the same write and
    /// the same Sync group: if the server refuses `BEGIN`, it skips the
    /// statement. Read the outcome with [`Connection::begin_outcome`].
    pub(crate) fn arm_begin(&mut self, begin: &str) {
        self.tap.arm_begin(begin);
    }

    /// The tag of the last CommandComplete the server sent: what it says
    /// the last command did.
    pub(crate) fn last_command_tag(&self) -> String {
        self.tap.last_command_tag()
    }

    /// Whether a `COPY` reached the server through the last request, and
    /// which way (see `Tap::take_copy_refused`).
    pub(crate) fn take_copy_refused(&mut self) -> Option<CopyRefused> {
        self.tap.take_copy_refused()
    }

    /// What became of the `BEGIN` armed last; disarms it if it was not sent.
    pub(crate) fn begin_outcome(&mut self) -> BeginOutcome {
        self.tap.take_begin_outcome()
    }

    /// The transaction status the server reported with its last answer.
    pub(crate) fn server_status(&self) -> Option<ServerStatus> {
        self.tap.server_status()
    }

    /// Whether the server reads SQL text as UTF8 (see `Tap::reads_utf8`).
    pub(crate) fn reads_utf8(&self) -> bool {
        self.tap.reads_utf8()
    }

    /// Forgets every cached statement (after the server said one was stale
    /// or gone: `DISCARD ALL` and `DEALLOCATE ALL` drop them all at once).
    pub(crate) fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// Runs one request to completion while driving the connection.
    pub(crate) async fn run<'a, T, F, Fut>(&'a mut self, request: F) -> Result<T, postgres::Error>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, postgres::Error>> + 'a,
    {
        self.run_until(request, Settle::Yes).await
    }

    /// Runs one request while driving the connection, until it answers
    /// and, with [`Settle::Yes`], until the server is ready for the next.
    pub(crate) async fn run_until<'a, T, F, Fut>(
        &'a mut self,
        request: F,
        settle: Settle,
    ) -> Result<T, postgres::Error>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, postgres::Error>> + 'a,
    {
        self.in_flight = true;
        let _busy = self.activity.as_deref().map(CancelCell::busy);
        let Connection {
            client,
            connection,
            notifications,
            ended,
            end_cause,
            gate,
            tap,
            on_notice,
            in_flight,
            ..
        } = self;
        let on_notice = on_notice.as_ref();
        let client: &'a Client = client;
        let mut request = pin!(request(client));
        let gate = &*gate;
        let mut answer = None;
        let result = poll_fn(|cx| {
            gate.set_waker(cx.waker());
            let gated = Waker::from(gate.clone());
            let mut gated_cx = Context::from_waker(&gated);
            let mut rounds = 0;
            loop {
                gate.open_poll();
                let polled = Polled {
                    notifications,
                    ended,
                    end_cause,
                    on_notice,
                };
                drive(connection, polled, &mut gated_cx);
                if answer.is_none()
                    && let Poll::Ready(result) = request.as_mut().poll(&mut gated_cx)
                {
                    answer = Some(result);
                }
                let missed = gate.close_poll();
                // A request can end before the server's ReadyForQuery is read
                // (an error is sent, and flushed, ahead of it); wait for it,
                // so that the server's transaction status is current.
                // A stream that opened returns at once; one that failed
                // to open waits like any request.
                let opened = settle == Settle::No && matches!(answer, Some(Ok(_)));
                if (*ended || opened || tap.settled())
                    && let Some(result) = answer.take()
                {
                    return Poll::Ready(result);
                }
                if !missed {
                    return Poll::Pending;
                }
                rounds += 1;
                if rounds == MISSED_ROUNDS {
                    // Woken in every round: the task's budget of I/O may
                    // be spent (tokio's cooperative scheduling makes every
                    // socket poll return Pending and wake at once until
                    // the task yields). Yield, asking to be polled again.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        })
        .await;
        *in_flight = false;
        if !*ended {
            self.answered_at = Instant::now();
        }
        if tap.take_statements_dropped() {
            // DISCARD ALL or DEALLOCATE ran: what the cache holds is gone
            // on the server. (`self` is borrowed for 'a: only the field.)
            self.statements.clear();
        }
        result
    }

    #[cfg(feature = "aio")]
    /// Ready once a notification is queued or the connection has ended
    /// (reading what arrived); meanwhile `cx`'s task is woken by the socket.
    pub(crate) fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notifications.is_empty() && !self.has_ended() {
            self.drive_now(cx);
        }
        if self.notifications.is_empty() && !self.has_ended() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    #[cfg(feature = "aio")]
    /// Whether the future of a request was dropped before the request's
    /// answer was read (an async caller's timeout, a `select!` that chose
    /// another branch, an aborted task): the request may still run on the
    /// server, or not have been sent yet, and its answer is still to come.
    /// Whatever uses the connection next must first cancel and drain it
    /// (see `SessionCore::recover_interrupted`).
    pub(crate) fn was_interrupted(&self) -> bool {
        self.in_flight
    }

    #[cfg(feature = "aio")]
    /// Writes what tokio-postgres has queued, waiting until the socket
    /// took all of it (or the connection ended), without waiting for any
    /// answer.
    pub(crate) async fn flush_queued(&mut self) {
        poll_fn(|cx| {
            self.drive_now(cx);
            if self.has_ended() || self.tap.flushed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[cfg(feature = "aio")]
    /// Cancels what an interrupted request left running, and reads and
    /// drops every answer still to come and the stream (if any): an empty
    /// query is queued behind whatever was sent before it, so its answer
    /// comes last. Clears [`was_interrupted`](Self::was_interrupted).
    ///
    /// The cancel goes out again, less and less often, while the answer
    /// has not come: a server still reading the request when a cancel
    /// arrives ignores it. Each is sent before anything else is (only the
    /// empty query follows the interrupted request until it is answered),
    /// and waited for, so none can hit a later statement.
    ///
    /// A description interrupted in its own transaction block (see
    /// [`describe`](Self::describe)) may have left that block open: it is
    /// rolled back, so that the caller's next statements do not run in a
    /// block nobody asked for (and are not lost with it).
    pub(crate) async fn cancel_and_drain(&mut self) -> Result<(), Undrained> {
        self.stream = None;
        let target = Arc::clone(&self.cancel);
        if target.unconfirmed() {
            // An earlier drain's cancel (its future dropped mid-send) may
            // still arrive: no statement may run here again.
            return Err(Undrained::CancelUnconfirmed);
        }
        {
            // An armed BEGIN stays armed: a simple Query does not carry it.
            let mut answered = pin!(self.run(|c| c.batch_execute("")));
            let mut wait = Duration::ZERO;
            loop {
                match tokio::time::timeout(wait, answered.as_mut()).await {
                    // A cancel that came as the empty query ran refuses it:
                    // answered all the same, and the last answer.
                    Ok(Err(e)) if e.as_db_error().is_none() => return Err(Undrained::Failed(e)),
                    Ok(_) => break,
                    Err(_) => {
                        if let Err(e) = target.send().await {
                            log::debug!(
                                "pgtx: cancel request for an interrupted statement failed: {e}"
                            );
                        }
                        wait = (wait * 2).clamp(CANCEL_AGAIN_FIRST, CANCEL_AGAIN_MAX);
                    }
                }
            }
        }
        if target.unconfirmed() {
            // A cancel that failed may still arrive.
            return Err(Undrained::CancelUnconfirmed);
        }
        if self.describing_in_block {
            if self.server_status() != Some(ServerStatus::Idle) {
                self.run(|c| c.batch_execute("ROLLBACK"))
                    .await
                    .map_err(Undrained::Failed)?;
            }
            self.describing_in_block = false;
        }
        Ok(())
    }

    /// What shuts this connection's socket down from outside.
    pub(crate) fn severer(&self) -> &Arc<Severer> {
        &self.severer.0
    }

    /// Tells `cell` while each request is driven (see `CancelCell::busy`).
    pub(crate) fn report_activity_to(&mut self, cell: &Arc<CancelCell>) {
        self.activity = Some(Arc::clone(cell));
    }

    /// Where this connection's cancel requests go.
    pub(crate) fn cancel_target(&self) -> &Arc<CancelTarget> {
        &self.cancel
    }

    /// Whether the connection answered (or was found alive) within `span`.
    pub(crate) fn answered_within(&self, span: Duration) -> bool {
        !self.has_ended() && self.answered_at.elapsed() < span
    }

    /// Whether the connection is still usable, without a round trip.
    ///
    /// Reads whatever the server sent while the connection sat idle: a
    /// notification is kept, an error or end of stream marks it dead. On a
    /// current-thread runtime, whose I/O driver turns only while the future
    /// it runs is pending, yielding once first makes it look at the socket,
    /// so the poll sees what arrived since the last request.
    pub(crate) async fn is_alive(&mut self) -> bool {
        if self.has_ended() {
            return false;
        }
        tokio::task::yield_now().await;
        poll_fn(|cx| {
            self.drive_now(cx);
            Poll::Ready(())
        })
        .await;
        let alive = !self.has_ended();
        if alive {
            self.answered_at = Instant::now();
        }
        alive
    }

    /// Reads and writes what the connection can now (see [`drive`]).
    fn drive_now(&mut self, cx: &mut Context<'_>) {
        let Connection {
            connection,
            notifications,
            ended,
            end_cause,
            on_notice,
            ..
        } = self;
        let polled = Polled {
            notifications,
            ended,
            end_cause,
            on_notice: on_notice.as_ref(),
        };
        drive(connection, polled, cx);
    }

    /// Whether the connection has ended (the server closed it, or the socket failed).
    pub(crate) fn has_ended(&self) -> bool {
        self.ended || self.client.is_closed()
    }

    /// The error the connection ended with, if it said one.
    pub(crate) fn take_end_cause(&mut self) -> Option<postgres::Error> {
        self.end_cause.take()
    }

    /// A request's result as the caller reports it: a failure on a
    /// connection that has ended is [`Error::ConnectionLost`] (with the
    /// more telling of the two errors, see [`Connection::why_lost`]), any
    /// other failure [`Error::Db`]. The one place that decides "lost or a
    /// database error?".
    pub(crate) fn outcome<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, Error> {
        match result {
            Ok(value) => Ok(value),
            Err(e) if self.has_ended() => Err(Error::ConnectionLost(Some(self.why_lost(e)))),
            Err(e) => {
                if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
                    && let Some(check) = self.writable.as_mut()
                {
                    check.write_refused();
                }
                Err(Error::Db(e))
            }
        }
    }

    /// Of a failed request's own error and the error the connection ended
    /// with, the one that says more: the server's reason (such as 57P01,
    /// "terminating connection due to administrator command") over a bare
    /// "connection closed".
    pub(crate) fn why_lost(&mut self, request_error: postgres::Error) -> postgres::Error {
        match self.end_cause.take() {
            Some(end) if request_error.as_db_error().is_none() => end,
            _ => request_error,
        }
    }

    /// Notifications received so far and not yet taken.
    pub(crate) fn notifications(&mut self) -> &mut VecDeque<Notification> {
        &mut self.notifications
    }

    /// Waits until a notification is queued, the connection ends,
    /// `deadline` passes (`None`: no deadline), or `interrupt` is raised;
    /// whether a notification is queued.
    ///
    /// It does not spin: the runtime sleeps in its I/O driver until the
    /// socket has something or the timer fires. Before waiting it yields
    /// once (see [`Connection::is_alive`]), so a deadline already past
    /// still sees what arrived since the last request.
    pub(crate) async fn wait_notification(
        &mut self,
        deadline: Option<Instant>,
        interrupt: &Interrupt,
    ) -> bool {
        if !self.notifications.is_empty() {
            return true;
        }
        if self.has_ended() {
            return false;
        }
        tokio::task::yield_now().await;
        let arrival = poll_fn(|cx| {
            self.drive_now(cx);
            if self.ended || !self.notifications.is_empty() || interrupt.poll_raised(cx).is_ready()
            {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        match deadline {
            // Timing out is the expected outcome of a quiet channel.
            Some(deadline) => tokio::time::timeout_at(deadline.into(), arrival)
                .await
                .unwrap_or(()),
            None => arrival.await,
        }
        let arrived = !self.notifications.is_empty();
        if arrived {
            self.answered_at = Instant::now();
        }
        arrived
    }

    /// Closes the connection politely: the client is dropped, which makes the
    /// connection send `Terminate`, and the socket is given a moment to flush.
    pub(crate) async fn close(self) {
        let Connection {
            client,
            mut connection,
            mut notifications,
            mut ended,
            mut end_cause,
            statements,
            on_notice,
            ..
        } = self;
        // No point closing statements one by one on a connection about to end.
        drop(statements);
        drop(client);
        if ended {
            return;
        }
        let flushed = tokio::time::timeout(
            Duration::from_secs(1),
            poll_fn(|cx| {
                let polled = Polled {
                    notifications: &mut notifications,
                    ended: &mut ended,
                    end_cause: &mut end_cause,
                    on_notice: on_notice.as_ref(),
                };
                drive(&mut connection, polled, cx);
                if ended {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
        )
        .await;
        if flushed.is_err() {
            log::debug!("pgtx: the server did not acknowledge the close within 1s");
        }
    }
}

/// What polling the connection fills in, besides the connection itself.
struct Polled<'p> {
    notifications: &'p mut VecDeque<Notification>,
    ended: &'p mut bool,
    end_cause: &'p mut Option<postgres::Error>,
    on_notice: Option<&'p NoticeHandler>,
}

/// Polls the connection until it has nothing more to do right now.
///
/// When the connection ends, it is dropped at once: that closes the
/// response channels of requests still in flight, which then fail with
/// "connection closed" instead of waiting forever for an answer.
fn drive(connection: &mut ConnectionStream, polled: Polled<'_>, cx: &mut Context<'_>) {
    let Polled {
        notifications,
        ended,
        end_cause,
        on_notice,
    } = polled;
    while !*ended {
        match connection.poll_message(cx) {
            Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                notifications.push_back(notification);
            }
            Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                log::info!(
                    "pgtx: server notice: {}: {}",
                    notice.severity(),
                    notice.message()
                );
                if let Some(handler) = on_notice {
                    catch_panic(
                        || "the on_notice handler panicked".to_owned(),
                        || handler(&notice),
                    );
                }
            }
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Ready(Some(Err(e))) => {
                log::debug!("pgtx: connection ended: {e}");
                *end_cause = Some(e);
                *ended = true;
                *connection = ConnectionStream::ended();
            }
            Poll::Ready(None) => {
                *ended = true;
                *connection = ConnectionStream::ended();
            }
            Poll::Pending => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The core's futures can move between a multi-threaded runtime's
    /// workers (checked at compile time; the futures are never polled).
    #[test]
    fn the_core_s_futures_are_send() {
        fn check(conn: &mut Connection, statement: &Statement) {
            let one = 1_i32;
            assert_send(&conn.bind(request::Execute, Target::Prepared(statement), &[&one]));
        }
        fn check_run(conn: &mut Connection) {
            assert_send(&conn.run(|c| c.batch_execute("SELECT 1")));
        }
        fn check_others(conn: &mut Connection) {
            assert_send(&conn.describe("SELECT $1::int4"));
            assert_send(&conn.prepare_cached("SELECT 1"));
            assert_send(&conn.is_alive());
            assert_send(&conn.wait_notification(None, &Interrupt::default()));
        }
        fn check_open(settings: &Settings) {
            assert_send(&Connection::open(
                settings,
                Naming::Cached,
                None,
                &WritableWatch::default(),
            ));
        }
        let _ = (check, check_run, check_others, check_open);
    }
}

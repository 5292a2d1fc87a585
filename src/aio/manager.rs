//! [`ManagedConnection`] for async code: one connection shared by many
//! tasks, handed out with `lock().await`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::DbError;
use crate::aio::cancel::CancelHandle;
use crate::aio::factory::{BoxFuture, Factory, Hook, NewConnection};
use crate::aio::guard::Guard;
use crate::aio::lease::Lease;
use crate::aio::listener::Listener;
use crate::aio::scope::{self, Source};
use crate::aio::session::Inner;
use crate::aio::tx::Tx;
use crate::config::{SessionTarget, Settings};
use crate::conn::NoticeHandler;
use crate::conn::writable::WritableWatch;
use crate::error::{Error, HookError, Result};
use crate::machine::options::TxOptions;
use crate::machine::reconnect::ReconnectPolicy;
use crate::machine::retry::RetryPolicy;
use crate::machine::transaction_status::TransactionStatus;
use crate::manager::DEFAULT_ABANDON_AFTER;
use crate::state::{Done, Open};
use crate::statements::Naming;

/// Settings for an async [`ManagedConnection`] other than the defaults.
/// A clone makes managers that share what they learn of the servers (see
/// [`target`](Self::target)).
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    dsn: String,
    statement_cache: bool,
    on_notice: Option<NoticeHandler>,
    on_connect: Option<Hook>,
    on_reconnect: Vec<Hook>,
    reconnect: Option<ReconnectPolicy>,
    abandon_after: Option<Duration>,
    /// Replaces the connection string's `target_session_attrs`.
    target: Option<SessionTarget>,
    /// Shared by every manager this builder makes (a pool's members).
    watch: WritableWatch,
}

impl fmt::Debug for Builder {
    /// Shows the connection string as [`Settings`] shows it: any password
    /// removed (or the string withheld, if it cannot be read).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("aio::Builder");
        match Settings::parse(&self.dsn) {
            Ok(settings) => s.field("settings", &settings),
            Err(_) => s.field("settings", &"<unreadable connection string, not shown>"),
        };
        s.field("statement_cache", &self.statement_cache)
            .field("on_connect", &self.on_connect.is_some())
            .field("on_reconnect", &self.on_reconnect.len())
            .field("reconnect", &self.reconnect)
            .field("abandon_after", &self.abandon_after)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Whether SQL text is prepared once per connection and reused (the
    /// default), or run on the unnamed statement each time (for a
    /// transaction pooler such as PgBouncer), as the blocking
    /// [`crate::Builder::statement_cache`].
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = on;
        self
    }

    /// Hands every notice the server sends on the connection to `handler`
    /// (besides the log line), as the blocking
    /// [`crate::Builder::on_notice`]. It runs on the task that reads the
    /// connection: keep it short, and do not block in it.
    pub fn on_notice<F>(mut self, handler: F) -> Self
    where
        F: Fn(&DbError) + Send + Sync + 'static,
    {
        self.on_notice = Some(Arc::new(handler));
        self
    }

    /// Runs `hook` on every new connection (the first, and each one opened
    /// after a connection was lost or closed) before anyone gets it: `SET`
    /// session settings, `PREPARE` statements, check the server version.
    /// Its statements run in autocommit mode on a [`NewConnection`]. The
    /// hook returns a boxed future (`Box::pin(async move { … })`), as
    /// sqlx's `after_connect` does.
    ///
    /// If the hook returns an error, or leaves a transaction block open,
    /// that connection is closed unused and the call that needed it
    /// ([`lock`](ManagedConnection::lock),
    /// [`transaction`](ManagedConnection::transaction), …) fails with
    /// [`Error::OnConnect`] carrying the hook's error; the next call opens
    /// a new connection and runs the hook again. A hook that panics
    /// panics the call that needed the connection (the connection is
    /// closed); a call whose future is dropped while the hook runs drops
    /// the new connection with it (nobody ever gets it half set up).
    ///
    /// # Examples
    ///
    /// ```
    /// let manager = pgtx::aio::ManagedConnection::builder("host=localhost user=postgres")
    ///     .on_connect(|conn| {
    ///         Box::pin(async move {
    ///             conn.batch_execute("SET search_path = app, public").await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut NewConnection) -> BoxFuture<'c, Result<(), HookError>>
            + Send
            + Sync
            + 'static,
    {
        self.on_connect = Some(Hook::new(hook));
        self
    }

    /// Adds a recovery handler: it runs once on the first connection
    /// opened after one was lost (whether by a call or by the background
    /// task of [`reconnect`](Self::reconnect)), after the
    /// [`on_connect`](Self::on_connect) hook, before anyone gets the
    /// connection, as the blocking [`crate::Builder::on_reconnect`].
    /// Handlers run in the order added; one that fails or panics is
    /// logged (`error` level) and the others, and the recovery, go on.
    pub fn on_reconnect<F>(mut self, handler: F) -> Self
    where
        F: for<'c> Fn(&'c mut NewConnection) -> BoxFuture<'c, Result<(), HookError>>
            + Send
            + Sync
            + 'static,
    {
        self.on_reconnect.push(Hook::new(handler));
        self
    }

    /// How long a holder (a [`Guard`], a [`Tx`]) may run nothing while
    /// other tasks wait, before a waiter takes the connection over: the
    /// holder is taken for lost (`mem::forget`, or kept alive and
    /// forgotten about), its connection is shut down from outside so that
    /// the server rolls back whatever it left open (reported as an
    /// unfinished transaction when a transaction was open), and the
    /// waiter gets a new connection. The old holder, if it is used again,
    /// fails with [`Error::LeaseRevoked`]. A holder whose statement is
    /// running is never taken over, however long it runs. `None`: never
    /// (a forgotten holder then keeps the connection for good).
    ///
    /// Default: [`DEFAULT_ABANDON_AFTER`] (30 s), as for the blocking
    /// [`crate::Builder::abandon_after`].
    pub fn abandon_after(mut self, limit: Option<Duration>) -> Self {
        self.abandon_after = limit;
        self
    }

    /// Rides out an outage instead of making every call wait for a
    /// connect timeout, as the blocking [`crate::Builder::reconnect`]:
    /// the call that finds the connection gone makes the policy's first
    /// attempt itself; if that fails, one task on the runtime makes the
    /// next ones on the policy's schedule and hands the new connection to
    /// the next call, while every call meanwhile fails at once with
    /// [`Error::ConnectionDead`]. If a round of attempts runs out
    /// ([`ReconnectPolicy::max_attempts`]), the next call gets
    /// [`Error::ReconnectFailed`] and the call after it starts again.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgtx::ReconnectPolicy;
    ///
    /// let manager = pgtx::aio::ManagedConnection::builder("host=localhost user=postgres connect_timeout=2")
    ///     .reconnect(ReconnectPolicy::default().max_delay(Duration::from_secs(5)))
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Which servers of the host list its connections may go to, in place
    /// of the connection string's `target_session_attrs`, as the blocking
    /// [`crate::Builder::target`]: a pool for writes beside one for reads,
    /// from one host list.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgtx::SessionTarget;
    /// use pgtx::aio::ManagedConnection;
    ///
    /// let servers = ManagedConnection::builder("host=db1,db2 user=app connect_timeout=5");
    /// let writes = servers.clone().target(SessionTarget::ReadWrite).pool(8).build()?;
    /// let reads = servers.target(SessionTarget::PreferStandby).pool(8).build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn target(mut self, target: SessionTarget) -> Self {
        self.target = Some(target);
        self
    }

    /// Parses the settings and builds the manager. Does not connect.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read.
    pub fn build(self) -> Result<ManagedConnection> {
        self.build_one()
    }

    /// A manager with these settings (the builder stays, to make more).
    pub(crate) fn build_one(&self) -> Result<ManagedConnection> {
        let mut settings = Settings::parse(&self.dsn)?;
        if let Some(target) = self.target {
            settings = settings.with_target(target);
        }
        let factory = Factory {
            settings,
            naming: Naming::with_statement_cache(self.statement_cache),
            on_connect: self.on_connect.clone(),
            on_reconnect: self.on_reconnect.clone(),
            on_notice: self.on_notice.clone(),
            watch: self.watch.clone(),
        };
        Ok(ManagedConnection {
            inner: Arc::new(Inner::new(
                factory,
                self.reconnect.clone(),
                self.abandon_after,
            )),
        })
    }
}

/// One PostgreSQL connection shared by many tasks: the async counterpart of
/// the blocking [`crate::ManagedConnection`], with the same guarantees.
///
/// [`lock`](Self::lock) waits (without blocking the thread) for the
/// connection and hands out a [`Guard`]; [`Guard::begin`] turns it into a
/// [`Tx<Open>`](Tx), which [`Tx::commit`] or [`Tx::rollback`] turn into a
/// [`Tx<Done>`](Tx). Waiters are served in the order they asked.
///
/// # Cancel safety
///
/// Every future of this API can be dropped at any `.await` (a timeout, a
/// `select!` that chose another branch, an aborted task), and the next
/// holder still starts on an idle connection:
///
/// - waiting for the lock: nothing was taken;
/// - after the lock was taken, while the session is readied (see below):
///   the lock is let go and the next holder readies it;
/// - a statement, `SAVEPOINT`, `ROLLBACK`: the statement is cancelled on
///   the server and its answer drained before the connection is used
///   again; a transaction it was part of can only roll back;
/// - `COMMIT`: drained the same way, and logged and counted
///   ([`interrupted_commits`](Self::interrupted_commits)) with what the
///   server did;
/// - a `Tx<Open>` or a guard with a block open, dropped: rolled back at
///   once on a task, and reported.
///
/// Nothing of an unfinished transaction is ever committed.
///
/// A `Tx` or a guard lost with `mem::forget` (or kept and forgotten about)
/// never lets go by itself. Once it has run nothing for
/// [`Builder::abandon_after`] (30 s by default) while another task waits,
/// that task takes the connection over: the old connection is shut down
/// from outside, so the server rolls back whatever was open on it
/// (reported as [`Error::UnfinishedTransaction`] would be: a log line at
/// error level and [`unfinished_transactions`](Self::unfinished_transactions)),
/// and the waiter gets a new one. The old holder fails with
/// [`Error::LeaseRevoked`] if it is used again. A holder whose statement
/// is running is never taken over.
pub struct ManagedConnection {
    inner: Arc<Inner>,
}

static_assertions::assert_impl_all!(ManagedConnection: Send, Sync);

impl ManagedConnection {
    /// Reads the connection settings; does not connect.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`], naming what is wrong, if `dsn` cannot be read.
    pub fn new(dsn: &str) -> Result<ManagedConnection> {
        Self::builder(dsn).build()
    }

    /// Starts a [`Builder`] for settings other than the defaults.
    pub fn builder(dsn: &str) -> Builder {
        Builder {
            dsn: dsn.to_owned(),
            statement_cache: true,
            on_notice: None,
            on_connect: None,
            on_reconnect: Vec::new(),
            reconnect: None,
            abandon_after: Some(DEFAULT_ABANDON_AFTER),
            target: None,
            watch: WritableWatch::default(),
        }
    }

    /// What the manager's handles share (a pool's members are told when
    /// they are let go through it).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The connection settings (no password shown when printed).
    pub fn settings(&self) -> &Settings {
        self.inner.settings()
    }

    /// Waits for the connection and takes it: whatever an earlier holder
    /// left undone is finished first (an interrupted request cancelled and
    /// drained, a transaction rolled back), and a connection is opened if
    /// there is none or the server closed it.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the connection had to be opened and could not
    /// be; the connection is released.
    pub async fn lock(&self) -> Result<Guard<'_>> {
        let held = self.inner.acquire().await?;
        Ok(Guard::new(Lease::new(held)))
    }

    /// Takes the connection if nobody holds it; never waits for another
    /// holder.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if another holder has it; otherwise as
    /// [`lock`](Self::lock).
    pub async fn try_lock(&self) -> Result<Guard<'_>> {
        let held = self.inner.try_acquire().await?;
        Ok(Guard::new(Lease::new(held)))
    }

    /// Takes the connection, waiting at most `timeout` in all (for the
    /// holder before, and to ready the connection).
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if that took longer; otherwise as
    /// [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(locked) => locked,
            Err(_) => Err(Error::LockTimeout(timeout)),
        }
    }

    /// Runs `work` in a transaction and returns what it hands back.
    ///
    /// `work` is an async closure that gets the [`Tx<Open>`](Tx) and must
    /// return it finished: `tx.commit().await` or `tx.rollback().await`
    /// (with [`Tx::commit_returning`] or [`Tx::returning`] to hand a value
    /// back). Its lifetime brands it, so a `Tx` of another transaction, or
    /// an unfinished one, does not compile, and the `Tx` cannot escape.
    ///
    /// ```no_run
    /// # async fn demo(manager: &pgtx::aio::ManagedConnection) -> pgtx::Result<()> {
    /// let balance: i64 = manager
    ///     .transaction(async |mut tx| {
    ///         tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
    ///         tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]).await?;
    ///         let row = tx.query_one("SELECT balance FROM accounts WHERE id = 1", &[]).await?;
    ///         tx.commit_returning(row.get(0)).await
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Any `Err` from `work`, unchanged, after the transaction was rolled
    /// back (not reported as unfinished: the error is the report); or,
    /// converted into `E`, the error of taking the connection (`work` has
    /// not run).
    ///
    /// # Panics
    ///
    /// A panic in `work` is passed on; the transaction is rolled back (on
    /// a task of the runtime) and reported.
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_with(TxOptions::default(), work).await
    }

    /// [`transaction`](Self::transaction) with an isolation level,
    /// read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction).
    pub async fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run(self, options, work).await
    }

    /// Runs `work` in a transaction, again on a serialization failure
    /// (SQLSTATE 40001) or a deadlock (40P01), as `policy` allows: the
    /// async counterpart of [`crate::ManagedConnection::transaction_retrying`],
    /// waiting between runs without blocking the thread. The closure must
    /// have no effects outside the transaction: it may run more than once.
    /// A run is never retried after a `COMMIT` of unknown outcome.
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction), and
    /// [`Error::RetriesExhausted`] (with the last failure) when every run
    /// `policy` allows was refused.
    pub async fn transaction_retrying<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_retrying_with(TxOptions::default(), policy, work)
            .await
    }

    /// [`transaction_retrying`](Self::transaction_retrying) with an
    /// isolation level, read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`transaction_retrying`](Self::transaction_retrying).
    pub async fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run_retrying(self, options, policy, work).await
    }

    /// The transaction status, read without waiting for the holder: the
    /// server's own word (the status of its last answer).
    pub fn status(&self) -> TransactionStatus {
        self.inner.status()
    }

    /// How many unfinished transactions (and unfinished COPYs) the
    /// fallback rolled back and reported.
    pub fn unfinished_transactions(&self) -> u64 {
        self.inner.unfinished()
    }

    /// How many `COMMIT`s had their future dropped after they were sent
    /// (each is logged with what the server did: committed or not).
    pub fn interrupted_commits(&self) -> u64 {
        self.inner.interrupted_commits()
    }

    /// A handle that cancels the statement running on this manager's
    /// connection, from any task (see [`CancelHandle`] for what it
    /// cancels and what it never does).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> pgtx::Result<()> {
    /// let manager = pgtx::aio::ManagedConnection::new("host=localhost user=postgres")?;
    /// let cancel = manager.cancel_handle();
    /// assert!(!cancel.cancel().await?, "nothing is running: nothing is sent");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle::new(Arc::clone(&self.inner.shared.cancel))
    }

    /// A [`Listener`] on a connection of its own, with this manager's
    /// settings (its hooks do not run there).
    ///
    /// # Errors
    ///
    /// As [`Listener::connect`].
    pub async fn listener(&self) -> Result<Listener> {
        Listener::open(self.settings().clone()).await
    }
}

impl Source for ManagedConnection {
    fn lock_for_scope(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        self.lock()
    }
}

impl fmt::Debug for ManagedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::ManagedConnection")
            .field("settings", self.settings())
            .field("status", &self.status())
            .finish()
    }
}

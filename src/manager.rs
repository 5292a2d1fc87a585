//! The public handle on one shared connection, and the `transaction` scope.

use std::fmt;

use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::DbError;
use crate::blocking::driver::Blocking;
use crate::blocking::factory::ConnectionFactory;
use crate::blocking::held::Held;
use crate::blocking::hooks::{Hook, NewConnection, OnConnect, OnReconnect};
use crate::blocking::lease::{Ticket, Wait};
use crate::blocking::outage::BackgroundReconnect;
use crate::blocking::session::ConnectionSetup;
use crate::blocking::shared::{OnRelease, Shared};
use crate::cancel::CancelHandle;
use crate::config::{SessionTarget, Settings};
use crate::conn::NoticeHandler;
use crate::conn::writable::WritableWatch;
use crate::error::{Error, HookError, Result};
use crate::guard::Guard;
use crate::listener::Listener;
use crate::machine::options::TxOptions;
use crate::machine::reconnect::ReconnectPolicy;
use crate::machine::retry::RetryPolicy;
use crate::machine::transaction_status::TransactionStatus;
use crate::scope;
use crate::state::{Done, Open};
use crate::statements::Naming;
use crate::tx::Tx;

/// How long a holder may run nothing, while others wait, before it counts as
/// abandoned. See [`Builder::abandon_after`].
pub const DEFAULT_ABANDON_AFTER: Duration = Duration::from_secs(30);

/// One PostgreSQL connection shared by many threads, one holder at a time.
///
/// Creating it does not connect: the connection is opened by the first
/// holder, and opened again by the next holder whenever it was closed, broke,
/// or was dropped by the server while idle. Share it between threads by
/// reference (it is `Send + Sync`), in an `Arc`, or in a `static`.
///
/// Take the connection with [`transaction`](Self::transaction) (a closure:
/// the compiler makes sure it commits or rolls back) or with
/// [`lock`](Self::lock) (a [`Guard`] that begins [`Tx`]s and runs
/// autocommit statements).
///
/// # What happens to unfinished transactions
///
/// The compiler checks the closure form; whatever it cannot see is caught at
/// run time, rolled back, and reported as [`Error::UnfinishedTransaction`]
/// (whose message is exactly [`UNFINISHED_TRANSACTION`](crate::UNFINISHED_TRANSACTION)):
///
/// - a `Tx<Open>` dropped by an early return or a panic is rolled back on the
///   spot, before the connection is released;
/// - a `Tx<Open>` or [`Guard`] lost with `mem::forget` is rolled back by the
///   next acquirer, which takes the connection over as soon as the holder
///   is seen to be abandoned (see [`Builder::abandon_after`]);
///
/// Drop has no return path, so these are reported through the `log` crate
/// (at `error` level) and counted in [`unfinished_transactions`](Self::unfinished_transactions).
/// The log line names where the transaction was begun: the file, line and
/// column of its [`Guard::begin`] (or `begin_with`) call, or of the
/// [`transaction`](Self::transaction) call for a closure transaction.
/// Without a logger only the counter shows it, which says that it happened
/// but not where.
/// A closure that returns `Err` gets its error back unchanged, with the
/// transaction rolled back, just as psycopg2-managed-connection propagates
/// the exception.
///
/// # Asking again on the same thread
///
/// The lock is not re-entrant. Waiting for it on the thread that holds it
/// would deadlock, and the earlier [`Guard`] or [`Tx`] may well be alive (a
/// helper called with a guard in scope), so a thread that asks again gets
/// [`Error::Reentrant`] at once; the earlier holder and its transaction are
/// untouched. Pass the `Tx` or the `Guard` down to code that needs the
/// connection instead of asking the manager again.
///
/// A hold that was really forgotten (`mem::forget`) is taken over, its
/// transaction rolled back and reported, once it has run nothing for
/// [`Builder::abandon_after`] (by any thread, this one included), or at
/// once by another thread after its own thread exited; the forgotten value
/// fails with [`Error::LeaseRevoked`] if it is used again. Inside a
/// [`transaction`](Self::transaction) closure the hold is provably alive
/// and is never taken over for idleness by its own thread.
pub struct ManagedConnection {
    shared: Shared,
}

static_assertions::assert_impl_all!(ManagedConnection: Send, Sync);

/// Builds a [`ManagedConnection`] with settings other than the defaults.
///
/// ```
/// use std::time::Duration;
///
/// let manager = pgtx::ManagedConnection::builder("host=localhost user=postgres")
///     .abandon_after(Some(Duration::from_secs(5)))
///     .build()?;
/// # Ok::<(), pgtx::Error>(())
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    dsn: String,
    abandon_after: Option<Duration>,
    on_connect: Option<OnConnect>,
    on_reconnect: Vec<OnReconnect>,
    reconnect: Option<ReconnectPolicy>,
    /// Set by a pool for its connections.
    on_release: Option<OnRelease>,
    statement_cache: bool,
    on_notice: Option<NoticeHandler>,
    /// Replaces the connection string's `target_session_attrs`.
    target: Option<SessionTarget>,
    /// Shared by every manager this builder (and its clones, a pool's
    /// members) makes.
    watch: WritableWatch,
}

impl fmt::Debug for Builder {
    /// Shows the connection string as [`Settings`] shows it: any password
    /// removed (or the string withheld, if it cannot be read).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Builder");
        match Settings::parse(&self.dsn) {
            Ok(settings) => s.field("settings", &settings),
            Err(_) => s.field("settings", &"<unreadable connection string, not shown>"),
        };
        s.field("abandon_after", &self.abandon_after)
            .field("on_connect", &self.on_connect.as_ref().map(|_| "<hook>"))
            .field("on_reconnect", &self.on_reconnect.len())
            .field("on_notice", &self.on_notice.as_ref().map(|_| "<handler>"))
            .field("reconnect", &self.reconnect)
            .field("statement_cache", &self.statement_cache)
            .field("target", &self.target)
            .finish()
    }
}

impl Builder {
    /// How long a holder may run no statement while another thread waits
    /// before the waiter treats it as abandoned (a `Guard` or `Tx` that was
    /// forgotten on a thread that is still alive), rolls back what it left
    /// open, and takes the connection. The revoked holder's next call fails
    /// with [`Error::LeaseRevoked`], so its work is never silently lost.
    ///
    /// Default: [`DEFAULT_ABANDON_AFTER`] (30 s), far beyond any healthy
    /// gap between two statements. `None` never takes a live thread's lease
    /// (a forgotten guard then blocks [`lock`](ManagedConnection::lock) until
    /// that thread exits; [`lock_timeout`](ManagedConnection::lock_timeout)
    /// still returns, and the forgetting thread itself gets
    /// [`Error::Reentrant`]). A holder whose thread exited is recognised at
    /// once whatever this is set to.
    ///
    /// The holding thread asking again is refused with
    /// [`Error::Reentrant`] until its hold has run nothing for this long;
    /// then it takes the forgotten hold over itself.
    pub fn abandon_after(mut self, limit: Option<Duration>) -> Self {
        self.abandon_after = limit;
        self
    }

    /// Runs `hook` on every new connection (the first, and each one opened
    /// after a connection was lost or closed) before anyone gets it: `SET`
    /// session settings, `PREPARE` statements, check the server version.
    /// Its statements run in autocommit mode on a [`NewConnection`].
    ///
    /// If the hook returns an error, or leaves a transaction block open,
    /// that connection is closed unused and the call that needed it
    /// ([`lock`](ManagedConnection::lock),
    /// [`transaction`](ManagedConnection::transaction), …) fails with
    /// [`Error::OnConnect`] carrying the hook's error; the next call opens
    /// a new connection and runs the hook again. A hook that panics
    /// panics the call that needed the connection (the connection is closed).
    ///
    /// Setting it again replaces the previous hook. It does not run on the
    /// connections of [`listener`](ManagedConnection::listener)s.
    ///
    /// # Examples
    ///
    /// ```
    /// let manager = pgtx::ManagedConnection::builder("host=localhost user=postgres")
    ///     .on_connect(|conn| {
    ///         conn.batch_execute("SET search_path = app, public; SET application_name = 'billing'")?;
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut NewConnection<'_>) -> Result<(), HookError> + Send + Sync + 'static,
    {
        self.on_connect = Some(Hook::new(Arc::new(hook)));
        self
    }

    /// Tells `handler` every notice the server sends on this manager's
    /// connections (`RAISE NOTICE`, warnings, …), besides the log line
    /// pgtx writes for each (`info` level). It runs on the thread that
    /// waits for the statement that drew the notice, while that statement
    /// runs: it must be quick, and must not use this manager (its
    /// connection is busy). A panic in it is caught and logged; the
    /// statement goes on. Setting it again replaces the previous handler;
    /// listeners' connections do not have it.
    ///
    /// # Examples
    ///
    /// ```
    /// let manager = pgtx::ManagedConnection::builder("host=localhost user=postgres")
    ///     .on_notice(|notice| eprintln!("{}: {}", notice.severity(), notice.message()))
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn on_notice<F>(mut self, handler: F) -> Self
    where
        F: Fn(&DbError) + Send + Sync + 'static,
    {
        self.on_notice = Some(Arc::new(handler));
        self
    }

    /// Reconnects in the background, on `policy`, when the connection is
    /// lost and cannot be opened again at once: while it is down, every
    /// call ([`lock`](ManagedConnection::lock),
    /// [`transaction`](ManagedConnection::transaction), …) fails at once
    /// with [`Error::ConnectionDead`], without waiting for anyone, for a
    /// connect timeout, or sending anything.
    ///
    /// How it goes: the call that finds the connection gone (the server
    /// closed it, a statement failed because it broke: I/O errors, SQLSTATE
    /// class 08, 57P01–57P03) makes the policy's first attempt itself, at
    /// once; if that fails, one background thread makes the next ones on
    /// the policy's schedule (by default txpostgres': 1.7 s, then ×1.7 up
    /// to 10 s, each wait ±12 %, for ever; see
    /// [the schedule](ReconnectPolicy#the-schedule)) and hands the new
    /// connection to the next call. If a round of attempts runs out
    /// ([`ReconnectPolicy::max_attempts`]), the next call gets
    /// [`Error::ReconnectFailed`] (with the round's first and last failure)
    /// and the call after it starts again. Errors that do not
    /// mean the connection is dead (a syntax error, a deadlock) never
    /// reconnect.
    ///
    /// Without it (the default), every call that finds no connection tries
    /// to open one, waiting up to `connect_timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgtx::{ManagedConnection, ReconnectPolicy};
    ///
    /// let manager = ManagedConnection::builder("host=localhost user=postgres connect_timeout=2")
    ///     .reconnect(ReconnectPolicy::default().max_delay(Duration::from_secs(5)).jitter(0.2))
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Adds a recovery handler: it runs once on the first connection opened
    /// after one was lost (whether the reconnect was made by a call or in
    /// the background of [`reconnect`](Self::reconnect)), after the
    /// [`on_connect`](Self::on_connect) hook, before anyone gets the
    /// connection. Use it to resynchronise what the outage may have made
    /// stale (caches, `LISTEN`s elsewhere). Handlers run in the order
    /// added; one that fails or panics is logged (`log`, `error` level)
    /// and the others, and the recovery, go on.
    ///
    /// It does not run on the first connection, nor after
    /// [`close`](ManagedConnection::close). It does run after a failover:
    /// with `target_session_attrs` `read-write` or `primary`, a connection
    /// whose server turned read-only is given up as lost (see the README's
    /// "Replicas and failover").
    pub fn on_reconnect<F>(mut self, handler: F) -> Self
    where
        F: Fn(&mut NewConnection<'_>) -> Result<(), HookError> + Send + Sync + 'static,
    {
        self.on_reconnect.push(Hook::new(Arc::new(handler)));
        self
    }

    /// Whether SQL text is prepared once per connection under a name and
    /// reused (`true`, the default), or runs on the unnamed statement every
    /// time (`false`), for a transaction pooler between pgtx and the server:
    /// PgBouncer with `pool_mode = transaction`, Supavisor or pgcat in
    /// transaction mode, and the like.
    ///
    /// Such a pooler lends a client a server connection for one
    /// transaction block (and, outside one, for one Sync group of the
    /// extended protocol) and then gives it to another client. A named
    /// prepared statement stays behind on the server connection that
    /// prepared it, so running it again from another one fails with
    /// "prepared statement … does not exist" (or, when another client's
    /// name was left there, "already exists"). Debian's PgBouncer 1.18 does
    /// not carry them over (PgBouncer 1.21's `max_prepared_statements`
    /// does).
    ///
    /// With `false`:
    ///
    /// - each statement is Parse, Bind, Describe and Execute of the unnamed
    ///   statement in one Sync group: one round trip, nothing left behind.
    ///   The types of a text's parameters are looked up the first time it
    ///   runs on a connection (two more round trips, in a transaction block
    ///   of their own so that the pooler keeps one server connection for
    ///   them; none for a text run without parameters) and remembered;
    /// - `BEGIN`, `COMMIT` and savepoint commands go as they always do
    ///   (never as named statements, see below);
    /// - [`Guard::prepare`] (and [`Tx::prepare`], [`NewConnection::prepare`])
    ///   returns [`Error::PreparedStatementsOff`]: pass the SQL text.
    ///
    /// With `true` (the default), statements are named prepared statements,
    /// which saves the server parsing them again: use it on a direct
    /// connection or a session-pooled one. Text whose rows take their
    /// shape only when it runs (`FETCH`, `EXECUTE`, `CALL`) runs on the
    /// unnamed statement either way, described each time.
    ///
    /// pgtx's own statements are never named, whatever this is set to:
    /// `BEGIN` goes as the unnamed statement in the same write and Sync
    /// group as the transaction's first statement (so a refused `BEGIN`
    /// stops the statement), `SAVEPOINT` and `RELEASE` as the unnamed
    /// statement, `COMMIT` and `ROLLBACK` as simple queries. SQL can
    /// redefine a named statement where pgtx cannot see it (a `DO` block
    /// running `DEALLOCATE` and `PREPARE`), and a `BEGIN` or `COMMIT`
    /// redefined that way would break the guarantee.
    ///
    /// # What a transaction pooler breaks anyway
    ///
    /// Whatever this is set to, every transaction, and every autocommit
    /// statement of a [`Guard`], may run on another server session:
    ///
    /// - session state does not follow the client, and is left behind for
    ///   other clients to inherit: `SET` (use `SET LOCAL` in a
    ///   transaction, or settings on the role or database), including those
    ///   of an [`on_connect`](Self::on_connect) hook; temporary tables;
    ///   session advisory locks (`pg_advisory_xact_lock` works);
    ///   `WITH HOLD` cursors;
    /// - `LISTEN`: a [`Listener`] needs a direct (or session-pooled)
    ///   connection, `Listener::connect(direct_dsn)`;
    ///   [`ManagedConnection::listener`] connects with this manager's
    ///   settings;
    /// - user-defined types (enums, composites, domains) in parameters or
    ///   columns: tokio-postgres looks them up with named statements of
    ///   its own; cast them from and to built-in types (`$1::text::mood`,
    ///   `mood::text`).
    ///
    /// What works: transactions, savepoints,
    /// [`transaction_retrying`](ManagedConnection::transaction_retrying)
    /// and autocommit statements; rolling back a dropped or forgotten
    /// transaction (the server connection stays lent until its `ROLLBACK`);
    /// [`CancelHandle`] (PgBouncer forwards a cancel request to the server
    /// connection the client has at that moment).
    ///
    /// # Examples
    ///
    /// ```
    /// // PgBouncer (pool_mode = transaction) listening on port 6432.
    /// let manager = pgtx::ManagedConnection::builder("host=localhost port=6432 user=app")
    ///     .statement_cache(false)
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = on;
        self
    }

    /// Which servers of the host list its connections may go to, in place
    /// of the connection string's `target_session_attrs` (see
    /// [`Settings::with_target`]): one host list read two ways, a pool for
    /// writes beside one for reads.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgtx::{ManagedConnection, SessionTarget, TxOptions};
    ///
    /// let servers = ManagedConnection::builder("host=db1,db2 user=app connect_timeout=5");
    /// // Writes find the primary, wherever a failover put it.
    /// let writes = servers.clone().target(SessionTarget::ReadWrite).pool(8).build()?;
    /// // Reads go to a standby while one answers, else to the primary.
    /// let reads = servers.target(SessionTarget::PreferStandby).pool(8).build()?;
    /// # let _ = |writes: pgtx::Pool, reads: pgtx::Pool| -> pgtx::Result<i64> {
    /// let total: i64 = reads.transaction_with(TxOptions::new().read_only(true), |mut tx| {
    ///     let total = tx.query_one("SELECT count(*) FROM orders", &[])?.get(0);
    ///     tx.commit_returning(total)
    /// })?;
    /// # Ok(total) };
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
    /// [`Error::Settings`] if the connection string cannot be read;
    /// [`Error::Runtime`] if the runtime that will drive its connections
    /// could not be made (the system refused its file descriptors).
    pub fn build(self) -> Result<ManagedConnection> {
        let mut settings = Settings::parse(&self.dsn)?;
        if let Some(target) = self.target {
            settings = settings.with_target(target);
        }
        let naming = Naming::with_statement_cache(self.statement_cache);
        Ok(ManagedConnection {
            shared: Shared::new(
                self.abandon_after,
                ConnectionSetup {
                    factory: Arc::new(
                        ConnectionFactory::new(settings, naming)
                            .with_on_connect(self.on_connect)
                            .with_on_reconnect(self.on_reconnect)
                            .with_on_notice(self.on_notice)
                            .with_watch(self.watch),
                    ),
                    background_reconnect: self.reconnect.map(BackgroundReconnect::new),
                    runtime: Blocking::new()?,
                },
                self.on_release,
            ),
        })
    }
}

impl ManagedConnection {
    /// Reads the connection settings; does not connect.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`], naming what is wrong, if `dsn` cannot be read;
    /// [`Error::Runtime`] if the runtime that will drive its connections
    /// could not be made (the system refused its file descriptors).
    ///
    /// # Examples
    ///
    /// ```
    /// let manager = pgtx::ManagedConnection::new("postgres:///postgres")?;
    /// assert_eq!(manager.to_string(), "<ManagedConnection: postgres:///postgres (closed)>");
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn new(dsn: &str) -> Result<ManagedConnection> {
        Self::builder(dsn).build()
    }

    /// Starts a [`Builder`] for settings other than the defaults.
    pub fn builder(dsn: &str) -> Builder {
        Builder {
            dsn: dsn.to_owned(),
            abandon_after: Some(DEFAULT_ABANDON_AFTER),
            on_connect: None,
            on_reconnect: Vec::new(),
            reconnect: None,
            on_release: None,
            statement_cache: true,
            on_notice: None,
            target: None,
            watch: WritableWatch::default(),
        }
    }

    /// The settings, with any password hidden when shown.
    pub fn settings(&self) -> &Settings {
        self.shared.settings()
    }

    /// Runs `work` in a transaction and returns what it hands back.
    ///
    /// Waits for the connection, opens it if needed, and calls `work` with
    /// the open transaction (whose `BEGIN` goes out with its first
    /// statement; see [`Guard::begin`]). `work` must end it: the only way to
    /// produce the `Tx<'_, Done<T>>` it returns is [`Tx::commit`] or
    /// [`Tx::rollback`] on *this* transaction (the lifetime `'s` brands it), so
    /// forgetting to finish does not compile. [`Tx::commit_returning`] (or
    /// [`Tx::returning`]) attaches the value to hand back.
    ///
    /// The connection is released when this returns, whatever `work` did:
    /// `transaction`, not a value `work` could forget, owns the lock.
    ///
    /// # Errors
    ///
    /// - Any `Err` from `work`, unchanged; the transaction is rolled back first.
    ///   If that `ROLLBACK` cannot be sent (the connection broke), the
    ///   connection is closed, which makes the server roll back, and the
    ///   failure is logged (`warn`): `work`'s error is still the one
    ///   returned, never replaced by the rollback's.
    /// - [`Error`] (converted into `E`) if the connection can't be opened;
    ///   `work` has not run.
    /// - [`Error::Reentrant`] if this thread already holds the connection
    ///   (inside a `transaction` closure of this manager, or with a guard
    ///   it has not released); `work` has not run. A refused `BEGIN` is the first statement's
    ///   error, which `work` sees (and usually returns).
    ///
    /// # Panics
    ///
    /// If `work` panics, the transaction is rolled back, the connection
    /// released, the rollback reported as an unfinished transaction (its log
    /// line names this `transaction(...)` call's file and line), and the
    /// panic continues.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
    /// let total: i64 = manager.transaction(|mut tx| {
    ///     tx.execute("INSERT INTO ledger (amount) VALUES ($1)", &[&10_i64])?;
    ///     let total = tx.query_one("SELECT sum(amount)::bigint FROM ledger", &[])?.get(0);
    ///     tx.commit_returning(total)
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    #[track_caller]
    pub fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_with(TxOptions::default(), work)
    }

    /// [`transaction`](Self::transaction) with an isolation level, read-only
    /// or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction).
    ///
    /// # Panics
    ///
    /// As [`transaction`](Self::transaction).
    #[track_caller]
    pub fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run(self.lock(), options, Location::caller(), work)
    }

    /// Runs `work` in a transaction as [`transaction`](Self::transaction)
    /// does, and runs it again, whole, each time the server refused it with
    /// a serialization failure (SQLSTATE 40001) or a deadlock (40P01), as
    /// PostgreSQL expects of applications using `SERIALIZABLE` or
    /// `REPEATABLE READ` (or any that can deadlock): with the waits and the
    /// number of runs of `policy` (by default at most 5 runs, 10 ms then
    /// doubling, ±50 % jitter).
    ///
    /// What counts is what the server said, whatever `work` returned:
    /// a run is retried when `work` returned `Err` and the last error the
    /// server reported in that transaction (a statement's or `COMMIT`'s) was
    /// 40001 or 40P01. Any other error is returned at once, unchanged; so
    /// is [`Error::CommitOutcomeUnknown`] (the run may have committed), and
    /// a lost connection.
    ///
    /// `work` is `FnMut` because it may run several times: it must have no
    /// effects outside the transaction (sending mail, changing memory the
    /// caller reads afterwards) that a retry would repeat or that a failed
    /// run should have undone. Only what it does through its `Tx` is rolled
    /// back between runs.
    ///
    /// # Errors
    ///
    /// - [`Error::RetriesExhausted`] (converted into `E`) if every run
    ///   allowed was refused; it says how many were made and carries the
    ///   last refusal. Nothing was committed.
    /// - Otherwise as [`transaction`](Self::transaction).
    ///
    /// # Panics
    ///
    /// As [`transaction`](Self::transaction); a panic is not retried.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pgtx::{IsolationLevel, ManagedConnection, RetryPolicy, TxOptions};
    ///
    /// let manager = ManagedConnection::new("host=localhost user=postgres")?;
    /// let serializable = TxOptions::new().isolation(IsolationLevel::Serializable);
    /// manager.transaction_retrying_with(serializable, &RetryPolicy::default(), |mut tx| {
    ///     let balance: i64 = tx.query_one("SELECT balance FROM accounts WHERE id = 1", &[])?.get(0);
    ///     tx.execute("UPDATE accounts SET balance = $1 WHERE id = 1", &[&(balance - 10)])?;
    ///     tx.commit()
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    #[track_caller]
    pub fn transaction_retrying<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_retrying_with(TxOptions::default(), policy, work)
    }

    /// [`transaction_retrying`](Self::transaction_retrying) with an
    /// isolation level, read-only or deferrable mode (each run begins with
    /// them).
    ///
    /// # Errors
    ///
    /// As [`transaction_retrying`](Self::transaction_retrying).
    ///
    /// # Panics
    ///
    /// As [`transaction`](Self::transaction).
    #[track_caller]
    pub fn transaction_retrying_with<T, E, F>(
        &self,
        options: TxOptions,
        policy: &RetryPolicy,
        work: F,
    ) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run_retrying(|| self.lock(), options, Location::caller(), policy, work)
    }

    /// Takes the connection, waiting as long as it takes.
    ///
    /// Opens the connection if there is none, or if the server closed it
    /// while it sat idle, so the guard never carries a dead connection that
    /// could have been detected. Waiters are served fairly: none waits behind
    /// newcomers for more than about a millisecond before it is handed the
    /// connection directly. A holder
    /// found abandoned is taken over (see [`Builder::abandon_after`] and
    /// [Asking again on the same thread](Self#asking-again-on-the-same-thread)).
    ///
    /// # Errors
    ///
    /// - [`Error::Connect`] if the connection had to be opened and could not
    ///   be; the connection is released.
    /// - [`Error::Reentrant`] at once if this thread holds the connection
    ///   already (see [Asking again on the same
    ///   thread](Self#asking-again-on-the-same-thread)).
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.acquire(Wait::Forever)
    }

    /// Takes the connection if nobody holds it; never waits for another holder.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if another thread holds it; otherwise as [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Guard<'_>> {
        self.acquire(Wait::Never)
    }

    /// Takes the connection, waiting at most `timeout` for another holder.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if it is still held after `timeout`; otherwise
    /// as [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        let deadline = Instant::now().checked_add(timeout);
        let wait = deadline.map_or(Wait::Forever, Wait::Until);
        self.acquire(wait).map_err(|e| match e {
            Error::LockTimeout(_) => Error::LockTimeout(timeout),
            other => other,
        })
    }

    /// The transaction status, read without waiting for the holder.
    ///
    /// It is the server's own word (the status of its last answer), so SQL
    /// such as a plain `BEGIN` or `ROLLBACK TO SAVEPOINT` shows here as it
    /// happens; a transaction begun with [`Guard::begin`] reads
    /// [`TransactionStatus::InTransaction`] before its first statement.
    pub fn status(&self) -> TransactionStatus {
        self.shared.status()
    }

    /// Whether there is no usable connection right now (never opened,
    /// closed, or broken). The next holder opens one.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.status(),
            TransactionStatus::Closed | TransactionStatus::Unknown
        )
    }

    /// Waits for the connection and closes it. The next holder opens a new one.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] if this thread holds the connection: nothing
    /// was closed.
    pub fn close(&self) -> Result<()> {
        let held = self.acquire_lease(Wait::Forever)?;
        self.shared.session(held.ticket.epoch())?.close();
        Ok(())
    }

    /// How many transactions the runtime fallback has rolled back because they
    /// were neither committed nor rolled back: dropped, forgotten, or unwound
    /// by a panic. Each was also logged as [`Error::UnfinishedTransaction`].
    ///
    /// Also counted: a transaction block that SQL run through a [`Guard`]
    /// opened (a plain `BEGIN`) and left open, and a
    /// [`Savepoint`](crate::Savepoint) dropped or forgotten unfinished.
    ///
    /// The count does not say where those transactions were begun; the
    /// log line of each does (see [What happens to unfinished transactions](Self#what-happens-to-unfinished-transactions)).
    pub fn unfinished_transactions(&self) -> u64 {
        self.shared.unfinished()
    }

    /// Takes the lease and releases it again without touching the connection
    /// (no health check, no I/O): the part of [`lock`](Self::lock) plus
    /// dropping the guard that is pure bookkeeping. For `benches/throughput.rs`
    /// only (the non-default `bench-internals` feature): not API.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if another thread holds the connection.
    #[cfg(feature = "bench-internals")]
    #[doc(hidden)]
    pub fn bench_lease_cycle(&self) -> Result<()> {
        drop(self.acquire_lease(Wait::Never)?);
        Ok(())
    }

    /// A handle that cancels the statement running on this connection,
    /// from any thread (see [`CancelHandle`] for exactly what it cancels).
    ///
    /// # Examples
    ///
    /// ```
    /// let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
    /// let cancel = manager.cancel_handle();
    /// assert!(!cancel.cancel()?, "nothing is running: nothing is sent");
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle::new(self.shared.cancel_cell().clone())
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    fn acquire(&self, wait: Wait) -> Result<Guard<'_>> {
        let held = self.acquire_lease(wait)?;
        Self::ready(held)
    }

    /// A guard on `held`, with a live connection (opened if need be).
    pub(crate) fn ready(held: Held<'_>) -> Result<Guard<'_>> {
        held.shared().session(held.ticket.epoch())?.ensure_open()?;
        Ok(Guard::new(held))
    }

    /// The lease if it is free (or abandoned), without waiting; `None` if
    /// another holder has it or this thread holds it in a `transaction`
    /// scope. For a pool, which waits in a line of its own.
    pub(crate) fn try_lease(&self) -> Result<Option<Held<'_>>> {
        match self.acquire_lease(Wait::Never) {
            Ok(held) => Ok(Some(held)),
            Err(Error::WouldBlock | Error::Reentrant) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Closes the connection `held` holds (for a pool closing its idle ones).
    pub(crate) fn ready_to_close(held: Held<'_>) -> Result<()> {
        held.shared().session(held.ticket.epoch())?.close();
        Ok(())
    }

    /// The builder's `on_release`, for a pool's connections.
    pub(crate) fn on_release_for_pool(builder: Builder, on_release: OnRelease) -> Builder {
        Builder {
            on_release: Some(on_release),
            ..builder
        }
    }

    /// Takes the lease (rolling back whatever an abandoned holder left open).
    fn acquire_lease(&self, wait: Wait) -> Result<Held<'_>> {
        let epoch = self.shared.acquire(wait)?;
        Ok(Held::new(&self.shared, Ticket::new(epoch)))
    }

    /// A [`Listener`] for LISTEN/NOTIFY with the same settings, on a
    /// connection of its own: notifications arrive whether or not any
    /// thread holds this one, and waiting for them never holds it.
    ///
    /// # Errors
    ///
    /// As [`Listener::connect`]: [`Error::Connect`] if no server accepted
    /// the connection.
    pub fn listener(&self) -> Result<Listener> {
        Listener::open(self.settings().clone())
    }
}

impl Drop for ManagedConnection {
    /// Closes the connection politely, so the server sees the client leave
    /// rather than a reset socket. A transaction still open here was
    /// forgotten (nothing else can outlive the manager): it is rolled back
    /// and reported like any other.
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

impl fmt::Display for ManagedConnection {
    /// `<ManagedConnection: DSN (state)>`, as psycopg2-managed-connection
    /// shows itself, with any password removed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<ManagedConnection: {} ({})>",
            self.settings(),
            self.status()
        )
    }
}

impl fmt::Debug for ManagedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedConnection")
            .field("settings", self.settings())
            .field("status", &self.status())
            .field("unfinished_transactions", &self.unfinished_transactions())
            .finish_non_exhaustive()
    }
}

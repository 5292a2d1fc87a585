//! A fixed number of async managed connections shared by many tasks: the
//! same guards, transactions and cancel safety as one
//! [`ManagedConnection`], one connection per holder.
//!
//! A semaphore counts the free members and serves waiters first come,
//! first served; a member's permit is handed back when its lease is let go
//! (the manager is told once its session is unlocked), never by a value a
//! holder could forget separately from the lease.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::aio::guard::Guard;
use crate::aio::lease::Lease;
use crate::aio::listener::Listener;
use crate::aio::manager::{Builder, ManagedConnection};
use crate::aio::scope::{self, Source};
use crate::aio::session::Inner;
use crate::aio::tx::Tx;
use crate::error::{Error, Result};
use crate::machine::options::TxOptions;
use crate::machine::retry::RetryPolicy;
use crate::machine::transaction_status::TransactionStatus;
use crate::pool::PoolState;
use crate::state::{Done, Open};

/// A pool of `size` async [`ManagedConnection`]s behind one lock-like API:
/// [`lock`](Self::lock) hands out a [`Guard`] on whichever connection is
/// free, and [`transaction`](Self::transaction) runs a closure on one.
///
/// Everything an async manager promises holds for each connection (see
/// [`ManagedConnection`#cancel-safety](ManagedConnection#cancel-safety)):
/// a future dropped at any `.await` — waiting for a connection, in a
/// statement, in `COMMIT` — never hands the next task a dirty connection,
/// and never keeps a connection from the pool: once its holder is gone,
/// the connection is tidied and handed on.
///
/// # Checkout
///
/// - At most `size` connections are ever open, each opened the first time
///   it is needed (so a pool that never sees concurrency opens one).
/// - A free connection goes to the task that has waited longest (first
///   come, first served); [`lock_timeout`](Self::lock_timeout) gives up
///   with [`Error::LockTimeout`] and [`try_lock`](Self::try_lock) does not
///   wait for a connection to be let go.
/// - Connections that are already open are preferred over opening
///   another (the free member first opened).
/// - A connection that died while idle, or was left with work undone, is
///   replaced or tidied before anyone gets it.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> pgtx::Result<()> {
/// use std::sync::Arc;
///
/// let pool = Arc::new(pgtx::aio::Pool::new("host=localhost user=postgres", 4)?);
/// let mut tasks = Vec::new();
/// for i in 0..16_i32 {
///     let pool = pool.clone();
///     tasks.push(tokio::spawn(async move {
///         pool.transaction(async |mut tx| {
///             tx.execute("INSERT INTO jobs VALUES ($1)", &[&i]).await?;
///             tx.commit().await
///         })
///         .await
///     }));
/// }
/// for task in tasks {
///     task.await.expect("not panicked")?;
/// }
/// println!("{:?}", pool.state());
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    members: Box<[ManagedConnection]>,
    line: Arc<Line>,
}

static_assertions::assert_impl_all!(Pool: Send, Sync);

/// Which members are free, and the tasks waiting for one.
struct Line {
    /// One permit per free member; waiters are served in order.
    free: Semaphore,
    /// Members handed out (a permit was taken for each).
    taken: Box<[AtomicBool]>,
    /// Tasks waiting for a permit now.
    waiting: AtomicUsize,
}

impl Line {
    /// Member `index` was let go: back to the free ones.
    fn give_back(&self, index: usize) {
        self.taken[index].store(false, Ordering::Release);
        self.free.add_permits(1);
    }
}

/// A member taken for a caller that has no guard on it yet: dropped
/// before [`keep`](Claim::keep) (the caller's future dropped, or the
/// member failed to ready), it goes back to the free ones.
struct Claim<'p> {
    line: &'p Line,
    index: usize,
    kept: bool,
}

impl Claim<'_> {
    /// The guard holds the member now: its release gives it back.
    fn keep(mut self) {
        self.kept = true;
    }

    /// After readying the member for the caller: kept with the guard; kept
    /// too if the member was taken over meanwhile (the claim went with it,
    /// to the taker); otherwise given back.
    fn settle<T>(self, readied: Result<T>) -> Result<T> {
        if matches!(readied, Ok(_) | Err(Error::LeaseRevoked)) {
            self.keep();
        }
        readied
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.line.give_back(self.index);
        }
    }
}

/// Counts a waiter for as long as it waits (also if its future is dropped).
struct Waiting<'p>(&'p AtomicUsize);

impl<'p> Waiting<'p> {
    fn new(count: &'p AtomicUsize) -> Waiting<'p> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Builder {
    /// A pool of `size` connections with these settings (see [`Pool`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = pgtx::aio::ManagedConnection::builder("host=localhost user=postgres")
    ///     .statement_cache(false)
    ///     .pool(8)
    ///     .build()?;
    /// assert_eq!(pool.size(), 8);
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn pool(self, size: usize) -> PoolBuilder {
        PoolBuilder::new(self, size)
    }
}

/// Settings for a [`Pool`], from [`Builder::pool`].
#[must_use = "a pool builder does nothing until `build` is called"]
pub struct PoolBuilder {
    builder: Builder,
    size: usize,
    min_idle: usize,
}

impl PoolBuilder {
    pub(crate) fn new(builder: Builder, size: usize) -> PoolBuilder {
        PoolBuilder {
            builder,
            size: size.max(1),
            min_idle: 0,
        }
    }

    /// How many connections (at most the pool's size) [`connect`](Self::connect)
    /// opens before it hands the pool out. Default 0; [`build`](Self::build)
    /// opens none whatever this says.
    pub fn min_idle(mut self, connections: usize) -> Self {
        self.min_idle = connections;
        self
    }

    /// Builds the pool: `size` managers (at least one) with the
    /// builder's settings and hooks. Does not connect: each connection is
    /// opened the first time it is needed (see [`connect`](Self::connect)).
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read.
    pub fn build(self) -> Result<Pool> {
        let members = self.members()?;
        Ok(Self::assemble(members))
    }

    /// Builds the pool and opens [`min_idle`](Self::min_idle) of its
    /// connections first (one after the other), so that the first tasks
    /// do not wait for them.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read; any
    /// error opening one of those connections ([`Error::Connect`],
    /// [`Error::OnConnect`]): then no pool is made.
    pub async fn connect(self) -> Result<Pool> {
        let members = self.members()?;
        // Before the members are put in line: a guard let go here hands
        // nothing on.
        for member in members.iter().take(self.min_idle) {
            drop(member.lock().await?);
        }
        Ok(Self::assemble(members))
    }

    fn members(&self) -> Result<Box<[ManagedConnection]>> {
        (0..self.size).map(|_| self.builder.build_one()).collect()
    }

    /// The members in line: each one, let go, is free again.
    fn assemble(members: Box<[ManagedConnection]>) -> Pool {
        let line = Arc::new(Line {
            free: Semaphore::new(members.len()),
            taken: (0..members.len()).map(|_| AtomicBool::new(false)).collect(),
            waiting: AtomicUsize::new(0),
        });
        for (index, member) in members.iter().enumerate() {
            let line = Arc::clone(&line);
            member
                .inner()
                .on_release(Box::new(move || line.give_back(index)));
        }
        Pool { members, line }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::PoolBuilder")
            .field("builder", &self.builder)
            .field("size", &self.size)
            .field("min_idle", &self.min_idle)
            .finish()
    }
}

impl Pool {
    /// A pool of `size` connections (at least one) with default settings.
    /// Does not connect.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read.
    pub fn new(dsn: &str, size: usize) -> Result<Pool> {
        ManagedConnection::builder(dsn).pool(size).build()
    }

    /// Whether `inner` is one of this pool's members.
    pub(crate) fn has_member(&self, inner: &Arc<Inner>) -> bool {
        self.members.iter().any(|m| Arc::ptr_eq(m.inner(), inner))
    }

    /// How many connections the pool may open.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Waits for a free connection and takes it, as
    /// [`ManagedConnection::lock`] does for its one.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::lock`]: the connection could not be opened
    /// ([`Error::Connect`], [`Error::OnConnect`]) or is down
    /// ([`Error::ConnectionDead`]); the connection goes back to the pool.
    pub async fn lock(&self) -> Result<Guard<'_>> {
        let waiting = Waiting::new(&self.line.waiting);
        // One place in line for the whole wait (see `Inner::wait`).
        let mut acquire = pin!(self.line.free.acquire());
        loop {
            let check_in = self
                .members
                .iter()
                .filter_map(|member| member.inner().abandon_check_in())
                .min();
            let acquired = match check_in {
                None => Some(acquire.as_mut().await),
                Some(wait) => tokio::time::timeout(wait, acquire.as_mut()).await.ok(),
            };
            match acquired {
                Some(Ok(permit)) => {
                    permit.forget();
                    break;
                }
                // Never closed; if it were, ask again rather than poll a
                // finished future.
                Some(Err(_closed)) => acquire.set(self.line.free.acquire()),
                None => {
                    if let Some(taken) = self.take_over_abandoned().await {
                        return taken;
                    }
                }
            }
        }
        drop(waiting);
        self.take_claimed().await
    }

    /// A member whose holder has run nothing for `abandon_after`, taken
    /// over (see [`Builder::abandon_after`]): the holder's claim on it is
    /// the caller's now.
    async fn take_over_abandoned(&self) -> Option<Result<Guard<'_>>> {
        for (index, member) in self.members.iter().enumerate() {
            // Only a member a caller claimed: one the manager's own tasks
            // hold is not the pool's to hand out.
            if !self.line.taken[index].load(Ordering::Acquire) {
                continue;
            }
            let inner = member.inner();
            if let Some(held) = inner.take_over_if_abandoned() {
                // The abandoned holder's claim: back to the free ones if
                // the member cannot be readied (or this future is dropped).
                let claim = Claim {
                    line: &self.line,
                    index,
                    kept: false,
                };
                let readied = inner.ready(held).await;
                return Some(
                    claim
                        .settle(readied)
                        .map(|held| Guard::new(Lease::new(held))),
                );
            }
        }
        None
    }

    /// Takes a connection if one is free now, without waiting for one to
    /// be let go (it may still wait while the free one is readied).
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if every connection is held; otherwise as
    /// [`lock`](Self::lock).
    pub async fn try_lock(&self) -> Result<Guard<'_>> {
        match self.line.free.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                return match self.take_over_abandoned().await {
                    Some(taken) => taken,
                    None => Err(Error::WouldBlock),
                };
            }
        }
        self.take_claimed().await
    }

    /// As [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if no connection was free in time; otherwise
    /// as [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(locked) => locked,
            Err(_) => Err(Error::LockTimeout(timeout)),
        }
    }

    /// With a permit taken (a member is free): claims the first free
    /// member and readies it.
    async fn take_claimed(&self) -> Result<Guard<'_>> {
        let claim = self.claim().await;
        let readied = self.members[claim.index].lock().await;
        claim.settle(readied)
    }

    /// The first free member (one that is up, if any is), taken. A permit
    /// stands for one (a member is marked free before its permit is given
    /// back), so the first look finds it.
    async fn claim(&self) -> Claim<'_> {
        loop {
            // A member riding out an outage would fail at once
            // (`ConnectionDead`): another free one is taken first.
            let free = self
                .claim_where(|member| member.inner().refuse_while_down().is_ok())
                .or_else(|| self.claim_where(|_| true));
            if let Some(index) = free {
                return Claim {
                    line: &self.line,
                    index,
                    kept: false,
                };
            }
            tokio::task::yield_now().await;
        }
    }

    /// Takes the first free member that `wanted`.
    fn claim_where(&self, wanted: impl Fn(&ManagedConnection) -> bool) -> Option<usize> {
        self.line
            .taken
            .iter()
            .zip(self.members.iter())
            .position(|(taken, member)| {
                !taken.load(Ordering::Acquire)
                    && wanted(member)
                    && taken
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            })
    }

    /// Runs `work` in a transaction on a free connection, as
    /// [`ManagedConnection::transaction`] does.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction`].
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run(self, TxOptions::default(), work).await
    }

    /// As [`transaction`](Self::transaction), with `options`.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction_with`].
    pub async fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run(self, options, work).await
    }

    /// Runs `work` until it commits, running it again on a serialization
    /// failure or deadlock, as [`ManagedConnection::transaction_retrying`].
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction_retrying`].
    pub async fn transaction_retrying<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E>
    where
        F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run_retrying(self, TxOptions::default(), policy, work).await
    }

    /// As [`transaction_retrying`](Self::transaction_retrying), with `options`.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction_retrying`].
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

    /// A snapshot: connections in use and idle, tasks waiting, and the
    /// counts of the connections' lives.
    pub fn state(&self) -> PoolState {
        let statuses: Vec<TransactionStatus> =
            self.members.iter().map(ManagedConnection::status).collect();
        let in_use = self
            .line
            .taken
            .iter()
            .filter(|taken| taken.load(Ordering::Acquire))
            .count();
        let idle = self
            .line
            .taken
            .iter()
            .zip(&statuses)
            .filter(|(taken, status)| {
                !taken.load(Ordering::Acquire) && **status != TransactionStatus::Closed
            })
            .count();
        PoolState {
            size: self.size(),
            in_use,
            idle,
            waiting: self.line.waiting.load(Ordering::Relaxed),
            replaced: self.members.iter().map(|m| m.inner().replaced()).sum(),
            unfinished: self
                .members
                .iter()
                .map(ManagedConnection::unfinished_transactions)
                .sum(),
            statuses,
        }
    }

    /// A [`Listener`] on a connection of its own, with the pool's settings.
    ///
    /// # Errors
    ///
    /// As [`Listener::connect`].
    pub async fn listener(&self) -> Result<Listener> {
        match self.members.first() {
            Some(member) => member.listener().await,
            None => Err(Error::ConnectionLost(None)),
        }
    }

    /// How many `COMMIT`s had their future dropped after they were sent,
    /// all connections (see [`ManagedConnection::interrupted_commits`]).
    pub fn interrupted_commits(&self) -> u64 {
        self.members
            .iter()
            .map(ManagedConnection::interrupted_commits)
            .sum()
    }
}

impl Source for Pool {
    fn lock_for_scope(&self) -> impl Future<Output = Result<Guard<'_>>> + Send {
        self.lock()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::Pool")
            .field(
                "settings",
                &self.members.first().map(ManagedConnection::settings),
            )
            .field("state", &self.state())
            .finish()
    }
}

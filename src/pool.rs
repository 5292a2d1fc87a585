//! A fixed number of managed connections shared by many threads: the same
//! `Guard`s, `Tx`s and fallbacks as one [`ManagedConnection`], one
//! connection per holder.

use std::collections::VecDeque;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::blocking::held::Held;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::listener::Listener;
use crate::machine::options::TxOptions;
use crate::machine::retry::RetryPolicy;
use crate::machine::transaction_status::TransactionStatus;
use crate::manager::{Builder, ManagedConnection};
use crate::scope;
use crate::state::{Done, Open};
use crate::tx::Tx;

// The line keeps the single connection's polling (see lease.rs): the
// first waiter looks every `ABANDON_POLL` (a holder may have been
// abandoned, which only a look can tell), the others every `BEHIND_POLL`.
// Until the first waiter has waited `fair_after`, a thread that releases a
// connection and asks again may take one straight back without waking
// anyone (a thread switch per transaction costs more than the
// transaction); after it, a release wakes the first waiter and nobody
// goes ahead of it.
use crate::blocking::lease::{ABANDON_POLL as FRONT_POLL, BEHIND_POLL};

/// A pool of `size` [`ManagedConnection`]s behind one lock-like API:
/// [`lock`](Self::lock) hands out a [`Guard`] on whichever connection is
/// free, and [`transaction`](Self::transaction) runs a closure on one.
///
/// Everything a manager promises holds for each connection: an unfinished
/// `Tx` is rolled back and reported, a forgotten `Guard` or `Tx` is taken
/// over (when its thread asks again with every other connection busy, when
/// its thread has exited, or after [`Builder::abandon_after`] while others
/// wait), SQL transaction control is refused inside a `Tx`, and a
/// connection that died while idle, or was left in a transaction block, is
/// replaced or rolled back before anyone gets it.
///
/// # Checkout
///
/// - At most `size` connections are ever open, each opened the first time
///   it is needed (so a pool that never sees concurrency opens one);
///   [`PoolBuilder::min_idle`] opens some at [`build`](PoolBuilder::build).
/// - A free connection goes to the thread that has waited longest (first
///   come, first served); [`lock_timeout`](Self::lock_timeout) gives up
///   with [`Error::LockTimeout`] and [`try_lock`](Self::try_lock) never
///   waits.
/// - Connections that are already open are preferred over opening another.
/// - A thread that holds a connection of the pool and asks for another
///   gets another one if one is free. If none is, and it holds just the
///   one, outside a `transaction` closure, that one is taken for forgotten
///   (as a manager does) rather than waited for; otherwise it waits like
///   anyone else (a forgotten one among several is taken over after
///   [`Builder::abandon_after`]).
///
/// # Examples
///
/// ```no_run
/// use pgtx::Pool;
///
/// let pool = Pool::new("host=localhost user=postgres", 4)?;
/// std::thread::scope(|s| {
///     for i in 0..16 {
///         let pool = &pool;
///         s.spawn(move || {
///             pool.transaction(|mut tx| {
///                 tx.execute("INSERT INTO jobs VALUES ($1)", &[&i])?;
///                 tx.commit()
///             })
///         });
///     }
/// });
/// println!("{:?}", pool.state());
/// # Ok::<(), pgtx::Error>(())
/// ```
pub struct Pool {
    members: Box<[ManagedConnection]>,
    /// The CPU each member was last released on (`NO_CPU` before that).
    released_on: Arc<[AtomicUsize]>,
    line: Arc<Line>,
}

/// `released_on` of a member never released, or where the CPU is unknown.
const NO_CPU: usize = usize::MAX;

/// The CPU this thread runs on now, or `NO_CPU` where that cannot be told.
///
/// A connection's server process tends to run on the CPU of the thread
/// that last used it: the kernel moves the woken process to its waker's
/// CPU while client and server take turns. A thread that takes the
/// connection released on its own CPU keeps that pairing, and each round
/// trip is then a switch on one CPU; the other connection, whose server
/// process sits on another CPU, would make every round trip a wake-up
/// across CPUs (measured on a 2-CPU VM: 2 threads on a pool of 2 ran at
/// 14k–68k transactions/s depending on which connection each thread took,
/// and at a steady 88k with this choice). Linux only; elsewhere, and if
/// the call fails, the choice is simply the first free connection.
fn current_cpu() -> usize {
    #[cfg(target_os = "linux")]
    {
        nix::sched::sched_getcpu().unwrap_or(NO_CPU)
    }
    #[cfg(not(target_os = "linux"))]
    {
        NO_CPU
    }
}

static_assertions::assert_impl_all!(Pool: Send, Sync);

/// Builds a [`Pool`]: made by [`Builder::pool`] (so every connection
/// gets the builder's hooks, reconnection policy and `abandon_after`).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    manager: Builder,
    size: usize,
    min_idle: usize,
    fair_after: Duration,
}

/// A snapshot of a [`Pool`], from [`Pool::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Connections the pool may open.
    pub size: usize,
    /// Connections held now.
    pub in_use: usize,
    /// Connections open and free now.
    pub idle: usize,
    /// Threads waiting for a connection now.
    pub waiting: usize,
    /// Connections opened again after one was lost (killed, dropped by the
    /// server, broken, or found on a server that turned read-only under
    /// `target_session_attrs=read-write`), over the pool's life.
    pub replaced: u64,
    /// Transactions the fallback rolled back (dropped, forgotten, panicked,
    /// or left open by SQL), over the pool's life, all connections.
    pub unfinished: u64,
    /// Each connection's transaction status, in order.
    pub statuses: Vec<TransactionStatus>,
}

/// The threads waiting for a connection, first come first served.
struct Line {
    waiters: Mutex<Waiters>,
    /// How long the first waiter may be passed over ([`PoolBuilder::fair_after`]).
    fair_after: Duration,
}

#[derive(Default)]
struct Waiters {
    queue: VecDeque<(u64, Thread)>,
    next_ticket: u64,
    /// Since when the first waiter is first.
    first_since: Option<Instant>,
}

impl Waiters {
    /// How long the first waiter has been first; `None` with no waiter.
    fn first_waited(&self) -> Option<Duration> {
        self.queue.front()?;
        self.first_since.map(|since| since.elapsed())
    }

    /// A new first waiter: its time counts from now; it is woken to start
    /// its timed look.
    fn promote(&mut self) {
        self.first_since = Some(Instant::now());
        if let Some((_, first)) = self.queue.front() {
            first.unpark();
        }
    }
}

impl Line {
    fn new(fair_after: Duration) -> Line {
        Line {
            waiters: Mutex::default(),
            fair_after,
        }
    }

    /// A connection was released: the first waiter looks, once it has
    /// waited its turn (before that it looks on its own, on a timer).
    fn released(&self) {
        let waiters = self.waiters.lock();
        if waiters
            .first_waited()
            .is_some_and(|waited| waited >= self.fair_after)
            && let Some((_, first)) = waiters.queue.front()
        {
            first.unpark();
        }
    }

    /// Whether a newcomer may take a free connection without queueing:
    /// nobody waits, or the first waiter has not waited its turn yet.
    fn may_barge(&self) -> bool {
        self.waiters
            .lock()
            .first_waited()
            .is_none_or(|waited| waited < self.fair_after)
    }

    /// How long the first waiter has been first; `None` with no waiter.
    fn first_waited(&self) -> Option<Duration> {
        self.waiters.lock().first_waited()
    }

    fn join(&self) -> u64 {
        let mut waiters = self.waiters.lock();
        let ticket = waiters.next_ticket;
        waiters.next_ticket += 1;
        waiters.queue.push_back((ticket, thread::current()));
        if waiters.queue.len() == 1 {
            waiters.first_since = Some(Instant::now());
        }
        ticket
    }

    fn is_first(&self, ticket: u64) -> bool {
        self.waiters
            .lock()
            .queue
            .front()
            .is_some_and(|(first, _)| *first == ticket)
    }

    /// Leaves the line (served, or giving up); the next one looks.
    fn leave(&self, ticket: u64) {
        let mut waiters = self.waiters.lock();
        let was_first = waiters.queue.front().is_some_and(|(t, _)| *t == ticket);
        waiters.queue.retain(|(t, _)| *t != ticket);
        if was_first {
            waiters.promote();
        }
    }

    fn len(&self) -> usize {
        self.waiters.lock().queue.len()
    }
}

impl Builder {
    /// A [`PoolBuilder`] for a pool of `size` connections made with these
    /// settings (at least 1: `0` counts as `1`).
    ///
    /// ```
    /// let pool = pgtx::ManagedConnection::builder("host=localhost user=postgres")
    ///     .on_connect(|conn| Ok(conn.batch_execute("SET application_name = 'worker'")?))
    ///     .pool(8)
    ///     .build()?;
    /// assert_eq!(pool.size(), 8);
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn pool(self, size: usize) -> PoolBuilder {
        PoolBuilder {
            manager: self,
            size: size.max(1),
            min_idle: 0,
            fair_after: PoolBuilder::DEFAULT_FAIR_AFTER,
        }
    }
}

impl PoolBuilder {
    /// [`fair_after`](Self::fair_after)'s default: 1 ms, as a single
    /// [`ManagedConnection`]'s lock.
    pub const DEFAULT_FAIR_AFTER: Duration = crate::blocking::lease::FAIR_HANDOFF_AFTER;

    /// Opens this many connections (at most the pool's size) when the pool
    /// is built, instead of on first use. Default 0.
    pub fn min_idle(mut self, connections: usize) -> Self {
        self.min_idle = connections;
        self
    }

    /// How long the thread first in line may be passed over by threads
    /// that release a connection and ask again straight away (default
    /// [`DEFAULT_FAIR_AFTER`](Self::DEFAULT_FAIR_AFTER), 1 ms). Once it
    /// has waited this long at the front, the next release goes to it and
    /// nobody goes ahead of it; the thread behind it then becomes first,
    /// and its time counts from then. `Duration::ZERO` serves strictly
    /// first come, first served: every release goes to the first waiter.
    ///
    /// This trades the longest wait for throughput. While threads
    /// outnumber connections, the thread at place *k* in line waits about
    /// *k* × `fair_after` at most. Each time a connection passes to
    /// another thread, the operating system may run the new thread on
    /// another CPU than the connection's server process, and round trips
    /// are slower until it pairs them again, so fewer hand-offs mean more
    /// transactions per second. `benches/RESULTS.md` ("Fairness against
    /// throughput") measures both at 0, 1 ms and 20 ms. Raise it where
    /// throughput under overload matters more than the longest wait;
    /// [`Pool::lock_timeout`] still bounds any one wait.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = pgtx::ManagedConnection::builder("host=localhost user=postgres")
    ///     .pool(2)
    ///     .fair_after(Duration::from_millis(20))
    ///     .build()?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn fair_after(mut self, wait: Duration) -> Self {
        self.fair_after = wait;
        self
    }

    /// Parses the settings, builds the pool, and opens
    /// [`min_idle`](Self::min_idle) connections.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if the connection string cannot be read;
    /// [`Error::Runtime`] if the runtime that will drive each connection
    /// could not be made (the system refused its file descriptors).
    /// Any error of opening the `min_idle` connections (then no pool is made).
    pub fn build(self) -> Result<Pool> {
        let line = Arc::new(Line::new(self.fair_after));
        let released_on: Arc<[AtomicUsize]> =
            (0..self.size).map(|_| AtomicUsize::new(NO_CPU)).collect();
        let members = (0..self.size)
            .map(|index| {
                let (line, released_on) = (line.clone(), released_on.clone());
                let on_release: crate::blocking::shared::OnRelease = Arc::new(move || {
                    released_on[index].store(current_cpu(), Ordering::Relaxed);
                    line.released();
                });
                ManagedConnection::on_release_for_pool(self.manager.clone(), on_release).build()
            })
            .collect::<Result<Vec<_>>>()?
            .into_boxed_slice();
        let pool = Pool {
            members,
            released_on,
            line,
        };
        for member in pool.members.iter().take(self.min_idle) {
            drop(member.lock()?);
        }
        Ok(pool)
    }
}

impl Pool {
    /// A pool of `size` connections with `dsn` (see
    /// [`ManagedConnection::new`]); none is opened yet.
    ///
    /// # Errors
    ///
    /// [`Error::Settings`] if `dsn` cannot be read; [`Error::Runtime`] as
    /// for [`PoolBuilder::build`].
    pub fn new(dsn: &str, size: usize) -> Result<Pool> {
        ManagedConnection::builder(dsn).pool(size).build()
    }

    /// How many connections the pool may open.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Takes a free connection, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::lock`]: [`Error::Connect`] if the connection
    /// had to be opened and could not be (it is free again).
    ///
    /// Under a reconnection policy, a connection in an outage is passed
    /// over and the checkout waits for the others (a connection found dead
    /// and not replaceable starts its outage and is passed over too); only
    /// when every connection is down does it fail, at once, with
    /// [`Error::ConnectionDead`].
    ///
    /// [`Error::Reentrant`] at once if none is free and this thread holds
    /// one of the pool's connections already (a [`Guard`] or [`Tx`] not
    /// released yet): waiting could be waiting for itself. One it holds
    /// but forgot (`mem::forget`) is taken over once it has run nothing
    /// for [`abandon_after`](crate::Builder::abandon_after), or by another
    /// thread once this one exits.
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.checkout(None, true)
    }

    /// Takes a free connection if there is one now.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if every connection is held (or others are
    /// waiting before this thread); otherwise as [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Guard<'_>> {
        self.checkout(None, false)
    }

    /// Takes a free connection, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::LockTimeout`] if none came free in time; otherwise as
    /// [`lock`](Self::lock).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Guard<'_>> {
        let deadline = Instant::now().checked_add(timeout);
        self.checkout(deadline, true).map_err(|e| match e {
            Error::LockTimeout(_) => Error::LockTimeout(timeout),
            other => other,
        })
    }

    /// Runs `work` in a transaction on a free connection, as
    /// [`ManagedConnection::transaction`] does.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction`].
    ///
    /// # Panics
    ///
    /// As [`ManagedConnection::transaction`].
    #[track_caller]
    pub fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_with(TxOptions::default(), work)
    }

    /// [`transaction`](Self::transaction) with an isolation level,
    /// read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction`].
    ///
    /// # Panics
    ///
    /// As [`ManagedConnection::transaction`].
    #[track_caller]
    pub fn transaction_with<T, E, F>(&self, options: TxOptions, work: F) -> Result<T, E>
    where
        F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        scope::run(self.lock(), options, Location::caller(), work)
    }

    /// [`ManagedConnection::transaction_retrying`] on the pool: each run
    /// takes a free connection (not necessarily the same one).
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction_retrying`].
    ///
    /// # Panics
    ///
    /// As [`ManagedConnection::transaction`].
    #[track_caller]
    pub fn transaction_retrying<T, E, F>(&self, policy: &RetryPolicy, work: F) -> Result<T, E>
    where
        F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
        E: From<Error>,
    {
        self.transaction_retrying_with(TxOptions::default(), policy, work)
    }

    /// [`transaction_retrying`](Self::transaction_retrying) with an
    /// isolation level, read-only or deferrable mode.
    ///
    /// # Errors
    ///
    /// As [`ManagedConnection::transaction_retrying`].
    ///
    /// # Panics
    ///
    /// As [`ManagedConnection::transaction`].
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

    /// A [`Listener`] for LISTEN/NOTIFY with the pool's settings, on a
    /// connection of its own (not one of the pool's): notifications arrive
    /// whatever the pool's connections are doing, and waiting for them
    /// takes none of them.
    ///
    /// # Errors
    ///
    /// As [`Listener::connect`]: [`Error::Connect`] if no server accepted
    /// the connection.
    pub fn listener(&self) -> Result<Listener> {
        self.members[0].listener()
    }

    /// What the pool is doing now, and its counters.
    pub fn state(&self) -> PoolState {
        let mut state = PoolState {
            size: self.members.len(),
            in_use: 0,
            idle: 0,
            waiting: self.line.len(),
            replaced: 0,
            unfinished: 0,
            statuses: Vec::with_capacity(self.members.len()),
        };
        for member in self.members.iter() {
            let held = member.shared().holder().is_some();
            let status = member.status();
            if held {
                state.in_use += 1;
            } else if status != TransactionStatus::Closed {
                state.idle += 1;
            }
            state.replaced += member.shared().replaced();
            state.unfinished += member.unfinished_transactions();
            state.statuses.push(status);
        }
        state
    }

    /// Closes every connection that is not held; a held one stays open
    /// until its holder is done (the next holder of a closed one opens it
    /// again).
    ///
    /// # Errors
    ///
    /// The first [`ManagedConnection::close`] error, after trying them all.
    pub fn close_idle(&self) -> Result<()> {
        let mut first = None;
        for member in self.members.iter() {
            match member.try_lease() {
                Ok(Some(held)) => {
                    if let Err(e) = ManagedConnection::ready_to_close(held) {
                        first.get_or_insert(e);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether `member` is one of this pool's connections.
    pub(crate) fn has_member(&self, member: &ManagedConnection) -> bool {
        self.members
            .iter()
            .any(|m| std::ptr::eq(m.shared(), member.shared()))
    }

    /// A free member's lease, waiting as long as it takes (as
    /// [`lock`](Self::lock)), and the member: for a [`TwoPhase`] to join.
    ///
    /// [`TwoPhase`]: crate::TwoPhase
    pub(crate) fn lease_member(&self) -> Result<(&ManagedConnection, Held<'_>)> {
        // A transaction joining several connections holds some already:
        // it waits for the others (`TwoPhase::join_pool` refuses when it
        // holds them all).
        let held = match self.line.may_barge().then(|| self.free_member(false)) {
            Some(Ok(Some(held))) => held,
            Some(Err(e)) => return Err(e),
            _ => {
                let ticket = self.line.join();
                let taken = self.wait_in_line(ticket, None, false);
                self.line.leave(ticket);
                taken?
            }
        };
        let member = self
            .members
            .iter()
            .find(|m| std::ptr::eq(m.shared(), held.shared()))
            .expect("a pool's lease is one of its members'");
        Ok((member, held))
    }

    fn checkout(&self, deadline: Option<Instant>, wait: bool) -> Result<Guard<'_>> {
        loop {
            let held = self.take(deadline, wait)?;
            let shared = held.shared();
            match ManagedConnection::ready(held) {
                Ok(guard) => return Ok(guard),
                // Its connection was found dead and could not be replaced:
                // an outage has begun on it, which the reconnection policy
                // rides out. The others may be about to come free.
                Err(e) if shared.is_down() && !self.all_down() => {
                    log::debug!("pgtx: a pool connection is down ({e}); waiting for another");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A free member's lease: without joining the line while nobody waits
    /// (long), else in line.
    fn take(&self, deadline: Option<Instant>, wait: bool) -> Result<Held<'_>> {
        if self.line.may_barge()
            && let Some(held) = self.free_member(true)?
        {
            return Ok(held);
        }
        if !wait {
            return Err(Error::WouldBlock);
        }
        let ticket = self.line.join();
        let taken = self.wait_in_line(ticket, deadline, true);
        self.line.leave(ticket);
        taken
    }

    /// Whether every member is in an outage.
    fn all_down(&self) -> bool {
        self.members.iter().all(|m| m.shared().is_down())
    }

    /// `member`'s lease if it is free, `None` if it is held or in an
    /// outage: a checkout waits for the others then. Only when every member
    /// is down does it fail ([`Error::ConnectionDead`], at once).
    fn try_member<'p>(&'p self, member: &'p ManagedConnection) -> Result<Option<Held<'p>>> {
        match member.try_lease() {
            Err(Error::ConnectionDead { .. }) if !self.all_down() => Ok(None),
            other => other,
        }
    }

    fn wait_in_line(
        &self,
        ticket: u64,
        deadline: Option<Instant>,
        refuse_own: bool,
    ) -> Result<Held<'_>> {
        loop {
            let first = self.line.is_first(ticket);
            if first && let Some(held) = self.free_member(refuse_own)? {
                return Ok(held);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::LockTimeout(Duration::ZERO));
            }
            let mut nap = if first { FRONT_POLL } else { BEHIND_POLL };
            if first
                && let Some(waited) = self.line.first_waited()
                && waited < self.line.fair_after
            {
                // Releases do not wake it before its turn: look then.
                nap = nap.min(self.line.fair_after - waited);
            }
            if let Some(deadline) = deadline {
                nap = nap.min(deadline.saturating_duration_since(now));
            }
            thread::park_timeout(nap);
        }
    }

    /// A free connection: first the one last released on this thread's
    /// CPU (see [`current_cpu`]), then open ones (opening one costs a
    /// connect). A connection another thread holds is tried too: its
    /// holder may have abandoned it (the lease decides). One this thread
    /// holds is taken only if it ran nothing for `abandon_after` (it was
    /// forgotten); otherwise, with none free, a thread that holds one
    /// gets [`Error::Reentrant`] (`refuse_own`), or `None` (to wait for
    /// the others).
    fn free_member(&self, refuse_own: bool) -> Result<Option<Held<'_>>> {
        let cpu = current_cpu();
        if cpu != NO_CPU {
            for (member, released_on) in self.members.iter().zip(self.released_on.iter()) {
                if released_on.load(Ordering::Relaxed) == cpu
                    && member.status() != TransactionStatus::Closed
                    && member.shared().holder().is_none()
                    && let Some(held) = self.try_member(member)?
                {
                    return Ok(Some(held));
                }
            }
        }
        let mut mine = Vec::new();
        for want_open in [true, false] {
            for member in self.members.iter() {
                if (member.status() != TransactionStatus::Closed) != want_open {
                    continue;
                }
                if member.shared().holder() == Some(true) {
                    mine.push(member);
                    continue;
                }
                if let Some(held) = self.try_member(member)? {
                    return Ok(Some(held));
                }
            }
        }
        for member in &mine {
            if let Some(held) = self.try_member(member)? {
                return Ok(Some(held));
            }
        }
        if refuse_own && !mine.is_empty() {
            // Waiting could be waiting for this thread itself; and its hold
            // may well be alive (a helper asking with a guard in scope).
            return Err(Error::Reentrant);
        }
        Ok(None)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Pool")
            .field("settings", self.members[0].settings())
            .field("size", &state.size)
            .field("in_use", &state.in_use)
            .field("idle", &state.idle)
            .field("waiting", &state.waiting)
            .finish_non_exhaustive()
    }
}

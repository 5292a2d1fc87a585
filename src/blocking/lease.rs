//! Who holds the shared connection: a fair lease that a forgotten holder
//! cannot keep forever.
//!
//! A `parking_lot` guard kept inside a `Tx` would make `mem::forget(tx)` lock
//! the connection for good, and `force_unlock` is unsafe. So the lock is a
//! lease instead: the holder is recorded (thread, liveness token, epoch), and
//! an acquirer that finds the holder abandoned takes the lease over. Every
//! grant gets a new epoch; a revoked holder's epoch no longer matches, so
//! anything it tries afterwards fails with `Error::LeaseRevoked`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, Thread, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

pub(crate) use crate::machine::fallback::Abandoned;

/// A waiter that has been first in line this long is handed the lease
/// directly at the next release, so newcomers can't starve it. Before that,
/// a release wakes the first waiter to race for the free lease, except when
/// the releasing thread keeps taking the lease straight back: then nobody is
/// woken, and the holder goes on without a context switch, which is what
/// keeps a contended connection as fast as an uncontended one
/// (`parking_lot`'s "eventual fairness", minus the wake-up per release that
/// would steal the CPU the server needs on a small box). The first waiter
/// sleeps no longer than this, so a lease that stays free is still picked
/// up within it.
pub(crate) const FAIR_HANDOFF_AFTER: Duration = Duration::from_millis(1);

/// A holder that takes the lease back within this long after releasing it
/// "took it straight back" (a loop of transactions, not work in between).
const STRAIGHT_BACK: Duration = Duration::from_micros(20);

/// After this many straight-back takes in a row, a release stops waking
/// the first waiter early (it gets its handoff when its time comes).
const BARGING: u8 = 2;

/// How often a waiter looks at whether the holder has been abandoned.
pub(crate) const ABANDON_POLL: Duration = Duration::from_millis(50);

/// How long a waiter that is not first in line sleeps before looking again,
/// in case a wake-up was missed.
pub(crate) const BEHIND_POLL: Duration = Duration::from_secs(1);

/// `activity` while a request is in flight: a busy holder is never idle.
const BUSY: u64 = u64::MAX;

/// `activity` from a grant until the holder's first request.
const GRANTED: u64 = u64::MAX - 1;

/// How long an acquirer is prepared to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    Until(Instant),
    Never,
}

/// The lease was granted.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) epoch: u64,
    /// Set when the lease was taken from an abandoned holder, whose open
    /// transaction (if any) the new holder must roll back.
    pub(crate) took_over: Option<Abandoned>,
}

/// The lease was not granted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Timeout,
    WouldBlock,
    /// The holding thread asked again from inside its own `transaction` scope.
    Reentrant,
}

/// The threads that have taken a lease at least once and have not exited.
/// A holder that is not in here has exited. (Kept as a registry rather than
/// a liveness token per grant, so that taking the lease costs no atomic
/// reference counting.)
static LIVE_THREADS: Mutex<Vec<ThreadId>> = Mutex::new(Vec::new());

/// Registers this thread on first use; its destructor, run when the thread
/// exits, takes it out again.
struct Registration(ThreadId);

impl Drop for Registration {
    fn drop(&mut self) {
        LIVE_THREADS.lock().retain(|id| *id != self.0);
    }
}

thread_local! {
    static ME: Registration = {
        let id = thread::current().id();
        LIVE_THREADS.lock().push(id);
        Registration(id)
    };
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    thread: ThreadId,
}

impl Identity {
    fn current() -> Identity {
        // During the thread's own teardown its registration may be gone
        // already; it then counts as exited, which is the truth soon enough.
        Identity {
            thread: ME
                .try_with(|me| me.0)
                .unwrap_or_else(|_| thread::current().id()),
        }
    }

    fn has_exited(self) -> bool {
        !LIVE_THREADS.lock().contains(&self.thread)
    }
}

struct Holder {
    who: Identity,
    epoch: u64,
    /// A `transaction` scope on the holder's stack owns this lease: the
    /// holder is provably alive, so its own thread asking again is a
    /// re-entry, not a forgotten guard.
    scoped: bool,
    /// The queue ticket of the waiter this lease was handed to, if it was.
    handed_to: Option<u64>,
}

struct Waiter {
    ticket: u64,
    thread: Thread,
    /// Since when it is first in line (before that, when it queued).
    since: Instant,
    /// A release has woken it, as first in line, to race for the free
    /// lease, and it has not gone back to sleep since.
    nudged: bool,
}

#[derive(Default)]
struct LeaseState {
    holder: Option<Holder>,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
    /// Who released the lease last, and when, while others waited.
    last_release: Option<(ThreadId, Instant)>,
    /// How many times in a row a releasing holder took the lease straight
    /// back while others waited.
    barging: u8,
    /// When a waiter first saw the current holder with no request yet
    /// (`GRANTED`): its idle time counts from then. Reading the clock here,
    /// on the waiter's side, keeps it off every grant.
    grant_seen: Option<(u64, Instant)>,
}

pub(crate) struct Lease {
    state: Mutex<LeaseState>,
    /// The current holder's epoch. Written under `state`, read by holders
    /// (under the session lock) to check that they still hold the lease.
    epoch: AtomicU64,
    origin: Instant,
    /// Nanoseconds since `origin` at the holder's last request, or `BUSY`.
    activity: AtomicU64,
    abandon_after: Option<Duration>,
}

enum Next {
    HandedOver(u64),
    Take(Option<Abandoned>),
    Wait,
}

impl Lease {
    pub(crate) fn new(abandon_after: Option<Duration>) -> Lease {
        Lease {
            state: Mutex::new(LeaseState::default()),
            epoch: AtomicU64::new(0),
            origin: Instant::now(),
            activity: AtomicU64::new(0),
            abandon_after,
        }
    }

    /// The epoch of the current grant.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Acquires the lease, waiting as `wait` allows.
    pub(crate) fn acquire(&self, wait: Wait) -> Result<Grant, Refused> {
        let me = Identity::current();
        let mut state = self.state.lock();
        let mut ticket: Option<u64> = None;
        loop {
            let LeaseState {
                holder, grant_seen, ..
            } = &mut *state;
            let next = match holder {
                None => Next::Take(None),
                Some(holder) if ticket.is_some() && holder.handed_to == ticket => {
                    Next::HandedOver(holder.epoch)
                }
                // Asking again on the holding thread: waiting would
                // deadlock, and the earlier hold may well be alive (a
                // helper called with a guard in scope), so it is refused,
                // unless it ran nothing for `abandon_after` (it was
                // forgotten). Inside a `transaction` scope it is provably
                // alive: always refused.
                Some(holder) if holder.who.thread == me.thread => {
                    match self.idle_too_long(holder, grant_seen) {
                        Some(idle) if !holder.scoped => Next::Take(Some(Abandoned::Idle(idle))),
                        _ => {
                            leave_queue(&mut state, ticket);
                            return Err(Refused::Reentrant);
                        }
                    }
                }
                Some(holder) => match self.abandoned(holder, grant_seen) {
                    Some(reason) => Next::Take(Some(reason)),
                    None => Next::Wait,
                },
            };
            match next {
                Next::HandedOver(epoch) => {
                    return Ok(Grant {
                        epoch,
                        took_over: None,
                    });
                }
                Next::Take(took_over) => {
                    let epoch = self.grant(&mut state, me, ticket);
                    return Ok(Grant { epoch, took_over });
                }
                Next::Wait => {}
            }
            let deadline = match wait {
                Wait::Never => return Err(Refused::WouldBlock),
                Wait::Until(deadline) => Some(deadline),
                Wait::Forever => None,
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                leave_queue(&mut state, ticket);
                return Err(Refused::Timeout);
            }
            if ticket.is_none() {
                let t = state.next_ticket;
                state.next_ticket += 1;
                state.queue.push_back(Waiter {
                    ticket: t,
                    thread: thread::current(),
                    since: now,
                    nudged: false,
                });
                ticket = Some(t);
            }
            // Only the first in line watches the holder (for abandonment, and
            // for a lease left free); the others sleep until they are first
            // (`promote_front`), or their deadline. The long poll is a safety net.
            let at_front = state.queue.front().map(|w| w.ticket) == ticket;
            if at_front && let Some(me) = state.queue.front_mut() {
                // Going (back) to sleep with the lease taken: the next release
                // may wake it again (see `release`).
                me.nudged = false;
            }
            let mut park_for = if at_front { ABANDON_POLL } else { BEHIND_POLL };
            if let Some(deadline) = deadline {
                park_for = park_for.min(deadline.saturating_duration_since(now));
            }
            let first_since = state.queue.front().map_or(now, |w| w.since);
            let waited = now.saturating_duration_since(first_since);
            if at_front && waited < FAIR_HANDOFF_AFTER {
                // Releases don't wake us before our turn for a handoff: look
                // again then, in case the lease was released and left free.
                park_for = park_for.min(FAIR_HANDOFF_AFTER - waited);
            }
            MutexGuard::unlocked(&mut state, || thread::park_timeout(park_for));
        }
    }

    /// Releases the lease if `epoch` still holds it; returns whether it did.
    pub(crate) fn release(&self, epoch: u64) -> bool {
        let mut state = self.state.lock();
        let Some(holder) = state.holder.take_if(|h| h.epoch == epoch) else {
            return false;
        };
        let Some(front) = state.queue.front() else {
            return true;
        };
        let now = Instant::now();
        if now.saturating_duration_since(front.since) < FAIR_HANDOFF_AFTER {
            state.last_release = Some((holder.who.thread, now));
            // Not its turn for a handoff yet, but the lease is free: wake the
            // first waiter (unless it is awake already) to race for it,
            // rather than leave the lease idle until the waiter's timed
            // sleep ends. Not when this holder keeps taking the lease
            // straight back (a loop of transactions): the waiter would only
            // find it taken again, and the wake-up costs the CPU the server
            // needs.
            let barging = state.barging >= BARGING;
            if let Some(front) = state.queue.front_mut()
                && !front.nudged
                && !barging
            {
                front.nudged = true;
                front.thread.unpark();
            }
            return true;
        }
        if let Some(waiter) = state.queue.pop_front() {
            let epoch = self.next_epoch();
            state.holder = Some(Holder {
                who: Identity {
                    thread: waiter.thread.id(),
                },
                epoch,
                handed_to: Some(waiter.ticket),
                scoped: false,
            });
            waiter.thread.unpark();
            promote_front(&mut state);
        }
        true
    }

    /// Who holds the lease: `None` if nobody, else whether this thread does.
    pub(crate) fn holder(&self) -> Option<bool> {
        let me = Identity::current();
        self.state
            .lock()
            .holder
            .as_ref()
            .map(|holder| holder.who.thread == me.thread)
    }

    /// The holder is running a request: it is not idle, however long it takes.
    pub(crate) fn mark_busy(&self) {
        if self.abandon_after.is_some() {
            self.activity.store(BUSY, Ordering::Relaxed);
        }
    }

    /// The holder has finished a request (or just got the lease).
    pub(crate) fn mark_idle(&self) {
        if self.abandon_after.is_some() {
            self.activity.store(self.now(), Ordering::Relaxed);
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(GRANTED - 1)
            .min(GRANTED - 1)
    }

    fn next_epoch(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if self.abandon_after.is_some() {
            self.activity.store(GRANTED, Ordering::Relaxed);
        }
        epoch
    }

    fn grant(&self, state: &mut LeaseState, me: Identity, ticket: Option<u64>) -> u64 {
        if !state.queue.is_empty() {
            // Contended: note whether the last holder took the lease straight
            // back (see `release`).
            let straight_back = state
                .last_release
                .is_some_and(|(thread, at)| thread == me.thread && at.elapsed() < STRAIGHT_BACK);
            state.barging = if straight_back {
                state.barging.saturating_add(1)
            } else {
                0
            };
        }
        leave_queue(state, ticket);
        let epoch = self.next_epoch();
        state.holder = Some(Holder {
            who: me,
            epoch,
            handed_to: None,
            scoped: false,
        });
        epoch
    }

    /// Marks the grant `epoch` as owned by a `transaction` scope (see
    /// [`Refused::Reentrant`]).
    pub(crate) fn enter_scope(&self, epoch: u64) {
        if let Some(holder) = self
            .state
            .lock()
            .holder
            .as_mut()
            .filter(|h| h.epoch == epoch)
        {
            holder.scoped = true;
        }
    }

    fn abandoned(
        &self,
        holder: &Holder,
        grant_seen: &mut Option<(u64, Instant)>,
    ) -> Option<Abandoned> {
        if holder.who.has_exited() {
            return Some(Abandoned::ThreadExited);
        }
        self.idle_too_long(holder, grant_seen).map(Abandoned::Idle)
    }

    /// How long `holder` has run nothing, if that is `abandon_after` or more.
    fn idle_too_long(
        &self,
        holder: &Holder,
        grant_seen: &mut Option<(u64, Instant)>,
    ) -> Option<Duration> {
        let limit = self.abandon_after?;
        let idle = match self.activity.load(Ordering::Relaxed) {
            BUSY => return None,
            GRANTED => match *grant_seen {
                Some((epoch, seen)) if epoch == holder.epoch => seen.elapsed(),
                _ => {
                    *grant_seen = Some((holder.epoch, Instant::now()));
                    Duration::ZERO
                }
            },
            last => Duration::from_nanos(self.now().saturating_sub(last)),
        };
        (idle >= limit).then_some(idle)
    }
}

fn leave_queue(state: &mut LeaseState, ticket: Option<u64>) {
    if let Some(ticket) = ticket {
        let was_front = state.queue.front().is_some_and(|w| w.ticket == ticket);
        state.queue.retain(|w| w.ticket != ticket);
        if was_front {
            promote_front(state);
        }
    }
}

/// A waiter that has just become the first in line: its time for a fair
/// handoff counts from now (the time it spent further back does not count,
/// or with many waiters every release would be a handoff and a thread
/// switch). It is woken to start its shorter, timed sleep: a lease left
/// free is then picked up within `FAIR_HANDOFF_AFTER` even if no release
/// wakes it earlier.
fn promote_front(state: &mut LeaseState) {
    if let Some(waiter) = state.queue.front_mut() {
        waiter.since = Instant::now();
        waiter.thread.unpark();
    }
}

/// The holder's epoch plus two flags, in one word so that a `Tx` stays two
/// pointers wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

impl Ticket {
    const OPEN: u64 = 1 << 63;
    const SCOPED: u64 = 1 << 62;
    /// A two-phase participant's transaction, lent by its coordinator:
    /// only the coordinator may commit it.
    const LENT: u64 = 1 << 61;
    const EPOCH: u64 = !(Self::OPEN | Self::SCOPED | Self::LENT);

    pub(crate) fn new(epoch: u64) -> Ticket {
        Ticket(epoch & Self::EPOCH)
    }

    pub(crate) fn epoch(self) -> u64 {
        self.0 & Self::EPOCH
    }

    /// A transaction is open under this ticket: dropping it is a fallback case.
    pub(crate) fn is_open(self) -> bool {
        self.0 & Self::OPEN != 0
    }

    /// A `transaction` scope owns the lease, not this holder.
    pub(crate) fn is_scoped(self) -> bool {
        self.0 & Self::SCOPED != 0
    }

    pub(crate) fn opened(self) -> Ticket {
        Ticket(self.0 | Self::OPEN)
    }

    pub(crate) fn finished(self) -> Ticket {
        Ticket(self.0 & !Self::OPEN)
    }

    pub(crate) fn scoped(self) -> Ticket {
        Ticket(self.0 | Self::SCOPED)
    }

    /// Marks a two-phase participant's transaction lent by its coordinator.
    pub(crate) fn lent(self) -> Ticket {
        Ticket(self.0 | Self::LENT)
    }

    pub(crate) fn is_lent(self) -> bool {
        self.0 & Self::LENT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_flags_do_not_touch_the_epoch() {
        let t = Ticket::new(41);
        assert!(!t.is_open() && !t.is_scoped() && !t.is_lent());
        let lent = t.scoped().lent();
        assert!(lent.is_lent() && lent.is_scoped() && lent.epoch() == 41);
        let t = t.opened().scoped();
        assert!(t.is_open() && t.is_scoped());
        assert_eq!(t.epoch(), 41);
        assert!(!t.finished().is_open());
        assert_eq!(t.finished().epoch(), 41);
    }

    #[test]
    fn a_free_lease_is_granted_with_a_new_epoch() {
        let lease = Lease::new(None);
        let first = lease.acquire(Wait::Never).expect("free");
        assert!(first.took_over.is_none());
        assert!(lease.release(first.epoch));
        let second = lease.acquire(Wait::Never).expect("free again");
        assert!(second.epoch > first.epoch);
    }

    #[test]
    fn the_same_thread_asking_again_is_refused_until_its_hold_ran_nothing_for_abandon_after() {
        let never = Lease::new(None);
        let held = never.acquire(Wait::Never).expect("free");
        assert_eq!(never.acquire(Wait::Never).unwrap_err(), Refused::Reentrant);
        assert_eq!(
            never.acquire(Wait::Forever).unwrap_err(),
            Refused::Reentrant,
            "at once, not a deadlock"
        );
        assert_eq!(never.epoch(), held.epoch, "nothing was taken over");
        assert!(never.release(held.epoch));

        let limit = Duration::from_millis(50);
        let lease = Lease::new(Some(limit));
        let first = lease.acquire(Wait::Never).expect("free");
        let asked = Instant::now();
        let second = loop {
            match lease.acquire(Wait::Never) {
                Ok(grant) => break grant,
                Err(refused) => assert_eq!(refused, Refused::Reentrant),
            }
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "never taken over"
            );
            thread::sleep(Duration::from_millis(5));
        };
        assert!(asked.elapsed() >= limit, "{:?}", asked.elapsed());
        assert!(matches!(second.took_over, Some(Abandoned::Idle(idle)) if idle >= limit));
        assert!(
            !lease.release(first.epoch),
            "a revoked epoch releases nothing"
        );
        assert!(lease.release(second.epoch));
    }

    #[test]
    fn the_same_thread_asking_again_inside_a_scope_is_refused_not_taken_over() {
        let lease = Lease::new(None);
        let first = lease.acquire(Wait::Never).expect("free");
        lease.enter_scope(first.epoch);
        assert_eq!(
            lease.acquire(Wait::Forever).unwrap_err(),
            Refused::Reentrant
        );
        assert_eq!(lease.acquire(Wait::Never).unwrap_err(), Refused::Reentrant);
        assert_eq!(lease.epoch(), first.epoch, "nothing was taken over");
        thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(lease.acquire(Wait::Never).unwrap_err(), Refused::WouldBlock);
            });
        });
        assert!(lease.release(first.epoch));
        let second = lease.acquire(Wait::Never).expect("free again");
        assert!(second.took_over.is_none());
    }

    #[test]
    fn a_release_wakes_the_first_waiter_to_take_the_free_lease() {
        let lease = Lease::new(None);
        let held = lease.acquire(Wait::Never).expect("free");
        thread::scope(|s| {
            let waiter = s.spawn(|| lease.acquire(Wait::Forever).expect("granted"));
            while lease.state.lock().queue.is_empty() {
                thread::yield_now();
            }
            assert!(lease.release(held.epoch));
            {
                // Released before its handoff time: the waiter has been woken
                // to race for the lease (or has taken it already), not left
                // asleep with the lease free until its timed sleep ends.
                let state = lease.state.lock();
                assert!(state.queue.front().is_none_or(|w| w.nudged));
            }
            let grant = waiter.join().expect("waiter thread");
            assert!(lease.release(grant.epoch));
        });
    }

    #[test]
    fn another_thread_waits_then_times_out() {
        let lease = Lease::new(None);
        let held = lease.acquire(Wait::Never).expect("free");
        thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(lease.acquire(Wait::Never).unwrap_err(), Refused::WouldBlock);
                let until = Instant::now() + Duration::from_millis(30);
                assert_eq!(
                    lease.acquire(Wait::Until(until)).unwrap_err(),
                    Refused::Timeout
                );
                assert!(Instant::now() >= until);
            });
        });
        assert!(lease.release(held.epoch));
    }

    #[test]
    fn a_lease_left_by_an_exited_thread_is_taken_over() {
        let lease = Lease::new(None);
        thread::scope(|s| {
            s.spawn(|| lease.acquire(Wait::Never).expect("free"));
        });
        // The scope may return a moment before the thread's locals are gone;
        // a waiter notices within one poll.
        let grant = lease
            .acquire(Wait::Until(Instant::now() + Duration::from_secs(5)))
            .expect("taken over");
        assert_eq!(grant.took_over, Some(Abandoned::ThreadExited));
    }

    #[test]
    fn an_idle_holder_is_taken_over_after_the_limit_but_not_a_busy_one() {
        let lease = &Lease::new(Some(Duration::from_millis(20)));
        let (to_holder, holder_inbox) = std::sync::mpsc::channel::<()>();
        let (to_main, main_inbox) = std::sync::mpsc::channel::<()>();
        thread::scope(|s| {
            s.spawn(move || {
                let _grant = lease.acquire(Wait::Never).expect("free");
                lease.mark_busy();
                to_main.send(()).expect("main alive");
                holder_inbox.recv().expect("told to go idle");
                lease.mark_idle();
                holder_inbox.recv().expect("told to finish");
            });
            main_inbox.recv().expect("holder acquired");
            thread::sleep(Duration::from_millis(40));
            assert_eq!(
                lease.acquire(Wait::Never).unwrap_err(),
                Refused::WouldBlock,
                "a busy holder is never abandoned"
            );
            to_holder.send(()).expect("holder alive");
            let grant = lease
                .acquire(Wait::Until(Instant::now() + Duration::from_secs(5)))
                .expect("taken over once idle");
            assert!(matches!(grant.took_over, Some(Abandoned::Idle(_))));
            to_holder.send(()).expect("holder alive");
        });
    }

    #[test]
    fn sixteen_threads_each_get_the_lease() {
        let lease = Lease::new(None);
        let counts: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        let stop = Instant::now() + Duration::from_millis(300);
        thread::scope(|s| {
            for count in &counts {
                let lease = &lease;
                s.spawn(move || {
                    while Instant::now() < stop {
                        let grant = lease.acquire(Wait::Forever).expect("waits");
                        count.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        assert!(lease.release(grant.epoch));
                    }
                });
            }
        });
        for count in &counts {
            assert!(count.load(Ordering::Relaxed) > 0, "a thread starved");
        }
    }
}

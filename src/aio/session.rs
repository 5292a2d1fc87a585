//! The shared connection as the async front holds it: the core's session,
//! taken out by the holder of a one-permit lease and put back when it lets
//! go (no thread identity: a holder moves between a runtime's workers with
//! its task), and taken over from a holder that looks abandoned.
//!
//! A future can be dropped at any `.await` (a timeout, a `select!` that
//! chose another branch, an aborted task), and `Drop` cannot wait. So
//! nothing here relies on a future running to its end: every use of the
//! session first tidies what an earlier one left (see [`Inner::tidy`]),
//! and whatever is left unfinished leaves a marker in the core (an
//! interrupted request, an open stream, a recorded fallback) that the
//! next use acts on.

use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::aio::scope_marks::ScopeMarks;

use crate::aio::factory::{Factory, Occasion};
use crate::aio::outage::{BackgroundReconnect, Status};
use crate::aio::runtime;
use crate::config::Settings;
use crate::conn::session::{Interruption, RollBackTarget, SessionCore, SessionShared};
use crate::error::{Error, Result, UNFINISHED_TRANSACTION};
use crate::machine::fallback::{Abandoned, Cause};
use crate::machine::reconnect::ReconnectPolicy;
use crate::machine::transaction_status::TransactionStatus;

/// What the lock guards: the core's session, and whether its holder is
/// a `transaction` scope (whose closure's `Err` is its own report, not
/// an unfinished transaction's).
pub(crate) struct Slot {
    pub(crate) core: SessionCore,
    pub(crate) scoped: bool,
    /// What the holder is now: what the fallback decides when it is dropped.
    pub(crate) holding: Holding,
    /// Which run of a `transaction_retrying` closure the holder's
    /// transaction is (1 otherwise).
    pub(crate) attempt: u32,
    /// What the `transaction` scope holding the lease shares with it
    /// (see `scope_marks.rs`).
    pub(crate) scope_marks: Option<ScopeMarks>,
    /// Lent by a two-phase coordinator as a participant's transaction:
    /// only the coordinator may commit it.
    pub(crate) lent: bool,
}

/// What holds the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holding {
    /// A guard (or nothing yet).
    Guard,
    /// A `Tx<Open>`.
    OpenTx,
    /// A finished `Tx`.
    DoneTx,
}

impl Slot {
    fn new(core: SessionCore) -> Slot {
        Slot {
            core,
            scoped: false,
            holding: Holding::Guard,
            attempt: 1,
            scope_marks: None,
            lent: false,
        }
    }
}

/// What a manager's handles share.
///
/// The lease is a permit of `gate` (one, first come first served); its
/// holder takes the session out of `slot` and puts it back when it lets
/// go. A holder lost with `mem::forget` never puts it back: after
/// `abandon_after` with nothing run, a waiter takes the lease over with a
/// new session of the next generation, and shuts the old connection down
/// from outside (the server rolls back what was open on it). The old
/// session, if its holder was alive after all, is refused from then on
/// ([`Error::LeaseRevoked`]) and let go when its holder lets go.
pub(crate) struct Inner {
    /// The session, while nobody holds it.
    slot: Mutex<Option<Box<Slot>>>,
    /// The lease: one permit, taken by the holder and added back when it
    /// puts the session back.
    gate: Semaphore,
    /// How long a holder may run nothing, while others wait, before it is
    /// taken over; `None`: never.
    abandon_after: Option<Duration>,
    pub(crate) shared: SessionShared,
    factory: Arc<Factory>,
    /// With a reconnection policy: the outage being ridden out.
    reconnect: Option<BackgroundReconnect>,
    /// Fallbacks carried out (rolled back and reported).
    unfinished: AtomicU64,
    /// `COMMIT`s whose future was dropped after they were sent.
    interrupted_commits: AtomicU64,
    /// Told each time a holder lets go (a pool's member hands itself on).
    on_release: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Tidying tasks spawned and not yet done (see [`Inner::tidy_soon`]).
    tidying: AtomicUsize,
}

static_assertions::assert_impl_all!(Inner: Send, Sync);

/// The session held: proof of the lease. Dropped, it puts the session
/// back for the next holder (or, if it was taken over meanwhile, lets it
/// go) and tells the manager.
pub(crate) struct Held<'m> {
    /// `None` only while it is dropped.
    slot: Option<Box<Slot>>,
    inner: &'m Arc<Inner>,
}

static_assertions::assert_eq_size!(Held<'static>, [usize; 2]);

impl<'m> Held<'m> {
    /// A session taken out earlier (see [`take_slot`](Self::take_slot)),
    /// held again: the lease is still the holder's.
    pub(crate) fn from_slot(slot: Box<Slot>, inner: &'m Arc<Inner>) -> Held<'m> {
        Held {
            slot: Some(slot),
            inner,
        }
    }

    /// Takes the session out without letting go of the lease: whoever has
    /// it holds the lease, and must hold it again (with
    /// [`from_slot`](Self::from_slot)) to let go. Dropped afterwards, this
    /// `Held` does nothing.
    pub(crate) fn take_slot(&mut self) -> Option<Box<Slot>> {
        self.slot.take()
    }

    /// Whether the session was taken out (see [`take_slot`](Self::take_slot)).
    pub(crate) fn is_taken_out(&self) -> bool {
        self.slot.is_none()
    }

    /// The manager whose session this is.
    pub(crate) fn inner(&self) -> &'m Arc<Inner> {
        self.inner
    }
}

impl Deref for Held<'_> {
    type Target = Slot;

    fn deref(&self) -> &Slot {
        match &self.slot {
            Some(slot) => slot,
            None => unreachable!("a held session is there until it is dropped"),
        }
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Slot {
        match &mut self.slot {
            Some(slot) => slot,
            None => unreachable!("a held session is there until it is dropped"),
        }
    }
}

impl Held<'_> {
    /// Puts the session back (see [`Inner::put_back`]), once; whether it
    /// was still the current one (not taken over).
    pub(crate) fn let_go(&mut self) -> bool {
        match self.slot.take() {
            Some(slot) => self.inner.put_back(slot),
            None => false,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// The least time a waiter waits before it looks again whether the holder
/// is abandoned.
const RECHECK_AT_LEAST: Duration = Duration::from_millis(10);

impl Inner {
    pub(crate) fn new(
        factory: Factory,
        reconnect: Option<ReconnectPolicy>,
        abandon_after: Option<Duration>,
    ) -> Inner {
        Inner {
            slot: Mutex::new(Some(Box::new(Slot::new(SessionCore::new(factory.naming))))),
            gate: Semaphore::new(1),
            abandon_after,
            shared: SessionShared::default(),
            factory: Arc::new(factory),
            reconnect: reconnect.map(BackgroundReconnect::new),
            unfinished: AtomicU64::new(0),
            interrupted_commits: AtomicU64::new(0),
            on_release: OnceLock::new(),
            tidying: AtomicUsize::new(0),
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.factory.settings
    }

    /// Fails at once while the connection is down and being reconnected
    /// in the background (one atomic load when it is not).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionDead`] while the background task reconnects.
    pub(crate) fn refuse_while_down(&self) -> Result<()> {
        match &self.reconnect {
            Some(background) => background.refuse_while_down(),
            None => Ok(()),
        }
    }

    pub(crate) fn status(&self) -> TransactionStatus {
        self.shared.status.get()
    }

    /// Calls `hook` each time a holder lets go, once the session is
    /// unlocked (set once, by the pool the manager belongs to).
    pub(crate) fn on_release(&self, hook: Box<dyn Fn() + Send + Sync>) {
        if self.on_release.set(hook).is_err() {
            log::error!("pgtx: a manager was put in two pools");
        }
    }

    /// A holder let go (see [`on_release`](Self::on_release)).
    pub(crate) fn released(&self) {
        if let Some(hook) = self.on_release.get() {
            hook();
        }
    }

    /// Connections opened after one was lost.
    pub(crate) fn replaced(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    pub(crate) fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Relaxed)
    }

    pub(crate) fn interrupted_commits(&self) -> u64 {
        self.interrupted_commits.load(Ordering::Relaxed)
    }

    /// Takes the lease (waiting for it), then readies the session for the
    /// new holder: tidied, no transaction open, a live connection.
    /// Dropped while waiting, nothing happened; dropped later, the lease is
    /// let go and what was being done is left for the next use.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Held<'_>> {
        // While the server is known to be down, fail before waiting for anyone.
        self.refuse_while_down()?;
        let held = match self.gate.try_acquire() {
            Ok(permit) => self.take(permit),
            Err(_) => self.wait(true).await,
        };
        self.ready(held).await
    }

    /// Takes the lease if nobody holds it (or its holder is abandoned).
    pub(crate) async fn try_acquire(self: &Arc<Self>) -> Result<Held<'_>> {
        self.refuse_while_down()?;
        let held = match self.gate.try_acquire() {
            Ok(permit) => self.take(permit),
            Err(_) => self.take_over_if_abandoned().ok_or(Error::WouldBlock)?,
        };
        self.ready(held).await
    }

    /// Waits for the lease (first come, first served); with `take_over`,
    /// takes it over from a holder that has run nothing for
    /// `abandon_after`. The manager's own tasks (tidying, settling) never
    /// do: only a caller that wants the connection may cost its holder the
    /// connection.
    async fn wait(self: &Arc<Self>, take_over: bool) -> Held<'_> {
        // One place in line for the whole wait: looking whether the holder
        // is abandoned does not send this waiter to the back.
        let mut acquire = pin!(self.gate.acquire());
        loop {
            let limit = self.abandon_after.filter(|_| take_over);
            let acquired = match limit {
                None => Some(acquire.as_mut().await),
                Some(limit) => {
                    let wait = self.until_abandoned(limit);
                    tokio::time::timeout(wait, acquire.as_mut()).await.ok()
                }
            };
            match acquired {
                Some(Ok(permit)) => return self.take(permit),
                // Never closed; if it were, ask again rather than poll a
                // finished future.
                Some(Err(_closed)) => acquire.set(self.gate.acquire()),
                None => {
                    if let Some(held) = self.take_over_if_abandoned() {
                        return held;
                    }
                }
            }
        }
    }

    /// How long a waiter waits before it looks again whether the holder is
    /// abandoned (`limit`: `abandon_after`).
    fn until_abandoned(&self, limit: Duration) -> Duration {
        let unused = self.shared.cancel.unused_for().unwrap_or_default();
        limit.saturating_sub(unused).max(RECHECK_AT_LEAST)
    }

    /// For a pool's waiter: how long until this member's holder may count
    /// as abandoned; `None` if it never does.
    pub(crate) fn abandon_check_in(&self) -> Option<Duration> {
        self.abandon_after.map(|limit| self.until_abandoned(limit))
    }

    /// With the lease's permit: the session, taken out.
    fn take(self: &Arc<Self>, permit: SemaphorePermit<'_>) -> Held<'_> {
        permit.forget();
        // The new holder has not been idle for the old one's idle time.
        self.shared.cancel.touch();
        let slot = self.slot.lock().take().unwrap_or_else(|| {
            // A permit stands for the session put back: this cannot be.
            log::error!(
                "pgtx: the lease was free but its session was not there; a new one is made"
            );
            self.new_slot(self.shared.generation.load(Ordering::Acquire))
        });
        Held {
            slot: Some(slot),
            inner: self,
        }
    }

    fn new_slot(&self, generation: u64) -> Box<Slot> {
        Box::new(Slot::new(SessionCore::of_generation(
            self.factory.naming,
            generation,
        )))
    }

    /// A holder let go of `slot`: back for the next holder (`true`), or, if
    /// it was taken over meanwhile (its connection already shut down), let
    /// go (`false`).
    fn put_back(&self, slot: Box<Slot>) -> bool {
        let mut stored = self.slot.lock();
        if slot.core.refuse_if_stale(&self.shared).is_err() {
            drop(stored);
            drop(slot);
            return false;
        }
        *stored = Some(slot);
        drop(stored);
        self.gate.add_permits(1);
        true
    }

    /// Takes the lease over if its holder has run nothing for
    /// `abandon_after` (and nothing runs now): a new session, the old
    /// connection shut down from outside so that the server rolls back
    /// what the holder left open, reported as an unfinished transaction.
    pub(crate) fn take_over_if_abandoned(self: &Arc<Self>) -> Option<Held<'_>> {
        let limit = self.abandon_after?;
        // Under the slot's lock, so that a holder putting the session back
        // either does so first (then the lease is free: no takeover) or
        // finds it taken over (then its session is let go).
        let stored = self.slot.lock();
        if stored.is_some() {
            return None;
        }
        let unused = self.shared.cancel.unused_for()?;
        if unused < limit {
            return None;
        }
        Some(self.take_over(stored, Abandoned::Idle(unused)))
    }

    /// For the owner of a lease whose session was lost with a forgotten
    /// handle (a two-phase participant's lent transaction): takes it over
    /// at once, as from an abandoned holder (see
    /// [`take_over_if_abandoned`](Self::take_over_if_abandoned)), if the
    /// lease is still held by the session of `generation`. `None` if it is
    /// not (a waiter took it over meanwhile, or it was let go): the owner
    /// holds nothing any more. The new session is the caller's, under the
    /// lease it holds.
    pub(crate) fn take_over_forgotten(self: &Arc<Self>, generation: u64) -> Option<Held<'_>> {
        let stored = self.slot.lock();
        if stored.is_some() || self.shared.generation.load(Ordering::Acquire) != generation {
            return None;
        }
        Some(self.take_over(stored, Abandoned::Forgotten))
    }

    /// The generation of the session now current.
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Takes the lease over (`stored`: the slot's lock, held, empty): the
    /// next generation, the old connection shut down from outside.
    fn take_over(
        self: &Arc<Self>,
        stored: parking_lot::MutexGuard<'_, Option<Box<Slot>>>,
        why: Abandoned,
    ) -> Held<'_> {
        // All under the slot's lock: another waiter that looks next finds
        // a holder (this one) that has just started.
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.cancel.touch();
        let status = self.shared.status.get();
        self.shared.sever();
        self.shared.cancel.disconnected();
        self.shared.status.set(TransactionStatus::Closed);
        drop(stored);
        if matches!(
            status,
            TransactionStatus::InTransaction | TransactionStatus::InError
        ) {
            self.report_unfinished(Cause::Abandoned(why));
        } else {
            log::warn!(
                "pgtx: a holder was taken over ({why}; no transaction was open) [{}]",
                self.settings()
            );
        }
        Held {
            slot: Some(self.new_slot(generation)),
            inner: self,
        }
    }

    /// Refuses a session that was taken over (see [`Inner`]).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseRevoked`] if `core` is not the current session.
    pub(crate) fn check_current(&self, core: &SessionCore) -> Result<()> {
        core.refuse_if_stale(&self.shared)
    }

    /// For a `transaction` scope whose closure dropped its `Tx`: waits
    /// until the rollback it recorded is carried out — by this call if the
    /// session is free, by the tidying task if it is at work; if another
    /// holder has the session, readying it for them carried it out.
    pub(crate) async fn settle(self: &Arc<Self>) {
        let held = match self.gate.try_acquire() {
            Ok(permit) => Some(self.take(permit)),
            Err(_) if self.tidying.load(Ordering::Acquire) > 0 => Some(self.wait(false).await),
            Err(_) => None,
        };
        if let Some(mut held) = held {
            self.tidy(&mut held.core).await;
        }
    }

    pub(crate) async fn ready<'m>(&'m self, mut held: Held<'m>) -> Result<Held<'m>> {
        // At work until it is ready: connecting and the hooks count.
        let _busy = self.shared.cancel.busy();
        held.scoped = false;
        held.holding = Holding::Guard;
        held.attempt = 1;
        held.scope_marks = None;
        let core = &mut held.core;
        self.tidy(core).await;
        self.abandon_leftovers(core).await;
        self.ensure_open(core).await?;
        Ok(held)
    }

    /// With no holder: rolls back (and reports) a transaction block that
    /// is still open — what an interrupted holder left (a plain BEGIN
    /// through a guard whose answer came after it let go; a transaction
    /// whose future was dropped between a decision and its request).
    async fn abandon_leftovers(&self, core: &mut SessionCore) {
        if core.in_transaction() || core.server_in_block() {
            core.record_fallback(RollBackTarget::Transaction, Some(Cause::UserBlock));
            self.tidy(core).await;
        }
    }

    /// Carries out what an earlier use of the session left unfinished, in
    /// order: an interrupted request is cancelled and drained, a stream a
    /// handle left open is ended, a recorded fallback rolls back. Each
    /// step's marker stays until it is done, so a `tidy` whose own future
    /// is dropped leaves the rest to the next.
    pub(crate) async fn tidy(&self, core: &mut SessionCore) {
        if self.check_current(core).is_err() {
            // Taken over: what it left ended with its connection, and it
            // must not touch what the current session shares.
            return;
        }
        let _busy = self.shared.cancel.busy();
        if core.was_interrupted()
            && let Some(interruption) = core.recover_interrupted(&self.shared).await
        {
            self.report_interruption(interruption);
        }
        if core.has_stream()
            && let Some(cause) = core.end_stream(&self.shared).await
        {
            self.report_unfinished(cause);
        }
        if core.has_fallback()
            && let Some(cause) = core.settle_fallback(&self.shared).await
        {
            self.report_unfinished(cause);
        }
    }

    /// Whether [`tidy`](Self::tidy) has anything to do.
    pub(crate) fn needs_tidy(core: &SessionCore) -> bool {
        core.was_interrupted() || core.has_stream() || core.has_fallback()
    }

    /// Makes sure there is a live connection, opening one if there is none
    /// or if the server closed the old one while it sat idle (under a
    /// reconnection policy, taking the one the background task made, or
    /// failing fast while it is at work).
    pub(crate) async fn ensure_open(&self, core: &mut SessionCore) -> Result<()> {
        // A session taken over never opens another connection.
        self.check_current(core)?;
        core.confirm_writable().await;
        if let Some(replaced) = core.take_if_replaced(&self.shared) {
            replaced.close().await;
        }
        if core.answered_recently()
            || (core.has_connection() && core.keep_if_alive(&self.shared).await)
        {
            return Ok(());
        }
        if let Some(background) = &self.reconnect {
            match background.status() {
                Ok(Status::Up) => {}
                Ok(Status::Ready(conn)) => {
                    core.install(&self.shared, *conn);
                    return Ok(());
                }
                Err(e) => {
                    core.open_failed(&self.shared);
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
        match self.factory.open(occasion).await {
            // Taken over while it connected: the new holder's, not this one's.
            Ok(_) if self.check_current(core).is_err() => Err(Error::LeaseRevoked),
            Ok(conn) => {
                core.install(&self.shared, conn);
                Ok(())
            }
            Err(e) => {
                core.open_failed(&self.shared);
                if let Some(background) = &self.reconnect
                    && matches!(e, Error::Connect(_) | Error::OnConnect(_))
                {
                    background.begin(since, &e, &self.factory);
                }
                Err(e)
            }
        }
    }

    /// After a holder let go with something left for [`tidy`](Self::tidy)
    /// (recorded in its `Drop`, which cannot wait): tidies at once on a
    /// task of the runtime the holder ran on, so that the transaction it
    /// left does not stay open on the server until the next use. Without a
    /// runtime, the next use tidies.
    pub(crate) fn tidy_soon(inner: &Arc<Inner>) {
        let tidying = Tidying::new(Arc::clone(inner));
        // Without a runtime, the next use tidies.
        let _no_runtime = runtime::spawn(async move {
            let inner = &tidying.0;
            let mut held = inner.wait(false).await;
            // Nobody holds the session: whatever is open once the
            // interrupted request is drained was left behind.
            inner.tidy(&mut held.core).await;
            inner.abandon_leftovers(&mut held.core).await;
        });
    }

    /// Counts and logs a fallback carried out.
    pub(crate) fn report_unfinished(&self, cause: Cause) {
        self.unfinished.fetch_add(1, Ordering::Relaxed);
        log::error!(
            "pgtx: {UNFINISHED_TRANSACTION} ({cause}; it has been rolled back) [{}]",
            self.settings()
        );
    }

    /// Logs (and for a `COMMIT`, counts) a request whose future was dropped.
    fn report_interruption(&self, interruption: Interruption) {
        if interruption.copy_in {
            self.report_unfinished(Cause::CopyUnfinished);
        }
        match interruption.commit {
            Some(outcome) => {
                self.interrupted_commits.fetch_add(1, Ordering::Relaxed);
                let said = match outcome {
                    Some(true) => "the server committed it",
                    Some(false) => "the server did not commit it (rolled back)",
                    None => "its outcome is unknown (the connection was lost)",
                };
                log::error!(
                    "pgtx: a COMMIT's future was dropped before its answer was read, so its \
                     caller was not told: {said} [{}]",
                    self.settings()
                );
            }
            None => log::warn!(
                "pgtx: a request's future was dropped before its answer was read: it was \
                 cancelled and its answer drained; a transaction it was part of can only \
                 roll back [{}]",
                self.settings()
            ),
        }
    }
}

impl Drop for Inner {
    /// The manager is gone: a background reconnection stops.
    fn drop(&mut self) {
        if let Some(background) = &self.reconnect {
            background.shut_down();
        }
    }
}

/// A tidying task under way, counted while it lives (also when the
/// runtime drops it unfinished).
struct Tidying(Arc<Inner>);

impl Tidying {
    fn new(inner: Arc<Inner>) -> Tidying {
        inner.tidying.fetch_add(1, Ordering::AcqRel);
        Tidying(inner)
    }
}

impl Drop for Tidying {
    fn drop(&mut self) {
        self.0.tidying.fetch_sub(1, Ordering::AcqRel);
    }
}

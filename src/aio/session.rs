//! The shared connection as the async front holds it: the core's session
//! behind a tokio mutex, whose guard is the lease (no thread identity: a
//! holder moves between a runtime's workers with its task).
//!
//! A future can be dropped at any `.await` (a timeout, a `select!` that
//! chose another branch, an aborted task), and `Drop` cannot wait. So
//! nothing here relies on a future running to its end: every use of the
//! session first tidies what an earlier one left (see [`Inner::tidy`]),
//! and whatever is left unfinished leaves a marker in the core (an
//! interrupted request, an open stream, a recorded fallback) that the
//! next use acts on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::{Mutex, MutexGuard};

use crate::aio::scope_marks::ScopeMarks;

use crate::aio::factory::{Factory, Occasion};
use crate::aio::outage::{BackgroundReconnect, Status};
use crate::aio::runtime;
use crate::config::Settings;
use crate::conn::session::{Interruption, RollBackTarget, SessionCore, SessionShared};
use crate::error::{Error, Result, UNFINISHED_TRANSACTION};
use crate::machine::fallback::Cause;
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

/// What a manager's handles share.
pub(crate) struct Inner {
    slot: Mutex<Slot>,
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

/// The session held: proof of the lease.
pub(crate) type Held<'m> = MutexGuard<'m, Slot>;

impl Inner {
    pub(crate) fn new(factory: Factory, reconnect: Option<ReconnectPolicy>) -> Inner {
        Inner {
            slot: Mutex::new(Slot {
                core: SessionCore::new(factory.naming),
                scoped: false,
                holding: Holding::Guard,
                attempt: 1,
                scope_marks: None,
            }),
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
    pub(crate) async fn acquire(&self) -> Result<Held<'_>> {
        // While the server is known to be down, fail before waiting for anyone.
        self.refuse_while_down()?;
        let held = self.slot.lock().await;
        self.ready(held).await
    }

    /// Takes the lease if nobody holds it.
    pub(crate) async fn try_acquire(&self) -> Result<Held<'_>> {
        self.refuse_while_down()?;
        let held = self.slot.try_lock().map_err(|_| Error::WouldBlock)?;
        self.ready(held).await
    }

    /// For a `transaction` scope whose closure dropped its `Tx`: waits
    /// until the rollback it recorded is carried out — by this call if the
    /// session is free, by the tidying task if it is at work; if another
    /// holder has the session, readying it for them carried it out.
    pub(crate) async fn settle(&self) {
        let held = match self.slot.try_lock() {
            Ok(held) => Some(held),
            Err(_) if self.tidying.load(Ordering::Acquire) > 0 => Some(self.slot.lock().await),
            Err(_) => None,
        };
        if let Some(mut held) = held {
            self.tidy(&mut held.core).await;
        }
    }

    async fn ready<'m>(&'m self, mut held: Held<'m>) -> Result<Held<'m>> {
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
            let mut held = inner.slot.lock().await;
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

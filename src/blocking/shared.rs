//! What every holder of one managed connection shares: the lease, the
//! session, the count of unfinished transactions, and the fallbacks that
//! run when a holder does not finish what it began.
//!
//! Holders (`Held`, `Savepoint`) call down into this; nothing here knows
//! the public handles.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::error::DbError;

use crate::config::Settings;
use crate::conn::cancel_serials::CancelCell;
use crate::error::{Error, Result, UNFINISHED_TRANSACTION};

use crate::blocking::lease::{Lease, Refused, Ticket, Wait};
use crate::blocking::session::{ConnectionSetup, LockedSession, RollBackTarget, Session};
use crate::machine::fallback::{Cause, HolderEnd, verdict};
use crate::machine::transaction_status::TransactionStatus;

pub(crate) struct Shared {
    lease: Lease,
    session: Session,
    unfinished: AtomicU64,
    /// Where the holder's transaction was begun (its `begin()` or
    /// `transaction(...)` call), for the report if it is left unfinished.
    /// Kept here rather than in the `Tx`, which stays two pointers wide;
    /// set by `begin`, cleared whenever the lease changes hands.
    begun_at: Mutex<Option<&'static Location<'static>>>,
    /// Which run of a `transaction_retrying` closure the holder's
    /// transaction is (1 for any other transaction); set by `begin`.
    attempt: AtomicU32,
    /// Told after every release: a pool's waiters, when this connection
    /// is one of a pool's.
    on_release: Option<OnRelease>,
}

/// What a pool is told when one of its connections is released.
pub(crate) type OnRelease = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Shared {
    pub(crate) fn new(
        abandon_after: Option<Duration>,
        setup: ConnectionSetup,
        on_release: Option<OnRelease>,
    ) -> Shared {
        Shared {
            lease: Lease::new(abandon_after),
            session: Session::new(setup),
            unfinished: AtomicU64::new(0),
            begun_at: Mutex::new(None),
            attempt: AtomicU32::new(1),
            on_release,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        self.session.settings()
    }

    pub(crate) fn status(&self) -> TransactionStatus {
        self.session.status()
    }

    /// What cancel handles share with the statements they cancel.
    pub(crate) fn cancel_cell(&self) -> &Arc<CancelCell> {
        self.session.cancel_cell()
    }

    pub(crate) fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Takes the lease; rolls back whatever an abandoned holder left open.
    /// Returns the new holder's epoch.
    pub(crate) fn acquire(&self, wait: Wait) -> Result<u64> {
        // While the server is known to be down, fail before waiting for anyone.
        self.session.refuse_while_down()?;
        let grant = self.lease.acquire(wait).map_err(|refused| match refused {
            Refused::WouldBlock => Error::WouldBlock,
            Refused::Timeout => Error::LockTimeout(Duration::ZERO),
            Refused::Reentrant => Error::Reentrant,
        })?;
        if let Some(reason) = grant.took_over {
            let mut session = self.lock_session();
            let end = verdict(HolderEnd::TakenOver(reason), session.in_transaction());
            match session.fall_back(RollBackTarget::Transaction, end) {
                Some(cause) => self.report_unfinished(cause),
                None => log::debug!("pgtx: took over an abandoned guard ({reason})"),
            }
        }
        *self.begun_at.lock() = None;
        Ok(grant.epoch)
    }

    /// Takes the lease for a participant of a distributed transaction and
    /// begins its transaction; returns the epoch. Like a `transaction`
    /// scope, the hold is provably alive while the coordinator lives, so
    /// the same thread asking again is refused as re-entrant.
    pub(crate) fn join(&self) -> Result<u64> {
        let epoch = self.acquire(Wait::Forever)?;
        self.join_leased(epoch)
    }

    /// [`join`](Self::join) for a lease already taken (a pool's member).
    pub(crate) fn join_leased(&self, epoch: u64) -> Result<u64> {
        let begun = self.with_session(epoch, |s| {
            s.ensure_open()?;
            Ok(s.begin(std::borrow::Cow::Borrowed("BEGIN")))
        });
        match begun {
            Ok(rolled_back) => {
                if rolled_back {
                    self.report_unfinished(Cause::UserBlock);
                }
                self.lease.enter_scope(epoch);
                Ok(epoch)
            }
            Err(e) => {
                self.release(epoch);
                Err(e)
            }
        }
    }

    /// Locks the session, first ending a stream (rows or COPY data) that
    /// a dropped or forgotten handle left open: whatever uses the
    /// connection next finds it ready for a statement.
    fn lock_session(&self) -> LockedSession<'_> {
        let mut session = self.session.lock();
        if session.has_stream()
            && let Some(cause) = session.end_stream()
        {
            self.report_unfinished(cause);
        }
        session
    }

    /// Runs one step of the stream (rows or COPY data) that the holder
    /// `epoch` has open: the one operation that leaves it open.
    pub(crate) fn with_stream<T>(
        &self,
        epoch: u64,
        op: impl FnOnce(&mut LockedSession<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut session = self.session.lock();
        if self.lease.epoch() != epoch {
            return Err(Error::LeaseRevoked);
        }
        self.lease.mark_busy();
        let result = op(&mut session);
        self.lease.mark_idle();
        result
    }

    /// Locks the session for one operation, if `epoch` still holds the lease.
    pub(crate) fn session(&self, epoch: u64) -> Result<LockedSession<'_>> {
        let session = self.lock_session();
        if self.lease.epoch() != epoch {
            return Err(Error::LeaseRevoked);
        }
        Ok(session)
    }

    /// Runs one operation on the session for the holder `epoch`, marking
    /// it busy meanwhile (a busy holder is never taken for abandoned).
    pub(crate) fn with_session<T>(
        &self,
        epoch: u64,
        op: impl FnOnce(&mut LockedSession<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut session = self.session(epoch)?;
        self.lease.mark_busy();
        let result = op(&mut session);
        self.lease.mark_idle();
        result
    }

    /// The end of a guard-form holder: roll back whatever is open, release.
    pub(crate) fn finish(&self, ticket: Ticket) {
        if ticket.is_scoped() {
            return; // the `transaction` scope finishes it
        }
        if !ticket.is_open()
            && matches!(
                self.status(),
                TransactionStatus::Idle | TransactionStatus::Closed | TransactionStatus::Unknown
            )
        {
            // A guard, or a finished `Tx`, on a connection whose server is
            // in no transaction block: nothing to check, no session lock.
            self.release(ticket.epoch());
            return;
        }
        let mut session = self.lock_session();
        if self.lease.epoch() != ticket.epoch() {
            return; // taken over; the new holder cleaned up
        }
        // A `Tx<Open>` being dropped, or a guard whose SQL left a
        // transaction block open: the fallback.
        let end = HolderEnd::Dropped {
            tx_open: ticket.is_open(),
            panicking: std::thread::panicking(),
        };
        let end = verdict(end, session.in_transaction());
        let report = session.fall_back(RollBackTarget::Transaction, end);
        drop(session);
        if let Some(cause) = report {
            self.report_unfinished(cause);
        }
        self.release(ticket.epoch());
    }

    /// The end of a guard that lets go on purpose
    /// ([`Guard::release`](crate::Guard::release)): as [`finish`](Self::finish),
    /// and a transaction block its SQL left open, rolled back and reported
    /// as always, is also returned as [`Error::UnfinishedTransaction`].
    pub(crate) fn finish_guard(&self, ticket: Ticket) -> Result<()> {
        let mut session = self.lock_session();
        if self.lease.epoch() != ticket.epoch() {
            return Err(Error::LeaseRevoked);
        }
        let end = verdict(HolderEnd::Released, session.in_transaction());
        let report = session.fall_back(RollBackTarget::Transaction, end);
        drop(session);
        if let Some(cause) = report {
            self.report_unfinished(cause);
        }
        self.release(ticket.epoch());
        if end.error {
            Err(Error::UnfinishedTransaction)
        } else {
            Ok(())
        }
    }

    /// The holder's transaction was begun at `at`, as run `attempt` of
    /// its closure (1 unless `transaction_retrying` runs it again).
    pub(crate) fn begun_at(&self, at: &'static Location<'static>, attempt: u32) {
        *self.begun_at.lock() = Some(at);
        self.attempt.store(attempt, Ordering::Relaxed);
    }

    /// Which run of its closure the holder's transaction is.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    fn release(&self, epoch: u64) {
        *self.begun_at.lock() = None;
        if self.lease.release(epoch)
            && let Some(on_release) = &self.on_release
        {
            on_release();
        }
    }

    /// Connections opened after one was lost.
    /// Whether the connection is in an outage that a reconnection policy
    /// is riding out: taking it now fails with [`Error::ConnectionDead`].
    pub(crate) fn is_down(&self) -> bool {
        self.session.refuse_while_down().is_err()
    }

    pub(crate) fn replaced(&self) -> u64 {
        self.session.replaced()
    }

    /// Who holds the connection: `None` if nobody, else whether this thread does.
    pub(crate) fn holder(&self) -> Option<bool> {
        self.lease.holder()
    }

    /// A `transaction` scope takes over the lease of `epoch`.
    pub(crate) fn enter_scope(&self, epoch: u64) {
        self.lease.enter_scope(epoch);
    }

    /// The end of a `transaction` scope: roll back whatever the closure
    /// left open (reported only when it panicked: a returned `Err` is the
    /// closure's own report), release. Returns the last error the server
    /// reported in the transaction.
    pub(crate) fn end_scope(&self, epoch: u64, panicked: bool) -> Option<Box<DbError>> {
        let mut session = self.lock_session();
        if self.lease.epoch() != epoch {
            return None;
        }
        let failure = session.take_failure();
        let end = verdict(HolderEnd::ScopeEnded { panicked }, session.in_transaction());
        let report = session.fall_back(RollBackTarget::Transaction, end);
        drop(session);
        if let Some(cause) = report {
            self.report_unfinished(cause);
        }
        self.release(epoch);
        failure
    }

    /// The manager is going away: roll back what a forgotten holder left
    /// open, and close the connection politely.
    pub(crate) fn shut_down(&self) {
        self.session.stop_reconnecting();
        let mut session = self.lock_session();
        let end = verdict(HolderEnd::ManagerDropped, session.in_transaction());
        if let Some(cause) = session.fall_back(RollBackTarget::Transaction, end) {
            self.report_unfinished(cause);
        }
        session.close();
    }

    /// Counts and logs a fallback. When a whole transaction begun by
    /// `begin()` or `transaction(...)` was rolled back, the log line names
    /// where it was begun (not for a savepoint, nor for a block that SQL
    /// opened through a guard).
    pub(crate) fn report_unfinished(&self, cause: Cause) {
        self.unfinished.fetch_add(1, Ordering::Relaxed);
        let begun_at = match *self.begun_at.lock() {
            Some(at) if cause.is_a_begun_transaction() => format!("; begun at {at}"),
            _ => String::new(),
        };
        log::error!(
            "pgtx: {UNFINISHED_TRANSACTION} ({cause}; it has been rolled back{begun_at}) [{}]",
            self.settings()
        );
    }
}

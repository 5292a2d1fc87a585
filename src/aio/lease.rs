//! The lease an async holder owns: the session held, and the manager it
//! belongs to (to tidy at once after a holder that let go with something
//! left undone).

use std::sync::Arc;

use crate::aio::scope_marks::ScopeMarks;
use crate::aio::session::{Held, Holding, Inner, Slot};
use crate::conn::session::{RollBackTarget, SessionCore};
use crate::machine::fallback::{Cause, HolderEnd, verdict};

/// The session held and its manager: two pointers. Dropped, it records
/// what the fallback decides for its holder and lets go (the session put
/// back, the manager told: see [`Held`]).
pub(crate) struct Lease<'m> {
    held: Held<'m>,
}

static_assertions::assert_eq_size!(Lease<'static>, [usize; 2]);
static_assertions::assert_impl_all!(Lease<'static>: Send);

impl<'m> Lease<'m> {
    pub(crate) fn new(held: Held<'m>) -> Lease<'m> {
        Lease { held }
    }

    pub(crate) fn inner(&self) -> &'m Arc<Inner> {
        self.held.inner()
    }

    /// The manager and the session, apart (a statement needs both).
    pub(crate) fn parts(&mut self) -> (&'m Inner, &mut SessionCore) {
        let inner: &'m Inner = self.held.inner();
        (inner, &mut self.held.core)
    }

    /// Marks the holder as a `transaction` scope's, which it shares
    /// `marks` with.
    pub(crate) fn set_scoped(&mut self, marks: ScopeMarks) {
        self.held.scoped = true;
        self.held.scope_marks = Some(marks);
    }

    /// Which run of its closure the holder's transaction is.
    pub(crate) fn attempt(&self) -> u32 {
        self.held.attempt
    }

    /// Sets which run of its closure the holder's transaction is.
    pub(crate) fn set_attempt(&mut self, attempt: u32) {
        self.held.attempt = attempt;
    }

    /// Takes the session out without letting go of the lease (see
    /// [`Held::take_slot`]); dropped afterwards, this lease does nothing.
    pub(crate) fn take_slot(mut self) -> Option<Box<Slot>> {
        self.held.take_slot()
    }

    /// Whether the session is a two-phase participant's, lent (see
    /// `Slot::lent`).
    pub(crate) fn is_lent(&self) -> bool {
        self.held.lent
    }

    /// Says what holds the lease now.
    pub(crate) fn set_holding(&mut self, holding: Holding) {
        self.held.holding = holding;
    }
}

impl Drop for Lease<'_> {
    /// The end of a holder: records what the fallback decides for it and
    /// lets go; what was left undone is tidied at once on a task (see
    /// [`Inner::tidy_soon`]), or by the next use.
    fn drop(&mut self) {
        if self.held.is_taken_out() {
            // Its owner holds the lease on (see `take_slot`).
            return;
        }
        let panicking = std::thread::panicking();
        let inner = self.held.inner();
        let slot = &mut *self.held;
        // A participant's transaction let go anywhere but back to its
        // coordinator (swapped out of its `TxRef`): an ordinary holder's.
        slot.lent = false;
        let end = if slot.scoped {
            HolderEnd::ScopeEnded {
                panicked: panicking,
            }
        } else {
            HolderEnd::Dropped {
                tx_open: slot.holding == Holding::OpenTx,
                panicking,
            }
        };
        // The server's word too: a future dropped between a decision and
        // its request can leave the machine idle and a block open.
        let open = slot.core.in_transaction() || slot.core.server_in_block();
        let decided = verdict(end, open);
        let mut report = decided.report;
        if let Some(marks) = slot.scope_marks.take() {
            // Taken while the lease is still held: once it is let go,
            // another holder's transaction may begin.
            marks.keep_failure(slot.core.take_failure());
            // An interrupted COMMIT is reported with what the server did
            // (see `interrupted_commits`), not as rolled back.
            if decided.roll_back
                && report.is_none()
                && !slot.core.is_committing()
                && marks.rolled_back()
            {
                // The scope's future was dropped before its closure returned.
                report = Some(Cause::ScopeDropped);
            }
        }
        if decided.roll_back {
            slot.core
                .record_fallback(RollBackTarget::Transaction, report);
        }
        if inner.check_current(&slot.core).is_err() {
            // Taken over: its session is let go below, and whatever it
            // left ended with its connection.
            return;
        }
        if Inner::needs_tidy(&slot.core) {
            // The lease is let go below; the task waits for it.
            Inner::tidy_soon(inner);
        }
        // Only a holder's lease tells the manager (a pool hands the
        // connection on); one taken over is the new holder's to tell.
        if self.held.let_go() {
            inner.released();
        }
    }
}

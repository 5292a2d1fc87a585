//! Cancelling the statement another thread is running, and only that one.
//!
//! PostgreSQL's cancel request names a session, not a statement: it
//! interrupts whatever the session runs when the signal arrives. pgtx
//! numbers the statements it sends on the shared connection; a cancel
//! names the one running when it was asked for, and no statement is sent
//! while a cancel request is on its way (the request is over only once the
//! server has signalled the backend). A signal that arrives while the
//! backend is between statements is dropped by the server itself (a cancel
//! "is a no-op when there is no query in progress"), so the next holder's
//! statement, sent after that, is never the one interrupted.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::connect::CancelTarget;
use crate::error::{Error, Result};

/// The statement in flight on one managed connection, as far as cancel
/// requests need to know.
#[derive(Default)]
pub(crate) struct CancelCell {
    inflight: Mutex<Inflight>,
}

#[derive(Default)]
struct Inflight {
    /// The number of the last statement started.
    serial: u64,
    /// Whether statement `serial` is still running.
    running: bool,
    /// The statement a cancel was sent for (0: none).
    cancelled: u64,
    /// Where the running statement's connection takes cancel requests.
    target: Option<Arc<CancelTarget>>,
}

impl CancelCell {
    /// A statement is about to be sent on the connection `target` leads
    /// to; returns its number. Waits while a cancel request is being sent.
    pub(crate) fn start(&self, target: &Arc<CancelTarget>) -> u64 {
        let mut inflight = self.inflight.lock();
        inflight.serial += 1;
        inflight.running = true;
        if !inflight
            .target
            .as_ref()
            .is_some_and(|known| Arc::ptr_eq(known, target))
        {
            inflight.target = Some(target.clone());
        }
        inflight.serial
    }

    /// Statement `serial` has its answer; whether a cancel was sent for it.
    pub(crate) fn finish(&self, serial: u64) -> bool {
        let mut inflight = self.inflight.lock();
        inflight.running = false;
        inflight.cancelled == serial
    }

    /// The connection is gone: its cancel target goes with it.
    pub(crate) fn disconnected(&self) {
        self.inflight.lock().target = None;
    }

    fn cancel(&self) -> Result<bool> {
        // Held until the server has acted on the request: no statement
        // starts (nor is seen to finish) meanwhile.
        let mut inflight = self.inflight.lock();
        if !inflight.running {
            return Ok(false);
        }
        let Some(target) = inflight.target.clone() else {
            return Ok(false);
        };
        inflight.cancelled = inflight.serial;
        target.send().map_err(Error::CancelFailed)?;
        Ok(true)
    }
}

/// Cancels the statement running on a [`ManagedConnection`](crate::ManagedConnection)
/// from any thread, while another thread waits for it.
///
/// Made by [`ManagedConnection::cancel_handle`](crate::ManagedConnection::cancel_handle);
/// cheap to clone, `Send` and `Sync`, and it does not keep the manager
/// alive (once the manager is gone, there is nothing to cancel).
///
/// # What is cancelled
///
/// Only the statement that was running when [`cancel`](Self::cancel) was
/// called: its caller gets [`Error::Cancelled`] (and a transaction it ran
/// in is aborted, so it can only be rolled back). If nothing was running,
/// nothing is sent: a cancel is not remembered for a later statement, and
/// never reaches the next holder's statement. `COMMIT` is never
/// cancelled.
///
/// # The race PostgreSQL leaves
///
/// The server may finish the statement just before the request reaches
/// it: then nothing is cancelled and the statement's own result stands
/// (`cancel` still returns `true`: the request was delivered). What a
/// cancel can never do is interrupt a different statement: no statement is
/// sent until the server has acted on the request, and the server drops a
/// cancel that arrives between statements.
#[derive(Clone)]
pub struct CancelHandle {
    cell: Arc<CancelCell>,
}

static_assertions::assert_impl_all!(CancelHandle: Send, Sync);

impl CancelHandle {
    pub(crate) fn new(cell: Arc<CancelCell>) -> CancelHandle {
        CancelHandle { cell }
    }

    /// Asks the server to cancel the statement running now, and waits
    /// until it has acted on the request (a round trip on a connection of
    /// its own, to the same server, with the same TLS mode). Returns
    /// whether a statement was running and the request was delivered;
    /// `false` if nothing was running (nothing is sent).
    ///
    /// Meanwhile no statement can start on the connection.
    ///
    /// # Errors
    ///
    /// [`Error::CancelFailed`] if the request could not be delivered (the
    /// server unreachable, `connect_timeout` passed): the statement runs
    /// on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let manager = pgtx::ManagedConnection::new("host=localhost user=postgres")?;
    /// let cancel = manager.cancel_handle();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         std::thread::sleep(std::time::Duration::from_millis(100));
    ///         cancel.cancel()
    ///     });
    ///     let err = manager.lock()?.execute("SELECT pg_sleep(30)", &[]).unwrap_err();
    ///     assert!(matches!(err, pgtx::Error::Cancelled(_)));
    ///     Ok::<(), pgtx::Error>(())
    /// })?;
    /// # Ok::<(), pgtx::Error>(())
    /// ```
    pub fn cancel(&self) -> Result<bool> {
        self.cell.cancel()
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A cancel being sent holds the lock: say so rather than wait.
        let state = match self.cell.inflight.try_lock() {
            Some(inflight) if inflight.running => "running",
            Some(_) => "idle",
            None => "cancelling",
        };
        f.debug_struct("CancelHandle")
            .field("statement", &state)
            .finish_non_exhaustive()
    }
}

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

use crate::blocking::driver::block_on_alone;
use crate::conn::cancel_serials::{BeginCancel, CancelCell};
use crate::error::{Error, Result};

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
        match self.cell.begin_cancel() {
            BeginCancel::Idle => Ok(false),
            BeginCancel::Underway => {
                block_on_alone(self.cell.until_sent())?;
                Ok(true)
            }
            BeginCancel::Send(sending) => {
                block_on_alone(sending.target().send())?.map_err(Error::CancelFailed)?;
                Ok(true)
            }
        }
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("statement", &self.cell.describe())
            .finish_non_exhaustive()
    }
}

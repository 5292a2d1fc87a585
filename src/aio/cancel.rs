//! Cancelling the statement another task is running on an async manager,
//! and only that one (the rules are the blocking
//! [`CancelHandle`](crate::CancelHandle)'s: the core numbers statements
//! for both fronts).

use std::fmt;
use std::sync::Arc;

use crate::aio::runtime;
use crate::conn::cancel_serials::{BeginCancel, CancelCell, Sending};
use crate::error::{Error, Result};

/// Cancels the statement running on an async
/// [`ManagedConnection`](super::ManagedConnection) from any task, while
/// another task waits for it.
///
/// Made by [`ManagedConnection::cancel_handle`](super::ManagedConnection::cancel_handle);
/// cheap to clone, `Send` and `Sync`.
///
/// # What is cancelled
///
/// Only the statement that was running when [`cancel`](Self::cancel) was
/// called: its caller gets [`Error::Cancelled`] (and a transaction it ran
/// in is aborted, so it can only be rolled back). If nothing was running,
/// nothing is sent: a cancel is not remembered for a later statement, and
/// never reaches the next holder's statement (none is sent until the
/// server has acted on the request, and the server drops a cancel that
/// arrives between statements). `COMMIT` is never cancelled.
///
/// The server may finish the statement just before the request reaches
/// it: then nothing is cancelled and the statement's own result stands.
///
/// Dropping a [`cancel`](Self::cancel) future is safe: the request, once
/// begun, is delivered on a task of its own, and statements wait for it
/// as they would have.
///
/// For a statement cut short by a timeout, none is needed: dropping the
/// statement's own future cancels it (see
/// [`ManagedConnection`](super::ManagedConnection#cancel-safety)).
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
    /// # async fn demo() -> pgtx::Result<()> {
    /// use std::time::Duration;
    ///
    /// let manager = pgtx::aio::ManagedConnection::new("host=localhost user=postgres")?;
    /// let cancel = manager.cancel_handle();
    /// let canceller = tokio::spawn(async move {
    ///     tokio::time::sleep(Duration::from_millis(100)).await;
    ///     cancel.cancel().await
    /// });
    /// let mut guard = manager.lock().await?;
    /// let err = guard.execute("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    /// assert!(matches!(err, pgtx::Error::Cancelled(_)));
    /// assert!(canceller.await.expect("not panicked")?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(&self) -> Result<bool> {
        match self.cell.begin_cancel() {
            BeginCancel::Idle => Ok(false),
            BeginCancel::Underway => {
                self.cell.until_sent().await;
                Ok(true)
            }
            BeginCancel::Send(sending) => deliver(sending).await.map(|()| true),
        }
    }
}

/// Sends the request and waits until the server acted on it, on a task of
/// its own when there is a runtime to spawn it on: the caller's future may
/// be dropped, the request may not be (statements wait until it arrived).
async fn deliver(sending: Sending) -> Result<()> {
    let send = async move {
        let sent = sending.target().send().await;
        drop(sending);
        sent
    };
    let sent = match runtime::spawn(send) {
        Ok(task) => task.await.map_err(|e| Error::CancelFailed(Box::new(e)))?,
        Err(send) => send.await,
    };
    sent.map_err(Error::CancelFailed)
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aio::CancelHandle")
            .field("statement", &self.cell.describe())
            .finish_non_exhaustive()
    }
}

//! Numbering the statements sent on one connection, so that a cancel
//! names the statement running when it was asked for, and only that one
//! (see the public `CancelHandle` for the rules it keeps).
//!
//! No lock is held while a cancel request is on its way (an async task
//! must not block its worker for a network round trip): the cell marks
//! one as sending, and statements wait to start until it has arrived.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::connect::CancelTarget;

/// The statement in flight on one managed connection, as far as cancel
/// requests need to know.
#[derive(Default)]
pub(crate) struct CancelCell {
    inflight: Mutex<Inflight>,
    /// Told when a cancel request has arrived (or failed): statements
    /// waiting to start go on.
    arrived: Notify,
    /// When a request was last driven, or a holder last took or used the
    /// session (ms since [`clock_base`]): how long the holder has done
    /// nothing, for the async front's takeover of an abandoned one.
    touched: AtomicU64,
    /// Requests being driven now (see [`Busy`]).
    busy: AtomicUsize,
}

/// A request being driven on the connection: while one lives, its holder
/// is at work, whatever the request (a statement, `COMMIT`, a stream's
/// next rows); dropped (its future too), it is not.
pub(crate) struct Busy<'c>(&'c CancelCell);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The start of the clock [`CancelCell`] reads activity on.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(clock_base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Inflight {
    /// The number of the last statement started.
    serial: u64,
    /// Whether statement `serial` is still running.
    running: bool,
    /// The statement a cancel was sent for (0: none).
    cancelled: u64,
    /// A cancel request is on its way: no statement starts meanwhile.
    sending: bool,
    /// Where the running statement's connection takes cancel requests.
    target: Option<Arc<CancelTarget>>,
}

/// A cancel request being sent: while it lives, no statement starts on
/// the connection. Dropped (whether the request arrived or not), it lets
/// them.
pub(crate) struct Sending {
    cell: Arc<CancelCell>,
    target: Arc<CancelTarget>,
}

impl Sending {
    /// Where the request goes.
    pub(crate) fn target(&self) -> &CancelTarget {
        &self.target
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.cell.inflight.lock().sending = false;
        self.cell.arrived.notify_waiters();
    }
}

impl CancelCell {
    /// A statement is about to be sent on the connection `target` leads
    /// to; returns its number. Waits while a cancel request is being sent.
    pub(crate) async fn start(&self, target: &Arc<CancelTarget>) -> u64 {
        loop {
            // Made before looking, so that an arrival in between wakes it.
            let arrived = self.arrived.notified();
            {
                let mut inflight = self.inflight.lock();
                if !inflight.sending {
                    inflight.serial += 1;
                    inflight.running = true;
                    if !inflight
                        .target
                        .as_ref()
                        .is_some_and(|known| Arc::ptr_eq(known, target))
                    {
                        inflight.target = Some(target.clone());
                    }
                    return inflight.serial;
                }
            }
            arrived.await;
        }
    }

    /// Waits until no cancel request is on its way.
    pub(crate) async fn until_sent(&self) {
        loop {
            let arrived = self.arrived.notified();
            if !self.inflight.lock().sending {
                return;
            }
            arrived.await;
        }
    }

    /// Statement `serial` has its answer; whether a cancel was sent for it.
    pub(crate) fn finish(&self, serial: u64) -> bool {
        let mut inflight = self.inflight.lock();
        inflight.running = false;
        inflight.cancelled == serial
    }

    #[cfg(feature = "aio")]
    /// Nothing runs any more (an interrupted request was drained).
    pub(crate) fn idle(&self) {
        self.inflight.lock().running = false;
    }

    /// Marks the session as used now.
    pub(crate) fn touch(&self) {
        self.touched.store(now_ms(), Ordering::Relaxed);
    }

    /// A request is being driven until the [`Busy`] is dropped.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self)
    }

    #[cfg(feature = "aio")]
    /// How long the session has been unused: no request being driven (nor
    /// a cancel request on its way), and none since; `None` while one is.
    pub(crate) fn unused_for(&self) -> Option<std::time::Duration> {
        if self.busy.load(Ordering::Acquire) > 0 || self.inflight.lock().sending {
            return None;
        }
        let since = self.touched.load(Ordering::Relaxed);
        Some(std::time::Duration::from_millis(
            now_ms().saturating_sub(since),
        ))
    }

    /// What the connection is doing as far as cancelling goes: "running",
    /// "idle", or "cancelling" (a cancel request is being sent).
    pub(crate) fn describe(&self) -> &'static str {
        let inflight = self.inflight.lock();
        if inflight.sending {
            "cancelling"
        } else if inflight.running {
            "running"
        } else {
            "idle"
        }
    }

    /// The connection is gone: its cancel target goes with it.
    pub(crate) fn disconnected(&self) {
        self.inflight.lock().target = None;
    }

    /// Starts cancelling the statement running now. With
    /// [`BeginCancel::Send`], the caller sends the request to
    /// [`Sending::target`] and waits until the server acted on it; no
    /// statement starts until that [`Sending`] is dropped.
    pub(crate) fn begin_cancel(self: &Arc<Self>) -> BeginCancel {
        let mut inflight = self.inflight.lock();
        if inflight.sending {
            return BeginCancel::Underway;
        }
        let target = match &inflight.target {
            Some(target) if inflight.running => Arc::clone(target),
            _ => return BeginCancel::Idle,
        };
        inflight.cancelled = inflight.serial;
        inflight.sending = true;
        BeginCancel::Send(Sending {
            cell: Arc::clone(self),
            target,
        })
    }
}

/// What [`CancelCell::begin_cancel`] found.
pub(crate) enum BeginCancel {
    /// No statement is running: nothing to cancel.
    Idle,
    /// A cancel request for the running statement is on its way already.
    Underway,
    /// The running statement is to be cancelled: send the request.
    Send(Sending),
}

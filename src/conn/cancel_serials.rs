//! Numbering the statements sent on one connection, so that a cancel
//! names the statement running when it was asked for, and only that one
//! (see the public `CancelHandle` for the rules it keeps).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::connect::CancelTarget;

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

    /// What the connection is doing as far as cancelling goes, without
    /// waiting: "running", "idle", or "cancelling" (a cancel request is
    /// being sent, which holds the lock).
    pub(crate) fn describe(&self) -> &'static str {
        match self.inflight.try_lock() {
            Some(inflight) if inflight.running => "running",
            Some(_) => "idle",
            None => "cancelling",
        }
    }

    /// The connection is gone: its cancel target goes with it.
    pub(crate) fn disconnected(&self) {
        self.inflight.lock().target = None;
    }

    /// Cancels the statement running now, if any, with `send` (which
    /// delivers the cancel request to `target` and waits until the server
    /// acted on it); whether one was running and `send` succeeded. No
    /// statement starts, nor is seen to finish, while `send` runs.
    ///
    /// # Errors
    ///
    /// What `send` returned: the statement runs on.
    pub(crate) fn cancel<E>(
        &self,
        send: impl FnOnce(&CancelTarget) -> Result<(), E>,
    ) -> Result<bool, E> {
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
        send(&target)?;
        Ok(true)
    }
}

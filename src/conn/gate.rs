//! The waker a connection and its request are polled with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};

/// The waker given to the connection and the request while
/// `Connection::run` polls them. A wake-up during that poll (the request
/// handing its message to the connection, say) makes `run` poll again at
/// once instead of going back to the runtime, which would first turn the
/// I/O driver once more for nothing: a system call per request saved.
#[derive(Default)]
pub(super) struct Gate {
    waker: parking_lot::Mutex<Option<Waker>>,
    polling: AtomicBool,
    missed: AtomicBool,
}

impl Gate {
    /// The waker to pass on when a wake-up comes outside a poll.
    pub(super) fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Starts a poll: wake-ups are counted, not passed on.
    pub(super) fn open_poll(&self) {
        self.missed.store(false, Ordering::Relaxed);
        self.polling.store(true, Ordering::SeqCst);
    }

    /// Ends a poll; whether something woke it meanwhile.
    pub(super) fn close_poll(&self) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        self.missed.swap(false, Ordering::SeqCst)
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.missed.store(true, Ordering::SeqCst);
            // The poll may have closed between the look and the mark (a
            // wake from another thread): then nobody reads the mark, and
            // the task itself must be woken.
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        if let Some(waker) = self.waker.lock().as_ref() {
            waker.wake_by_ref();
        }
    }
}

//! Waking a wait from another thread: a flag, and the waker of the task
//! that waits (a listener blocked in `recv`, say).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;

/// Raised from any thread; a wait that watches it ends.
#[derive(Default)]
pub(crate) struct Interrupt {
    raised: AtomicBool,
    waiter: Mutex<Option<Waker>>,
}

impl Interrupt {
    /// Raises it: a wait watching it now ends; one that starts later ends
    /// at once, until [`take`](Self::take) lowers it.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        if let Some(waiter) = self.waiter.lock().take() {
            waiter.wake();
        }
    }

    /// Whether it is raised (it stays so).
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Lowers it; whether it was raised.
    pub(crate) fn take(&self) -> bool {
        self.raised.swap(false, Ordering::SeqCst)
    }

    /// Ready once raised (it stays raised); meanwhile `cx`'s task is woken
    /// by [`raise`](Self::raise).
    pub(crate) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self.waiter.lock() = Some(cx.waker().clone());
        // Raised between the first look and the waker being stored.
        if self.raised.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until `until` (for ever if `None`) or until it is raised.
    pub(crate) async fn sleep_until(&self, until: Option<Instant>) {
        let raised = poll_fn(|cx| self.poll_raised(cx));
        match until {
            // Timing out is what a quiet sleep does.
            Some(until) => tokio::time::timeout_at(until.into(), raised)
                .await
                .unwrap_or(()),
            None => raised.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_is_seen_until_taken_and_wakes_the_waiter() {
        let interrupt = Interrupt::default();
        let waker = std::sync::Arc::new(Counting::default());
        let as_waker = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&as_waker);
        assert!(interrupt.poll_raised(&mut cx).is_pending());
        interrupt.raise();
        assert_eq!(waker.0.load(Ordering::SeqCst), 1, "the waiter was woken");
        assert!(interrupt.poll_raised(&mut cx).is_ready());
        assert!(interrupt.poll_raised(&mut cx).is_ready(), "stays raised");
        assert!(interrupt.take());
        assert!(!interrupt.take(), "taken once");
        assert!(interrupt.poll_raised(&mut cx).is_pending());
    }

    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

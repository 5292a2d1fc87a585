//! The shape every async reader and writer of a stream shares: a state
//! that borrows the handle's session, lent to one boxed future at a time
//! and handed back when it is done. The future owns what it works on, so
//! the reader can be polled (`poll_next`, `poll_write`) without borrowing
//! itself, and a call whose future is dropped leaves the work under way
//! with the reader, for the next call to go on with.

use std::task::{Context, Poll, ready};

use crate::aio::factory::BoxFuture;

/// `S` while idle, or the future that has it and will give it back with
/// a `T`.
pub(crate) struct Handoff<'h, S, T> {
    idle: Option<S>,
    busy: Option<BoxFuture<'h, (S, T)>>,
}

impl<'h, S, T> Handoff<'h, S, T> {
    pub(crate) fn new(state: S) -> Handoff<'h, S, T> {
        Handoff {
            idle: Some(state),
            busy: None,
        }
    }

    /// The state, when no future has it.
    pub(crate) fn idle(&mut self) -> Option<&mut S> {
        self.idle.as_mut()
    }

    /// The state, when no future has it (the handoff is spent).
    pub(crate) fn into_idle(self) -> Option<S> {
        self.idle
    }

    /// Whether a future has the state.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Lends the state to the future `work` makes of it (nothing happens
    /// if a future has it already).
    pub(crate) fn start(&mut self, work: impl FnOnce(S) -> BoxFuture<'h, (S, T)>) {
        if let Some(state) = self.idle.take() {
            self.busy = Some(work(state));
        }
    }

    /// Drives the future that has the state: `Ready(Some(t))` once it
    /// gave the state back, `Ready(None)` if none had it.
    pub(crate) fn poll_busy(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(busy) = self.busy.as_mut() else {
            return Poll::Ready(None);
        };
        let (state, out) = ready!(busy.as_mut().poll(cx));
        self.busy = None;
        self.idle = Some(state);
        Poll::Ready(Some(out))
    }
}

//! Riding out an outage of an async manager's connection: while the
//! server is down, callers fail at once with [`Error::ConnectionDead`] and
//! one task on the runtime reconnects on the [`ReconnectPolicy`]; recovery
//! handlers run once per recovery. The rules are the blocking front's
//! (`blocking/outage.rs`, which owns a thread instead of a task); when to
//! try is `machine/reconnect.rs`'s.
//!
//! The caller that cannot open a connection made the policy's first
//! attempt itself; only when that fails does the outage begin. The task
//! never touches the session: it hands the new connection over, and the
//! next holder installs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::aio::factory::{Factory, Occasion};
use crate::aio::runtime;
use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::machine::reconnect::{Next, Outage, ReconnectPolicy};
use crate::user_code::catch_panic_async;

/// The background reconnection of one async manager.
pub(crate) struct BackgroundReconnect {
    policy: ReconnectPolicy,
    watch: Arc<Watch>,
}

struct Watch {
    /// Set while the connection is down and the task at work: read by
    /// every call before it waits for the lock.
    down: AtomicBool,
    phase: Mutex<Phase>,
    /// The manager is gone: the task stops.
    closed: AtomicBool,
    /// Wakes the task's wait when the manager goes.
    wake: Notify,
}

enum Phase {
    /// No outage: whoever needs a connection opens one.
    Up,
    /// The task is reconnecting.
    Down {
        since: Instant,
        attempts: u32,
        last_failure: String,
    },
    /// The task reconnected: the next holder takes this connection.
    Ready(Box<Connection>),
    /// The round of attempts ran out: the next caller gets this error,
    /// and the one after it tries again itself.
    GaveUp(Error),
}

impl Phase {
    fn dead(&self) -> Option<Error> {
        match self {
            Phase::Down {
                since,
                attempts,
                last_failure,
            } => Some(Error::ConnectionDead {
                down_for: since.elapsed(),
                attempts: *attempts,
                last_failure: last_failure.clone(),
            }),
            _ => None,
        }
    }
}

/// What the outage means for a caller that needs the connection.
pub(crate) enum Status {
    /// No outage: open a connection yourself.
    Up,
    /// The task reconnected: use this one (recovery handlers have run).
    Ready(Box<Connection>),
}

impl BackgroundReconnect {
    pub(crate) fn new(policy: ReconnectPolicy) -> BackgroundReconnect {
        BackgroundReconnect {
            policy,
            watch: Arc::new(Watch {
                down: AtomicBool::new(false),
                phase: Mutex::new(Phase::Up),
                closed: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    /// Fails while the task reconnects (one atomic load when it does not).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionDead`] while the task reconnects.
    pub(crate) fn refuse_while_down(&self) -> Result<()> {
        if !self.watch.down.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.watch.phase.lock().dead() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Where the outage stands for a caller that needs the connection.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionDead`] while the task reconnects;
    /// [`Error::ReconnectFailed`] once, after its attempts ran out.
    pub(crate) fn status(&self) -> Result<Status> {
        let mut phase = self.watch.phase.lock();
        match std::mem::replace(&mut *phase, Phase::Up) {
            Phase::Up => Ok(Status::Up),
            Phase::Ready(conn) => {
                self.watch.down.store(false, Ordering::Release);
                Ok(Status::Ready(conn))
            }
            Phase::GaveUp(error) => {
                self.watch.down.store(false, Ordering::Release);
                Err(error)
            }
            down @ Phase::Down { .. } => {
                let error = down.dead();
                *phase = down;
                Err(error.unwrap_or(Error::ConnectionLost(None)))
            }
        }
    }

    /// The caller's own attempt, at `since`, failed with `error`: the
    /// outage begins and a task on the caller's runtime takes over the
    /// next attempts (unless the policy allows just the one, or there is
    /// no runtime to spawn it on: then callers go on trying themselves).
    pub(crate) fn begin(&self, since: Instant, error: &Error, factory: &Arc<Factory>) {
        let mut outage = Outage::new(since, &self.policy);
        outage.attempting();
        let last_failure = crate::error::chain(error);
        if let Next::GiveUp(_) = outage.failed(Instant::now(), error.copy_for_outage()) {
            return; // one attempt allowed: the caller has its error
        }
        let job = Job {
            watch: self.watch.clone(),
            factory: factory.clone(),
            outage,
        };
        *self.watch.phase.lock() = Phase::Down {
            since,
            attempts: job.outage.attempts(),
            last_failure,
        };
        if runtime::spawn(job.run()).is_err() {
            // No runtime: callers go on connecting for themselves.
            *self.watch.phase.lock() = Phase::Up;
            return;
        }
        self.watch.down.store(true, Ordering::Release);
        log::warn!(
            "pgtx: the connection is down ({error}); reconnecting in the background, \
             calls fail with ConnectionDead meanwhile"
        );
    }

    /// The manager is going away: the task stops, and a connection it
    /// made that nobody took is dropped (closing its socket).
    pub(crate) fn shut_down(&self) {
        self.watch.closed.store(true, Ordering::Release);
        *self.watch.phase.lock() = Phase::Up;
        self.watch.wake.notify_waiters();
    }
}

/// What the reconnection task owns.
struct Job {
    watch: Arc<Watch>,
    factory: Arc<Factory>,
    outage: Outage,
}

impl Job {
    async fn run(mut self) {
        loop {
            if !self.sleep_until(self.outage.next_attempt_at()).await {
                return;
            }
            self.outage.attempting();
            // A panicking hook must not end this task: the manager would
            // stay down for good.
            let opened = catch_panic_async(
                || "the on_connect hook panicked while reconnecting in the background".to_owned(),
                self.factory.open(Occasion::EndsOutage),
            )
            .await
            .unwrap_or_else(|| Err(Error::OnConnect("the on_connect hook panicked".into())));
            match opened {
                Ok(conn) => {
                    log::info!(
                        "pgtx: reconnected after {:?} and {} attempt(s)",
                        self.outage.since().elapsed(),
                        self.outage.attempts()
                    );
                    let mut phase = self.watch.phase.lock();
                    if !self.watch.closed.load(Ordering::Acquire) {
                        *phase = Phase::Ready(Box::new(conn));
                    }
                    return;
                }
                Err(e) => {
                    let attempt = self.outage.attempts();
                    let last_failure = crate::error::chain(&e);
                    let now = Instant::now();
                    match self.outage.failed(now, e) {
                        Next::RetryAt(at) => {
                            log::warn!(
                                "pgtx: reconnection attempt {attempt} failed: {last_failure}; \
                                 next attempt in {:?}",
                                at.saturating_duration_since(now)
                            );
                            *self.watch.phase.lock() = Phase::Down {
                                since: self.outage.since(),
                                attempts: self.outage.attempts(),
                                last_failure,
                            };
                        }
                        Next::GiveUp(error) => {
                            log::warn!(
                                "pgtx: reconnection attempt {attempt} failed: {last_failure}; \
                                 giving up (the next call tries again)"
                            );
                            *self.watch.phase.lock() = Phase::GaveUp(error);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Waits until `due`; false if the manager went away meanwhile.
    async fn sleep_until(&self, due: Instant) -> bool {
        loop {
            let woken = self.watch.wake.notified();
            if self.watch.closed.load(Ordering::Acquire) {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            // Timing out is the usual end of the wait.
            tokio::time::timeout_at(due.into(), woken)
                .await
                .unwrap_or(());
        }
    }
}

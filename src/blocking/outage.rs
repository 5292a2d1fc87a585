//! Riding out an outage of a manager's connection: while the server is
//! down, callers fail at once with [`Error::ConnectionDead`] and one
//! background thread reconnects on the [`ReconnectPolicy`]; recovery
//! handlers run once per recovery. When to try (the pure bookkeeping of
//! one outage, [`Outage`]) is `reconnect.rs`'s; this file does the I/O and
//! owns the thread.
//!
//! The caller that finds the connection dead (or cannot open one) makes the
//! policy's first attempt itself, at once; only when that fails does the
//! outage begin. The thread never touches the session: it hands the new
//! connection over, and the next holder installs it. So one outage is one
//! reconnection however many callers see it, and nobody ever waits for a
//! connect timeout while the server is known to be down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::blocking::driver::{Blocking, Driver};
use crate::blocking::factory::{ConnectionFactory, Occasion};
use crate::error::{Error, Result};
use crate::machine::reconnect::{Next, Outage, ReconnectPolicy};
use crate::user_code::catch_panic;

/// The background reconnection of one manager: its policy and the outage
/// in progress.
pub(crate) struct BackgroundReconnect {
    policy: ReconnectPolicy,
    watch: Arc<Watch>,
}

struct Watch {
    /// Set while the connection is down and the thread at work: read by
    /// every call before it takes the lock.
    down: AtomicBool,
    phase: Mutex<Phase>,
    wake: Condvar,
    /// The manager is gone: the thread stops.
    closed: AtomicBool,
}

enum Phase {
    /// No outage: whoever needs a connection opens one.
    Up,
    /// The thread is reconnecting.
    Down {
        since: Instant,
        attempts: u32,
        last_failure: String,
    },
    /// The thread reconnected: the next holder takes this connection.
    Ready(Box<Driver>),
    /// The round of attempts ran out: the next caller gets this error,
    /// and the one after it tries again itself.
    GaveUp(Error),
}

impl Phase {
    /// The error for a call made now, if the connection is down.
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
    /// The thread reconnected: use this one (recovery handlers have run).
    Ready(Box<Driver>),
}

impl BackgroundReconnect {
    pub(crate) fn new(policy: ReconnectPolicy) -> BackgroundReconnect {
        BackgroundReconnect {
            policy,
            watch: Arc::new(Watch {
                down: AtomicBool::new(false),
                phase: Mutex::new(Phase::Up),
                wake: Condvar::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Whether an outage is in progress (one atomic load: for the fast
    /// path before the lock is taken).
    fn is_down(&self) -> bool {
        self.watch.down.load(Ordering::Acquire)
    }

    /// Fails while the thread reconnects; a caller that gets `Ok` goes on
    /// to take the lock (and [`status`](Self::status) then tells it more).
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionDead`] while the thread reconnects.
    pub(crate) fn refuse_while_down(&self) -> Result<()> {
        if !self.is_down() {
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
    /// [`Error::ConnectionDead`] while the thread reconnects;
    /// [`Error::ReconnectFailed`] once, after its attempts ran out.
    pub(crate) fn status(&self) -> Result<Status> {
        let mut phase = self.watch.phase.lock();
        match std::mem::replace(&mut *phase, Phase::Up) {
            Phase::Up => Ok(Status::Up),
            Phase::Ready(driver) => {
                self.watch.down.store(false, Ordering::Release);
                Ok(Status::Ready(driver))
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
    /// outage begins and the thread takes over the next attempts (unless
    /// the policy allows just the one).
    pub(crate) fn begin(
        &self,
        since: Instant,
        error: &Error,
        factory: &Arc<ConnectionFactory>,
        runtime: &Blocking,
    ) {
        let mut outage = Outage::new(since, &self.policy);
        outage.attempting();
        let last_failure = crate::error::chain(error);
        match outage.failed(Instant::now(), error.copy_for_outage()) {
            Next::GiveUp(_) => return, // one attempt allowed: the caller has its error
            Next::RetryAt(_) => {}
        }
        *self.watch.phase.lock() = Phase::Down {
            since,
            attempts: outage.attempts(),
            last_failure,
        };
        self.watch.down.store(true, Ordering::Release);
        log::warn!(
            "pgtx: the connection is down ({error}); reconnecting in the background, \
             calls fail with ConnectionDead meanwhile"
        );
        let job = Job {
            watch: self.watch.clone(),
            factory: factory.clone(),
            runtime: runtime.clone(),
            outage,
        };
        let spawned = std::thread::Builder::new()
            .name("pgtx-reconnect".to_owned())
            .spawn(move || job.run());
        if let Err(e) = spawned {
            // No thread: back to callers connecting for themselves.
            log::error!("pgtx: could not start the reconnection thread ({e})");
            *self.watch.phase.lock() = Phase::Up;
            self.watch.down.store(false, Ordering::Release);
        }
    }

    /// The manager is going away: the thread stops, and a connection it
    /// made that nobody took is closed.
    pub(crate) fn shut_down(&self) {
        self.watch.closed.store(true, Ordering::Release);
        let mut phase = self.watch.phase.lock();
        if let Phase::Ready(driver) = std::mem::replace(&mut *phase, Phase::Up) {
            driver.close();
        }
        self.watch.wake.notify_all();
    }
}

/// What the reconnection thread owns.
struct Job {
    watch: Arc<Watch>,
    factory: Arc<ConnectionFactory>,
    /// The session's: the connection is handed over to be driven there.
    runtime: Blocking,
    outage: Outage,
}

impl Job {
    fn run(mut self) {
        loop {
            if !self.sleep_until(self.outage.next_attempt_at()) {
                return;
            }
            self.outage.attempting();
            // A panicking hook must not end this thread: the manager would
            // stay down for good.
            let opened = catch_panic(
                || "the on_connect hook panicked while reconnecting in the background".to_owned(),
                || self.factory.open(&self.runtime, Occasion::EndsOutage),
            )
            .unwrap_or_else(|| Err(Error::OnConnect("the on_connect hook panicked".into())));
            match opened {
                Ok(driver) => {
                    log::info!(
                        "pgtx: reconnected after {:?} and {} attempt(s)",
                        self.outage.since().elapsed(),
                        self.outage.attempts()
                    );
                    let mut phase = self.watch.phase.lock();
                    if self.watch.closed.load(Ordering::Acquire) {
                        drop(phase);
                        driver.close();
                    } else {
                        *phase = Phase::Ready(Box::new(driver));
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
    fn sleep_until(&self, due: Instant) -> bool {
        let mut phase = self.watch.phase.lock();
        while !self.watch.closed.load(Ordering::Acquire) {
            if Instant::now() >= due {
                return true;
            }
            self.watch.wake.wait_until(&mut phase, due);
        }
        false
    }
}

//! Writes under a failover, for `failover.rs` and `patroni.rs`: what each
//! write came to (acknowledged, unknown, or failed and how), writer threads
//! that keep writing through a pool or a manager until stopped, and the
//! tally of their outcomes against the rows the new primary holds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::Scope;
use std::time::{Duration, Instant};

use pgtx::{ConnectionSource, Error};

/// What a write came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// COMMIT was sent and its answer never came: either way is right.
    Unknown,
    /// Failed before COMMIT could make it durable.
    Failed(&'static str),
}

/// The outcome of one write; panics on an error a failover does not
/// explain.
pub fn outcome(result: &Result<(), Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(Error::CommitOutcomeUnknown(_)) => Outcome::Unknown,
        Err(Error::Connect(_)) => Outcome::Failed("Connect"),
        Err(Error::ConnectionLost(_)) => Outcome::Failed("ConnectionLost"),
        Err(Error::TransactionAborted(_)) => Outcome::Failed("TransactionAborted"),
        // Under a reconnection policy, while the background attempts go on.
        Err(Error::ConnectionDead { .. }) => Outcome::Failed("ConnectionDead"),
        Err(Error::ReconnectFailed { .. }) => Outcome::Failed("ReconnectFailed"),
        Err(e) if e.as_db_error().is_some() => Outcome::Failed("Db"),
        Err(e) => panic!("a write failed in a way a failover does not explain: {e}"),
    }
}

/// One write: a row with `id` in table `writes`, in a transaction of its own.
pub fn write(source: &impl ConnectionSource, id: i64) -> Result<(), Error> {
    source.transaction(|mut tx| {
        tx.execute("INSERT INTO writes VALUES ($1)", &[&id])?;
        tx.commit()
    })
}

/// Stops the writers (clears the flag they loop on) however the scope's
/// body ends: a failed wait panics, and the scope joins them before
/// passing it on.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Writer threads, each writing a fresh id at a time with [`write`] and
/// recording what it came to and when.
pub struct Writers {
    next_id: AtomicI64,
    running: AtomicBool,
    outcomes: Mutex<Vec<(i64, Outcome, Instant)>>,
}

/// What the writers' outcomes came to against the rows a server holds.
pub struct Tally {
    /// Every write: its id, outcome and when it ended.
    pub outcomes: Vec<(i64, Outcome, Instant)>,
    pub counts: BTreeMap<Outcome, usize>,
    /// Acknowledged writes the server does not hold.
    pub lost: usize,
    /// Writes reported failed that the server holds.
    pub phantom: usize,
}

impl Writers {
    /// Writers whose ids start at `first_id`.
    pub fn new(first_id: i64) -> Writers {
        Writers {
            next_id: AtomicI64::new(first_id),
            running: AtomicBool::new(true),
            outcomes: Mutex::new(Vec::new()),
        }
    }

    /// Starts `threads` writers in `scope` writing through `source`, each
    /// pausing `pause` after a write that failed (a client's pause before
    /// it tries again); they stop when the returned guard is dropped.
    pub fn start<'scope, 'env, S: ConnectionSource + Sync>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        source: &'env S,
        threads: usize,
        pause: Duration,
    ) -> StopOnDrop<'env> {
        for _ in 0..threads {
            scope.spawn(move || {
                while self.running.load(Ordering::SeqCst) {
                    let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                    let o = outcome(&write(source, id));
                    let mut outcomes = self.outcomes.lock().expect("outcomes");
                    outcomes.push((id, o, Instant::now()));
                    drop(outcomes);
                    if o != Outcome::Ok {
                        std::thread::sleep(pause);
                    }
                }
            });
        }
        StopOnDrop(&self.running)
    }

    /// How many writes were acknowledged (`true`) or not (`false`) so far.
    pub fn count(&self, acknowledged: bool) -> usize {
        let outcomes = self.outcomes.lock().expect("outcomes");
        outcomes
            .iter()
            .filter(|(_, o, _)| (*o == Outcome::Ok) == acknowledged)
            .count()
    }

    /// Waits (polling every `poll`) until `done`, panicking with `what` and
    /// `context()` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        done: impl Fn(&Writers) -> bool,
        context: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < deadline, "never: {what}\n{}", context());
            std::thread::sleep(poll);
        }
    }

    /// The outcomes against the rows of `writes` on `holder`, the server
    /// that should hold every acknowledged write.
    pub fn tally(self, holder: &mut postgres::Client) -> Tally {
        let present: HashSet<i64> = holder
            .query("SELECT id FROM writes", &[])
            .expect("rows")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let outcomes = self.outcomes.into_inner().expect("outcomes");
        let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
        let (mut lost, mut phantom) = (0, 0);
        for (id, o, _) in &outcomes {
            *counts.entry(*o).or_default() += 1;
            match o {
                Outcome::Ok if !present.contains(id) => lost += 1,
                Outcome::Failed(_) if present.contains(id) => phantom += 1,
                _ => {}
            }
        }
        Tally {
            outcomes,
            counts,
            lost,
            phantom,
        }
    }
}

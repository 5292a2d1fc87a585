//! What a write came to, for the failover tests (`failover.rs`,
//! `patroni.rs`): acknowledged, unknown, or failed and how; and a guard
//! that stops writer threads however a test's scope ends.

use std::sync::atomic::{AtomicBool, Ordering};

use pgtx::Error;

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

/// Stops the writers (clears the flag they loop on) however the scope's
/// body ends: a failed wait panics, and the scope joins them before
/// passing it on.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

//! The `transaction(|tx| …)` scope, for a manager and a pool alike: it
//! owns the lease while the closure runs and ends the transaction however
//! the closure ends; and the retry loop of `transaction_retrying`.

use std::panic::Location;

use postgres::error::DbError;

use crate::blocking::shared::Shared;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::machine::options::TxOptions;
use crate::machine::retry::{self, RetryPolicy};
use crate::state::{Done, Open};
use crate::tx::Tx;

/// Runs `work` in a transaction begun on `guard` with `options`, at `at`
/// (the `transaction(...)` call, for the report if it is left unfinished).
pub(crate) fn run<'m, T, E, F>(
    guard: Result<Guard<'m>>,
    options: TxOptions,
    at: &'static Location<'static>,
    work: F,
) -> Result<T, E>
where
    F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
    E: From<Error>,
{
    run_once(guard, options, at, 1, work).0
}

/// Runs `work` in a transaction on a connection from `checkout`, again on
/// each serialization failure or deadlock, as `policy` allows.
pub(crate) fn run_retrying<'m, T, E, F>(
    checkout: impl Fn() -> Result<Guard<'m>>,
    options: TxOptions,
    at: &'static Location<'static>,
    policy: &RetryPolicy,
    mut work: F,
) -> Result<T, E>
where
    F: for<'s> FnMut(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
    E: From<Error>,
{
    let mut waits = policy.waits();
    let mut runs = 0;
    loop {
        // The first wait is zero; the schedule has one per run allowed.
        if let Some(wait) = waits.next().filter(|wait| !wait.is_zero()) {
            std::thread::sleep(wait);
        }
        runs += 1;
        let failure = match run_once(checkout(), options, at, runs, &mut work) {
            (Ok(value), _) => return Ok(value),
            (Err(_), Some(failure)) if retry::asks_for_retry(&failure) => failure,
            (Err(e), _) => return Err(e),
        };
        if runs >= policy.attempts() {
            return Err(E::from(Error::RetriesExhausted {
                attempts: runs,
                last: failure,
            }));
        }
        log::debug!(
            "pgtx: run {runs} of the transaction was refused ({}); running it again",
            failure.message()
        );
    }
}

/// Run `attempt` of a `transaction` closure; its outcome, and the last
/// error the server reported in its transaction.
fn run_once<'m, T, E, F>(
    guard: Result<Guard<'m>>,
    options: TxOptions,
    at: &'static Location<'static>,
    attempt: u32,
    work: F,
) -> (Result<T, E>, Option<Box<DbError>>)
where
    F: for<'s> FnOnce(Tx<'s, Open>) -> Result<Tx<'s, Done<T>>, E>,
    E: From<Error>,
{
    let tx = match guard.and_then(|guard| guard.begin_at(options, at, attempt)) {
        Ok(tx) => tx,
        Err(e) => return (Err(E::from(e)), None),
    };
    let (scope, tx) = Scope::enter(tx);
    let outcome = work(tx);
    let failure = scope.exit();
    (outcome.map(Tx::into_value), failure)
}

/// Owns the lease while a `transaction` closure runs, like the scope of
/// `std::thread::scope`: it ends the transaction and releases the connection
/// whether the closure returns or unwinds, and whatever became of the `Tx`.
struct Scope<'m> {
    shared: &'m Shared,
    epoch: u64,
}

impl<'m> Scope<'m> {
    fn enter(tx: Tx<'m, Open>) -> (Scope<'m>, Tx<'m, Open>) {
        let shared = tx.shared();
        let tx = tx.into_scoped();
        let epoch = tx.epoch();
        shared.enter_scope(epoch);
        (Scope { shared, epoch }, tx)
    }

    /// Ends the scope; the last error the server reported in its transaction.
    fn exit(self) -> Option<Box<DbError>> {
        let scope = std::mem::ManuallyDrop::new(self);
        scope.shared.end_scope(scope.epoch, false)
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        // Only reached by unwinding: `exit` consumes the scope otherwise.
        self.shared.end_scope(self.epoch, true);
    }
}

//! Running a `transaction(async |tx| …)` closure: the one implementation
//! behind the async manager's and pool's `transaction*` methods, whatever
//! hands out the guard ([`Source`]).

use std::future::Future;

use crate::DbError;
use crate::aio::guard::Guard;
use crate::aio::scope_marks::ScopeMarks;
use crate::aio::session::Inner;
use crate::aio::tx::Tx;
use crate::error::{Error, Result};
use crate::machine::fallback::Cause;
use crate::machine::options::TxOptions;
use crate::machine::retry::{self, RetryPolicy};
use crate::state::{Done, Open};

/// What hands out the guard a scope's transaction begins on.
pub(crate) trait Source: Sync {
    /// Waits for a guard, as the public `lock` does.
    fn lock_for_scope(&self) -> impl Future<Output = Result<Guard<'_>>> + Send;
}

/// Runs `work` once in a transaction from `source` (see the public
/// `transaction_with`).
pub(crate) async fn run<S, T, E, F>(source: &S, options: TxOptions, work: F) -> Result<T, E>
where
    S: Source,
    F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
    E: From<Error>,
{
    run_once(source, options, 1, work).await.0
}

/// Runs `work` until it commits, or fails with an error that does not ask
/// for a retry, or `policy` runs out (see the public
/// `transaction_retrying_with`).
pub(crate) async fn run_retrying<S, T, E, F>(
    source: &S,
    options: TxOptions,
    policy: &RetryPolicy,
    mut work: F,
) -> Result<T, E>
where
    S: Source,
    F: for<'t> AsyncFnMut(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
    E: From<Error>,
{
    let mut waits = policy.waits();
    let mut runs = 0;
    loop {
        // The first wait is zero; the schedule has one per run allowed.
        if let Some(wait) = waits.next().filter(|wait| !wait.is_zero()) {
            tokio::time::sleep(wait).await;
        }
        runs += 1;
        let failure = match run_once(source, options, runs, async |tx| work(tx).await).await {
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

/// Run `attempt` of a `transaction` closure: its outcome, and (when it
/// failed) the last error the server reported in its transaction.
async fn run_once<S, T, E, F>(
    source: &S,
    options: TxOptions,
    attempt: u32,
    work: F,
) -> (Result<T, E>, Option<Box<DbError>>)
where
    S: Source,
    F: for<'t> AsyncFnOnce(Tx<'t, Open>) -> Result<Tx<'t, Done<T>>, E>,
    E: From<Error>,
{
    let guard = match source.lock_for_scope().await {
        Ok(guard) => guard,
        Err(e) => return (Err(E::from(e)), None),
    };
    let inner = guard.inner();
    // Dropped before the closure returns, the scope was abandoned.
    let mut watch = ScopeWatch::new(inner);
    let tx = match guard.begin_with(options).await {
        Ok(tx) => tx.into_scoped(attempt, watch.marks()),
        Err(e) => {
            watch.returned();
            return (Err(E::from(e)), None);
        }
    };
    let returned = work(tx).await;
    watch.returned();
    match returned {
        Ok(done) => (Ok(done.into_value()), None),
        // The closure dropped its Tx: the rollback it recorded is done
        // before the error is handed back.
        Err(e) => {
            inner.settle().await;
            (Err(e), watch.marks.take_failure())
        }
    }
}

/// Held by a scope while its closure runs: dropped before
/// [`returned`](Self::returned), the scope was abandoned (reported when
/// its `Tx` let go with the transaction open; see `scope_marks.rs`).
struct ScopeWatch<'m> {
    inner: &'m Inner,
    marks: ScopeMarks,
    returned: bool,
}

impl<'m> ScopeWatch<'m> {
    fn new(inner: &'m Inner) -> ScopeWatch<'m> {
        ScopeWatch {
            inner,
            marks: ScopeMarks::default(),
            returned: false,
        }
    }

    /// The marks the scope's `Tx` sets.
    fn marks(&self) -> ScopeMarks {
        self.marks.clone()
    }

    /// The closure returned (with a value or an error).
    fn returned(&mut self) {
        self.returned = true;
    }
}

impl Drop for ScopeWatch<'_> {
    fn drop(&mut self) {
        if !self.returned && self.marks.abandoned() {
            self.inner.report_unfinished(Cause::ScopeDropped);
        }
    }
}

//! The caller's runtime: the async front runs no runtime of its own, but
//! spawns a few tasks on the one its caller runs on — tidying after a
//! dropped holder, delivering a cancel request whose future was dropped,
//! a background reconnection. Without a runtime (a future polled by
//! another executor), nothing is spawned and the caller does the work
//! itself, later.

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `task` on the runtime the caller runs on; gives it back if
/// there is none.
pub(crate) fn spawn<F>(task: F) -> Result<JoinHandle<F::Output>, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Ok(runtime.spawn(task)),
        Err(_) => Err(task),
    }
}

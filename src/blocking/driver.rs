//! Sync over async: the blocking shell's runtime, and one [`Connection`]
//! of the async core driven on it, the way the `postgres` crate drives its
//! own. Every method hands its work to the core in one line; this file
//! holds the only `block_on` of the crate.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Runtime;
use tokio_postgres::{Client, Notification};

use crate::config::Settings;
use crate::conn::interrupt::Interrupt;
use crate::conn::request::{Request, StatementKind};
use crate::conn::writable::WritableWatch;
use crate::conn::{Connection, NoticeHandler};
use crate::connect::wire::CopyRefused;
use crate::error::Error;
use crate::machine::transaction_status::ServerStatus;
use crate::statements::{Naming, Params, ToStatement};

/// A current-thread runtime, shared by one session's connections (and the
/// thread that reconnects it): a connection's socket belongs to the
/// runtime it was opened on.
#[derive(Clone)]
pub(crate) struct Blocking(Arc<Runtime>);

impl Blocking {
    /// A new runtime (no threads: it runs on the thread that waits).
    ///
    /// # Errors
    ///
    /// [`Error::Runtime`] if the runtime could not be made.
    pub(crate) fn new() -> Result<Blocking, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        Ok(Blocking(Arc::new(runtime)))
    }

    /// Runs `work` to completion on this thread.
    ///
    /// # Panics
    ///
    /// Inside an async runtime's task, as any `block_on` does.
    pub(crate) fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.0.block_on(work)
    }

    /// Runs `work`, which does no I/O unless there is a connection: polled
    /// once first, so that work with nothing to send (dropping a manager
    /// that never connected, say) needs no `block_on`, which would panic
    /// inside an async runtime's task.
    pub(crate) fn block_on_unless_done<F: Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        let polled = {
            let _context = self.0.enter();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            work.as_mut().poll(&mut cx)
        };
        match polled {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => self.0.block_on(work),
        }
    }

    /// Whether `self` and `other` are the same runtime.
    pub(crate) fn is(&self, other: &Blocking) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Runs `work` to completion on a runtime of its own, made for it (for
/// work that belongs to no session: a cancel request, which goes out while
/// the session's runtime is busy with the statement it cancels).
///
/// # Errors
///
/// [`Error::Runtime`] if the runtime could not be made.
pub(crate) fn block_on_alone<F: Future>(work: F) -> Result<F::Output, Error> {
    Ok(Blocking::new()?.block_on(work))
}

/// Runs `work` whose every step blocks inside its poll (sequencing
/// written once for both fronts, such as the two-phase protocol, whose
/// blocking steps are calls on blocking sessions): polled on this thread
/// until it is done, with no runtime entered, so that the steps' own
/// `block_on`s may run.
pub(crate) fn run_blocking_steps<F: Future>(work: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut work = std::pin::pin!(work);
    loop {
        match work.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => return output,
            // Its steps block instead; should one not, wait for its wake.
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// One open connection and the runtime that drives it.
pub(crate) struct Driver {
    runtime: Blocking,
    conn: Connection,
}

impl Driver {
    /// Opens a new connection with `settings` (see [`Connection::open`])
    /// on `runtime`.
    ///
    /// # Errors
    ///
    /// As [`Connection::open`].
    pub(crate) fn open(
        runtime: &Blocking,
        settings: &Settings,
        naming: Naming,
        on_notice: Option<NoticeHandler>,
        watch: &WritableWatch,
    ) -> Result<Driver, Error> {
        let conn = runtime.block_on(Connection::open(settings, naming, on_notice, watch))?;
        Ok(Driver {
            runtime: runtime.clone(),
            conn,
        })
    }

    /// The connection and the runtime it was opened on.
    pub(crate) fn into_parts(self) -> (Blocking, Connection) {
        (self.runtime, self.conn)
    }

    /// How SQL text runs on this connection.
    pub(crate) fn naming(&self) -> Naming {
        self.conn.naming()
    }

    /// Sends `request` and reads its answer (see [`Request`]).
    pub(crate) fn request<R: Request>(
        &mut self,
        request: &R,
    ) -> Result<R::Output, postgres::Error> {
        let Driver { runtime, conn } = self;
        runtime.block_on(request.send(conn))
    }

    /// See [`Connection::run_statement`].
    pub(crate) fn run_statement<Q, K>(
        &mut self,
        query: &Q,
        kind: K,
        params: Params<'_>,
    ) -> Result<K::Output, postgres::Error>
    where
        Q: ?Sized + ToStatement,
        K: StatementKind,
    {
        self.runtime
            .block_on(self.conn.run_statement(query, kind, params))
    }

    /// See [`Connection::take_copy_refused`].
    pub(crate) fn take_copy_refused(&mut self) -> Option<CopyRefused> {
        self.conn.take_copy_refused()
    }

    /// See [`Connection::server_status`].
    pub(crate) fn server_status(&self) -> Option<ServerStatus> {
        self.conn.server_status()
    }

    /// Runs one request to completion (see [`Connection::run`]).
    pub(crate) fn run<'a, T, F, Fut>(&'a mut self, request: F) -> Result<T, postgres::Error>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, postgres::Error>> + 'a,
    {
        let Driver { runtime, conn } = self;
        runtime.block_on(conn.run(request))
    }

    /// See [`Connection::has_ended`].
    pub(crate) fn has_ended(&self) -> bool {
        self.conn.has_ended()
    }

    /// See [`Connection::take_end_cause`].
    pub(crate) fn take_end_cause(&mut self) -> Option<postgres::Error> {
        self.conn.take_end_cause()
    }

    /// See [`Connection::outcome`].
    pub(crate) fn outcome<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, Error> {
        self.conn.outcome(result)
    }

    /// See [`Connection::notifications`].
    pub(crate) fn notifications(&mut self) -> &mut VecDeque<Notification> {
        self.conn.notifications()
    }

    /// See [`Connection::wait_notification`].
    pub(crate) fn wait_notification(
        &mut self,
        deadline: Option<Instant>,
        interrupt: &Interrupt,
    ) -> bool {
        self.runtime
            .block_on(self.conn.wait_notification(deadline, interrupt))
    }

    /// See [`Connection::close`].
    pub(crate) fn close(self) {
        let Driver { runtime, conn } = self;
        runtime.block_on(conn.close());
    }
}

//! The shared connection itself, and what we know about its transaction.
//!
//! Only the holder of the lease (see `lease.rs`) locks the session, and only
//! for as long as one request takes, so the mutex here is never held while
//! user code runs. The transaction status is mirrored into an atomic so that
//! any thread can read it without waiting.

use std::borrow::Cow;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use postgres::error::{DbError, SqlState};

use crate::Statement;
use crate::config::Settings;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::statements::{Sql, ToStatement};
use crate::status::{StatusCell, TransactionStatus};
use crate::wire::{BeginOutcome, ServerStatus};

/// A connection that answered this recently is not checked again (when
/// taken, or before a transaction's first statement): the check is for
/// connections that died while idle, and costs a turn of the I/O driver.
const RECHECK_AFTER: Duration = Duration::from_millis(1);

/// What a request sends, which decides how a pending `BEGIN` goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sends {
    /// Bind and Execute (after a Parse, the first time a text is seen):
    /// `BEGIN` rides in front of the Bind.
    Bind,
    /// A simple Query: `BEGIN` goes first, on its own.
    Query,
    /// Only Parse and Describe, which touch no data: no `BEGIN` needed yet.
    Parse,
}

/// What the crate knows about the transaction on the connection. It sends
/// every `BEGIN`, `COMMIT` and `ROLLBACK` itself, so this is exact as long as
/// user SQL does not issue transaction control statements.
#[derive(Debug)]
enum Track {
    /// No transaction block is open.
    Idle,
    /// A transaction has begun for its holder, but nothing has been sent:
    /// this `BEGIN` goes out with the first statement, in the same write and
    /// the same Sync group (see `wire.rs`). Until then the transaction costs
    /// the server nothing, and an empty one costs no round trip.
    Pending(Cow<'static, str>),
    /// A transaction block is open and healthy.
    Open,
    /// The server aborted the open transaction; carries the first error.
    Aborted(Box<DbError>),
    /// The connection broke while a transaction was open: the server has
    /// rolled it back, and the holder must still be told.
    Lost,
}

struct Slot {
    driver: Option<Driver>,
    track: Track,
}

pub(crate) struct Session {
    slot: Mutex<Slot>,
    status: StatusCell,
    settings: Settings,
}

/// The session, locked by the lease holder for one operation.
pub(crate) struct Active<'a> {
    slot: MutexGuard<'a, Slot>,
    status: &'a StatusCell,
    settings: &'a Settings,
}

impl Session {
    pub(crate) fn new(settings: Settings) -> Self {
        Session {
            slot: Mutex::new(Slot {
                driver: None,
                track: Track::Idle,
            }),
            status: StatusCell::new(),
            settings,
        }
    }

    pub(crate) fn lock(&self) -> Active<'_> {
        Active {
            slot: self.slot.lock(),
            status: &self.status,
            settings: &self.settings,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn status(&self) -> TransactionStatus {
        self.status.get()
    }
}

impl Active<'_> {
    /// Makes sure there is a live connection, opening one if there is none or
    /// if the server closed the old one while it sat idle.
    ///
    /// Must only be called when nothing of a transaction has reached the
    /// server (none is open, or one is pending).
    pub(crate) fn ensure_open(&mut self) -> Result<()> {
        debug_assert!(matches!(self.slot.track, Track::Idle | Track::Pending(_)));
        if let Some(driver) = self.slot.driver.as_mut() {
            if driver.answered_within(RECHECK_AFTER) || driver.is_alive() {
                return Ok(());
            }
            let cause = driver.take_end_cause();
            match cause {
                Some(cause) => {
                    log::info!("pgtx: connection closed while idle ({cause}); reconnecting")
                }
                None => log::info!("pgtx: connection closed while idle; reconnecting"),
            }
            self.slot.driver = None;
        }
        match Driver::open(self.settings) {
            Ok(driver) => {
                self.slot.driver = Some(driver);
                self.publish();
                Ok(())
            }
            Err(e) => {
                self.status.set(TransactionStatus::Closed);
                Err(e)
            }
        }
    }

    /// Whether a transaction block is (or was, before the connection broke) open.
    pub(crate) fn in_transaction(&self) -> bool {
        !matches!(self.slot.track, Track::Idle)
    }

    /// Runs one statement, keeping the transaction status exact; a pending
    /// `BEGIN` goes out with it (or before it, see [`Sends`]).
    pub(crate) fn statement<T>(
        &mut self,
        sends: Sends,
        request: impl FnOnce(&mut Driver) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let pending = match &self.slot.track {
            Track::Pending(begin) if sends != Sends::Parse => Some(begin.clone()),
            _ => None,
        };
        if pending.is_some() {
            // A connection that died while the transaction waited for its
            // first statement is replaced: nothing of it reached the server.
            self.ensure_open().inspect_err(|_| {
                self.slot.track = Track::Lost;
                self.publish();
            })?;
        }
        let Some(driver) = self.slot.driver.as_mut() else {
            return Err(Error::ConnectionLost(None));
        };
        self.status.set(TransactionStatus::Active);
        let mut began = false;
        let result = match (&pending, sends) {
            (Some(begin), Sends::Bind) => {
                driver.arm_begin(begin);
                let result = request(driver);
                began = driver.begin_outcome() == BeginOutcome::Began;
                result
            }
            // A simple Query cannot share BEGIN's Sync group: BEGIN first, alone.
            (Some(begin), _) => match driver.run(|client| client.batch_execute(begin)) {
                Ok(()) => {
                    began = true;
                    request(driver)
                }
                Err(e) => Err(e),
            },
            (None, _) => request(driver),
        };
        let result = match result {
            Err(e) if driver.has_ended() => Err(Error::ConnectionLost(Some(driver.why_lost(e)))),
            other => other.map_err(Error::Db),
        };
        if began {
            self.slot.track = Track::Open;
        }
        match &result {
            Err(Error::ConnectionLost(_)) => self.lose(),
            Err(e) => {
                // Any server error inside the transaction aborts it: the
                // server's own (a failed statement, or a refused BEGIN), or,
                // while BEGIN is still pending, ours, so that it reads the
                // same to the holder.
                if let (Track::Open | Track::Pending(_), Some(db)) =
                    (&self.slot.track, e.as_db_error())
                {
                    self.slot.track = Track::Aborted(Box::new(db.clone()));
                }
                self.publish();
            }
            Ok(_) => self.publish(),
        }
        result
    }

    /// Runs one statement given as SQL text or a prepared statement. Text is
    /// prepared once per connection (see `Driver::prepare_cached`).
    ///
    /// A cached statement can go stale where freshly prepared text would not:
    /// a table's columns changed ("cached plan must not change result type")
    /// or the user deallocated it. Then the cache is emptied, and, outside a
    /// transaction, the statement is prepared again and retried once (the
    /// server ran nothing). Inside a transaction the error has aborted it,
    /// as any statement error does.
    pub(crate) fn cached_statement<Q, T>(
        &mut self,
        query: &Q,
        mut request: impl FnMut(&mut Driver, &Statement) -> Result<T, postgres::Error>,
    ) -> Result<T>
    where
        Q: ?Sized + ToStatement,
    {
        let sql = match query.sql() {
            Sql::Prepared(statement) => {
                return self.statement(Sends::Bind, |driver| request(driver, statement));
            }
            Sql::Text(sql) => sql,
        };
        let may_retry = !self.in_transaction();
        self.statement(Sends::Bind, |driver| {
            let statement = driver.prepare_cached(sql)?;
            match request(driver, &statement) {
                Err(e) if is_stale(&e) && !driver.has_ended() => {
                    log::debug!("pgtx: cached statement is stale ({e}); emptying the cache");
                    driver.forget_statements();
                    if !may_retry {
                        return Err(e);
                    }
                    let statement = driver.prepare_cached(sql)?;
                    request(driver, &statement)
                }
                result => result,
            }
        })
    }

    /// Begins a transaction: nothing is sent until its first statement
    /// (see [`Track::Pending`]).
    pub(crate) fn begin(&mut self, begin: Cow<'static, str>) {
        debug_assert!(matches!(self.slot.track, Track::Idle));
        self.slot.track = Track::Pending(begin);
        self.publish();
    }

    /// Sends `COMMIT`, and says truthfully whether the server committed.
    ///
    /// On `Err` the transaction is over either way (rolled back, or of unknown
    /// outcome when the connection broke during `COMMIT`).
    pub(crate) fn commit(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.slot.track, Track::Idle) {
            // Nothing was sent, so there is nothing to commit.
            Track::Idle | Track::Pending(_) => {
                self.publish();
                Ok(())
            }
            Track::Lost => {
                self.publish();
                Err(Error::ConnectionLost(None))
            }
            Track::Aborted(first) => {
                // Anything but idle makes `rollback` send ROLLBACK.
                self.slot.track = Track::Open;
                self.rollback();
                Err(Error::TransactionAborted(first))
            }
            Track::Open => {
                let Some(driver) = self.slot.driver.as_mut() else {
                    return Err(Error::ConnectionLost(None));
                };
                self.status.set(TransactionStatus::Active);
                // A prepared COMMIT saves the server parsing it each time
                // (prepared once per connection; `DISCARD ALL` and
                // `DEALLOCATE`, which would drop it, empty the cache).
                let commit = match driver.prepare_cached("COMMIT") {
                    Ok(commit) => commit,
                    Err(e) if driver.has_ended() => {
                        // COMMIT was never sent: the server rolls back.
                        let cause = driver.why_lost(e);
                        self.discard();
                        return Err(Error::ConnectionLost(Some(cause)));
                    }
                    Err(e) => {
                        log::warn!("pgtx: could not prepare COMMIT ({e}); rolling back");
                        self.slot.track = Track::Open;
                        self.rollback();
                        return Err(Error::Db(e));
                    }
                };
                let result = driver.run(|client| client.execute(&commit, &[]));
                match result {
                    Ok(_) => {
                        self.publish();
                        Ok(())
                    }
                    Err(e) if e.as_db_error().is_some() && !driver.has_ended() => {
                        // The server refused to commit (a deferred constraint, a
                        // serialization failure): the transaction is rolled back.
                        self.publish();
                        Err(Error::Db(e))
                    }
                    Err(e) => {
                        let cause = driver.why_lost(e);
                        self.discard();
                        self.status.set(TransactionStatus::Unknown);
                        Err(Error::CommitOutcomeUnknown(Some(cause)))
                    }
                }
            }
        }
    }

    /// Ends the transaction without saving it. Never fails: when `ROLLBACK`
    /// cannot be sent, the connection is closed, which makes the server roll
    /// back, and no one can inherit it.
    pub(crate) fn rollback(&mut self) {
        match self.slot.track {
            Track::Idle => return,
            Track::Pending(_) | Track::Lost => {
                self.slot.track = Track::Idle;
                self.publish();
                return;
            }
            Track::Open | Track::Aborted(_) => {}
        }
        let Some(driver) = self.slot.driver.as_mut() else {
            self.slot.track = Track::Idle;
            self.publish();
            return;
        };
        if driver.server_status() == Some(ServerStatus::Idle) {
            // The server has no transaction block open (BEGIN was refused,
            // or never went out): there is nothing to roll back.
            self.slot.track = Track::Idle;
            self.publish();
            return;
        }
        self.status.set(TransactionStatus::Active);
        if let Err(e) = driver.run(|client| client.batch_execute("ROLLBACK")) {
            log::warn!(
                "pgtx: ROLLBACK failed ({e}); closing the connection so the server rolls back"
            );
            self.discard();
        }
        self.slot.track = Track::Idle;
        self.publish();
    }

    /// Closes the connection (if any). The next holder opens a new one.
    pub(crate) fn close(&mut self) {
        if let Some(driver) = self.slot.driver.take() {
            driver.close();
        }
        self.slot.track = Track::Idle;
        self.publish();
    }

    /// Drops a connection that cannot be trusted any more.
    fn discard(&mut self) {
        self.slot.driver = None;
        self.slot.track = Track::Idle;
        self.publish();
    }

    /// The connection broke: a transaction that was open is lost.
    fn lose(&mut self) {
        self.slot.driver = None;
        if !matches!(self.slot.track, Track::Idle) {
            self.slot.track = Track::Lost;
        }
        self.publish();
    }

    /// Mirrors the slot into the status everyone can read.
    fn publish(&self) {
        let status = match (&self.slot.driver, &self.slot.track) {
            (_, Track::Lost) => TransactionStatus::Unknown,
            (None, _) => TransactionStatus::Closed,
            (Some(_), Track::Idle) => TransactionStatus::Idle,
            (Some(_), Track::Open | Track::Pending(_)) => TransactionStatus::InTransaction,
            (Some(_), Track::Aborted(_)) => TransactionStatus::InError,
        };
        self.status.set(status);
    }
}

/// Whether `e` says a prepared statement no longer fits the database (so it
/// must be prepared again) rather than that the statement itself failed.
fn is_stale(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
        || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED
            && db
                .message()
                .starts_with("cached plan must not change result type"))
}

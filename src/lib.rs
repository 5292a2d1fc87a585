//! Typestate PostgreSQL transactions on one connection shared by many threads.
//!
//! `pgtx` is a Rust port, and a stricter version, of
//! psycopg2-managed-connection: many threads share one connection (no TCP
//! or backend start-up per unit of work) through an exclusive hold, and no
//! thread can leave a transaction open for the next one. The compiler refuses
//! a transaction that is neither committed nor rolled back; what the compiler
//! cannot see (`mem::forget`, a panic, a dropped server) is rolled back at run
//! time and reported with a documented error.
//!
//! # Tutorial
//!
//! ```no_run
//! use pgtx::ManagedConnection;
//!
//! // Reads the settings; connects only when first used.
//! let manager = ManagedConnection::new("host=localhost user=postgres dbname=postgres")?;
//!
//! // The closure form: it must return the `Tx` that `commit()` or `rollback()`
//! // gave back, so a transaction that is never finished does not compile.
//! manager.transaction(|mut tx| {
//!     tx.execute("CREATE TABLE IF NOT EXISTS visits (n bigint)", &[])?;
//!     tx.execute("INSERT INTO visits VALUES ($1)", &[&1_i64])?;
//!     tx.commit()
//! })?;
//!
//! // The guard form: `lock()` waits for the connection, `begin()` opens a
//! // transaction, and `commit()` turns `Tx<Open>` into `Tx<Done>`.
//! let guard = manager.lock()?;
//! let mut tx = guard.begin()?;
//! let visits: i64 = tx.query_one("SELECT count(*) FROM visits", &[])?.get(0);
//! let done = tx.commit()?;
//! done.release(); // or let it go out of scope
//! println!("{visits} visits; connection is {}", manager.status());
//! # Ok::<(), pgtx::Error>(())
//! ```
//!
//! Share the manager between threads by reference (`std::thread::scope`),
//! in an `Arc`, or in a `static`: it is `Send + Sync`.
//!
//! # Guarantees
//!
//! What the compiler enforces:
//!
//! - statements exist only on [`Tx<'_, Open>`](Tx) (and autocommit ones on
//!   [`Guard`]); [`Tx::commit`] and [`Tx::rollback`] consume it, so it cannot
//!   be used, committed or rolled back again afterwards;
//! - a [`ManagedConnection::transaction`] closure can only return by handing
//!   back its own transaction finished (its lifetime brands it: a `Tx` from
//!   another transaction does not fit), and it cannot keep the `Tx`;
//! - a [`Savepoint`] borrows its transaction: the `Tx` cannot be used or
//!   committed until the savepoint is released or rolled back, and a
//!   finished savepoint cannot be used again;
//! - a `Tx` or `Guard` cannot outlive the manager, be cloned, or move to
//!   another thread; the state markers cannot be built or added to outside
//!   this crate.
//!
//! What the runtime fallback catches (see [`Tx`] and [`Savepoint`] for the
//! details):
//!
//! - a `Tx<'_, Open>` dropped unfinished (early return, panic) is rolled back
//!   before the connection is released;
//! - a forgotten `Tx` or `Guard` is rolled back by the next acquirer, which
//!   takes the connection over; the forgotten value fails safely with
//!   [`Error::LeaseRevoked`] if it is ever used;
//! - a connection the server closed while idle is replaced before anybody
//!   gets it; one that breaks in use is reported ([`Error::ConnectionLost`],
//!   [`Error::CommitOutcomeUnknown`]) and replaced by the next holder;
//! - `commit` after a failed statement returns [`Error::TransactionAborted`]
//!   instead of pretending to succeed;
//! - a statement of a transaction never runs outside it: `BEGIN` travels
//!   with the first statement in one protocol Sync group (one round trip
//!   saved), so if the server refuses `BEGIN` it skips the statement too
//!   (see [`Guard::begin`]); SQL that would end or restart the transaction
//!   (`COMMIT`, `ROLLBACK`, `BEGIN`, `END`, …, anywhere in the text) is
//!   refused before it is sent ([`Error::TransactionControl`]);
//! - a [`Guard`] whose SQL opened a transaction block (a plain `BEGIN`) and
//!   left it open is rolled back when it lets go: the next holder always
//!   starts idle;
//! - an unfinished [`Savepoint`] (dropped or forgotten) is rolled back,
//!   only its own work, before its transaction goes on;
//! - asking for the connection again on a thread that holds it (inside a
//!   [`ManagedConnection::transaction`] closure, or with a guard not
//!   released) is refused at once with [`Error::Reentrant`] instead of
//!   deadlocking or taking the live hold over.
//!
//! The transaction status ([`ManagedConnection::status`]) is the server's
//! own word, from its last answer, not pgtx's bookkeeping.
//!
//! Each fallback rollback is reported as [`Error::UnfinishedTransaction`],
//! whose message is psycopg2-managed-connection's own:
//! "Did not commit or rollback open transaction before releasing connection."
//! A closure that returns `Err` gets its own error back, with the
//! transaction rolled back.
//!
//! # Locking and threads
//!
//! One thread at a time holds the connection. [`ManagedConnection::lock`]
//! waits, [`ManagedConnection::try_lock`] never waits for another holder,
//! and [`ManagedConnection::lock_timeout`] gives up with
//! [`Error::LockTimeout`]. Waiters are served fairly. The transaction status
//! ([`ManagedConnection::status`]) is readable from any thread without
//! waiting.
//!
//! # Two-phase commit
//!
//! [`TwoPhase`] commits work on several databases everywhere or nowhere
//! (PostgreSQL's `PREPARE TRANSACTION` / `COMMIT PREPARED`): join managers
//! or DSNs, run statements on each participant's lent `Tx`, notify after
//! the commit, then [`TwoPhase::commit`]. Before the decision any failure
//! rolls back every participant ([`Error::VoteFailed`]); after it, the
//! outcome is never misreported ([`Error::InDoubt`] says who committed and
//! who is still prepared); one participant commits in one phase, so a stock
//! server works. The decision is a row committed with the deciding
//! participant's own work, so [`two_phase::Recovery`] finishes whatever a
//! crashed coordinator left prepared, correctly, and may run at any time;
//! it knows the deciding database by its server's `system_identifier`, so
//! a database of the same name on another host is never taken for it.
//! See [`TwoPhase`] for the protocol and its guarantees; the async front
//! has its own (`aio::TwoPhase`, feature `aio`), run by the same code.
//!
//! # Pipelines
//!
//! A [`Pipeline`] sends a transaction's statements, with `BEGIN` and
//! `COMMIT`, in one write and one Sync group: one round trip in all
//! ([`Tx::commit_pipeline`]), or a batch inside a transaction that goes on
//! ([`Tx::run_pipeline`]). When one statement fails the server skips the
//! rest and nothing commits ([`Error::PipelineFailed`] names it).
//!
//! # LISTEN/NOTIFY
//!
//! A [`Listener`] receives notifications on a connection of its own
//! ([`ManagedConnection::listener`] or [`Listener::connect`]), so waiting
//! for them never holds the shared connection. Channel names are quoted
//! identifiers, taken exactly as given, never read as SQL; each
//! notification is delivered once, in the order sent, whole. When its
//! connection breaks, the receiving methods reconnect on a
//! [`ReconnectPolicy`], listen to every channel again, and only then
//! deliver [`ListenEvent::Reconnected`], once per outage: notifications
//! sent meanwhile may have been missed, so re-read what they stand for.
//!
//! ```no_run
//! use std::time::Duration;
//! use pgtx::{ListenEvent, ManagedConnection};
//!
//! let manager = ManagedConnection::new("host=localhost user=postgres")?;
//! let mut listener = manager.listener()?;
//! listener.listen("jobs")?;
//! // Any session may send; a notification arrives once its transaction commits.
//! manager.lock()?.execute("SELECT pg_notify('jobs', 'build 42')", &[])?;
//! while let Some(event) = listener.recv_timeout(Duration::from_secs(1))? {
//!     match event {
//!         ListenEvent::Notification(n) => println!("{}: {}", n.channel(), n.payload()),
//!         ListenEvent::Reconnected { .. } => println!("reconnected: re-read the jobs"),
//!         _ => {} // the enum is non-exhaustive
//!     }
//! }
//! # Ok::<(), pgtx::Error>(())
//! ```
//!
//! See [`Listener`] for observers, timeouts and what happens while the
//! connection is down.
//!
//! # Pools and retried transactions
//!
//! One manager serves one process until its transactions queue behind
//! each other; a [`Pool`] of N managed connections then serves many
//! threads with the same API and the same guarantees per connection
//! (`pool.transaction(|tx| …)`, `pool.lock()` → the same [`Guard`] and
//! [`Tx`]). Under `SERIALIZABLE`, or whenever transactions can deadlock,
//! [`ManagedConnection::transaction_retrying`] (and the pool's) runs the
//! whole closure again on SQLSTATE 40001 / 40P01, with backoff, and never
//! after [`Error::CommitOutcomeUnknown`].
//!
//! A free connection goes to the thread that waited longest, except that
//! a thread releasing one and asking again at once may take it straight
//! back until the first thread in line has waited
//! [`PoolBuilder::fair_after`] (1 ms by default): a thread switch per
//! transaction costs more than the transaction. Raise it when throughput
//! under overload matters more than the longest wait; `Duration::ZERO`
//! is strictly first come, first served.
//!
//! ```no_run
//! use pgtx::{IsolationLevel, Pool, RetryPolicy, TxOptions};
//!
//! let pool = Pool::new("host=localhost user=postgres", 4)?;
//! let serializable = TxOptions::new().isolation(IsolationLevel::Serializable);
//! pool.transaction_retrying_with(serializable, &RetryPolicy::default(), |mut tx| {
//!     tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[])?;
//!     tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[])?;
//!     tx.commit()
//! })?;
//! # Ok::<(), pgtx::Error>(())
//! ```
//!
//! # Reconnection, cancellation and connection hooks
//!
//! What txpostgres gives a Twisted program, for threads:
//!
//! - [`Builder::reconnect`] with a [`ReconnectPolicy`] (exponential backoff
//!   with jitter; by default txpostgres' schedule: at once, then 1.7 s
//!   growing ×1.7 up to 10 s, each wait ±12 %): when the connection dies and
//!   cannot be reopened at once, one background thread reconnects while
//!   every call fails at once with [`Error::ConnectionDead`] (no connect
//!   timeout per call, nothing sent down a dead link); a round of attempts
//!   that runs out is [`Error::ReconnectFailed`], with its first and last
//!   failure. [`Builder::on_reconnect`] handlers run once per recovery.
//! - [`ManagedConnection::cancel_handle`] gives a [`CancelHandle`] that
//!   any thread can use to cancel the statement running now: it fails with
//!   [`Error::Cancelled`] (not [`Error::Db`], as `statement_timeout` does),
//!   and never the next holder's statement.
//! - [`Builder::on_connect`] runs code on every new connection before
//!   anyone gets it (`SET search_path`, `SET application_name`, `PREPARE`);
//!   a failing hook fails that attempt with [`Error::OnConnect`].
//!
//! ```no_run
//! use std::time::Duration;
//! use pgtx::{Error, ManagedConnection, ReconnectPolicy};
//!
//! let manager = ManagedConnection::builder("host=localhost user=postgres connect_timeout=2")
//!     .on_connect(|conn| Ok(conn.batch_execute("SET application_name = 'billing'")?))
//!     .reconnect(ReconnectPolicy::default().jitter(0.2))
//!     .on_reconnect(|_conn| {
//!         println!("the connection is back: refresh the caches");
//!         Ok(())
//!     })
//!     .build()?;
//! let cancel = manager.cancel_handle();
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         std::thread::sleep(Duration::from_millis(100));
//!         cancel.cancel()
//!     });
//!     match manager.transaction(|mut tx| {
//!         tx.execute("SELECT pg_sleep(10)", &[])?;
//!         tx.commit()
//!     }) {
//!         Err(Error::Cancelled(_)) => println!("cancelled, and rolled back"),
//!         Err(Error::ConnectionDead { .. }) => println!("the server is down; try later"),
//!         other => println!("{other:?}"),
//!     }
//! });
//! # Ok::<(), pgtx::Error>(())
//! ```
//!
//! # Transaction poolers (PgBouncer, Supavisor)
//!
//! Behind a pooler in transaction mode, build the manager with
//! [`Builder::statement_cache(false)`](Builder::statement_cache): statements
//! then run on the unnamed statement, which nothing carries from one
//! server connection to the next, and `BEGIN` still travels with the first
//! statement. Session state (`SET`, `LISTEN`, temporary tables, session
//! advisory locks) cannot work through such a pooler; the builder option
//! lists what does.
//!
//! ```no_run
//! let manager = pgtx::ManagedConnection::builder("host=localhost port=6432 dbname=app")
//!     .statement_cache(false)
//!     .build()?;
//! manager.transaction(|mut tx| {
//!     tx.execute("UPDATE counter SET n = n + $1", &[&1_i64])?;
//!     tx.commit()
//! })?;
//! # Ok::<(), pgtx::Error>(())
//! ```
//!
//! # Features
//!
//! - `tls` (default): TLS connections with rustls and its aws-lc-rs
//!   crypto provider, for every `sslmode` (`prefer`, `require`,
//!   `verify-ca`, `verify-full`, …), root and client certificates.
//!   Without it, `sslmode=require` and stricter are refused at connect
//!   time with a clear error rather than silently sent in clear.
//! - `testing`: the module `pgtx::testing`, a throwaway PostgreSQL server
//!   for your own tests (the one pgtx's tests and examples run on), and
//!   `testing::rolled_back`, a transaction that always rolls back.
//!
//! # Not supported
//!
//! Connection settings that libpq has and pgtx cannot honour
//! (`sslcrl`, `gssencmode=require`, `replication`, …) are refused when
//! connecting, with an error that names them, rather than ignored: see
//! [`Settings`](Settings#not-supported).

#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, clippy::all)]
// Nothing here needs `unsafe`: the lock is a lease checked by epoch rather
// than a guard that would have to be force-unlocked.
#![forbid(unsafe_code)]

#[cfg(feature = "aio")]
pub mod aio;
pub mod binary_copy;
mod blocking;
mod cancel;
mod config;
mod conn;
mod connect;
mod copy;
mod error;
mod generic;
mod guard;
mod listener;
mod machine;
mod manager;
mod pipeline;
mod pool;
mod portal;
mod rows;
mod savepoint;
mod scope;
mod state;
mod statements;
#[cfg(feature = "testing")]
pub mod testing;
pub mod two_phase;
mod tx;
mod user_code;

pub use crate::blocking::hooks::NewConnection;
pub use crate::cancel::CancelHandle;
pub use crate::config::{SessionTarget, Settings, SettingsError};
pub use crate::copy::{CopyInWriter, CopyOutReader};
pub use crate::error::HookError;
pub use crate::error::{ConnectError, Error, Result, UNFINISHED_TRANSACTION};
pub use crate::generic::{ConnectionSource, GenericClient};
pub use crate::guard::Guard;
pub use crate::listener::{
    Events, ListenEvent, Listener, ListenerWaker, ObserverError, ObserverId,
};
pub use crate::machine::options::{IsolationLevel, TxOptions};
pub use crate::machine::reconnect::{Backoff, ReconnectPolicy};
pub use crate::machine::retry::RetryPolicy;
pub use crate::machine::transaction_status::TransactionStatus;
pub use crate::manager::{Builder, DEFAULT_ABANDON_AFTER, ManagedConnection};
pub use crate::pipeline::{Outcome, Pipeline, PipelineResults, Queued};
pub use crate::pool::{Pool, PoolBuilder, PoolState};
pub use crate::portal::Portal;
pub use crate::rows::RowIter;
pub use crate::savepoint::Savepoint;
pub use crate::state::{Done, Open, State};
pub use crate::two_phase::TwoPhase;
pub use crate::tx::Tx;

pub use crate::statements::ToStatement;
pub use postgres::error::{DbError, SqlState};
pub use postgres::types::{self, ToSql};
pub use postgres::{Notification, Row, SimpleQueryMessage, Statement};

/// The README's examples, compiled by `cargo test` so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

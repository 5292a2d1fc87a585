//! pgtx for async Rust (feature `aio`, on tokio): the same typestate
//! transactions and guarantees as the blocking API, and one more: every
//! future can be dropped at any `.await` without leaving a dirty
//! connection to the next holder (see
//! [`ManagedConnection`#cancel-safety](ManagedConnection#cancel-safety)).
//!
//! ```no_run
//! # async fn demo() -> pgtx::Result<()> {
//! let manager = pgtx::aio::ManagedConnection::new("host=localhost user=postgres")?;
//! manager
//!     .transaction(async |mut tx| {
//!         tx.execute("INSERT INTO visits VALUES ($1)", &[&1_i64]).await?;
//!         tx.commit().await
//!     })
//!     .await?;
//! let mut guard = manager.lock().await?;
//! let visits: i64 = guard.query_one("SELECT count(*) FROM visits", &[]).await?.get(0);
//! # Ok(())
//! # }
//! ```
//!
//! The core under both fronts is one: connections are read and written on
//! the task that waits for the answer (no task is spawned per connection),
//! with the same wire-level `BEGIN` in the first statement's Sync group.

mod binary_copy;
mod cancel;
mod copy;
mod factory;
mod generic;
mod guard;
mod handoff;
mod held;
mod lease;
mod listener;
mod manager;
mod outage;
mod pool;
mod rows;
mod runtime;
mod savepoint;
mod scope;
mod scope_marks;
mod session;
mod two_phase;
mod tx;

pub use self::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
pub use self::cancel::CancelHandle;
pub use self::copy::{CopyInWriter, CopyOutReader};
pub use self::factory::{BoxFuture, NewConnection};
pub use self::generic::{ConnectionSource, GenericClient};
pub use self::guard::Guard;
pub use self::listener::Listener;
pub use self::manager::{Builder, ManagedConnection};
pub use self::pool::{Pool, PoolBuilder};
pub use self::rows::RowStream;
pub use self::savepoint::Savepoint;
pub use self::two_phase::{TwoPhase, TxRef};
pub use self::tx::Tx;

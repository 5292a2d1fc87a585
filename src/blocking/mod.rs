//! The blocking shell's machinery: the one runtime module (`driver.rs`,
//! the only `block_on`), the session lock and its fallbacks, the thread
//! lease, the connection factory with the user's blocking hooks, and the
//! background reconnection. The public blocking handles (manager, guard,
//! `Tx`, savepoint, pool, listener, two-phase commit) stand on it.
//!
//! May import: `conn`, `connect`, `config`, `machine`, `error`, `state`,
//! `statements`.

pub(crate) mod driver;
pub(crate) mod factory;
pub(crate) mod held;
pub(crate) mod hooks;
pub(crate) mod lease;
pub(crate) mod outage;
pub(crate) mod session;
pub(crate) mod shared;

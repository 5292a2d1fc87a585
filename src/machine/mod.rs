//! The pure layer: what pgtx decides, with no I/O, no runtime and no
//! lock, each piece with its unit tests. The layers above carry the
//! decisions out.
//!
//! May import: `error`, `state`, `statements` (and the standard library).

pub(crate) mod control;
pub(crate) mod fallback;
pub(crate) mod ident;
pub(crate) mod options;
pub(crate) mod reconnect;
pub(crate) mod retry;
pub(crate) mod stale;
pub(crate) mod track;
pub(crate) mod transaction_status;

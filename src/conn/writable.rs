//! What the connections made from one builder (a pool's members, or
//! managers built from one builder) learn together about the server they
//! took for writable: that it refused a write. One member finding out is
//! enough to give up every connection opened to it before, so that no
//! pooled connection stays on a demoted or fenced server until its own
//! next write fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the refusals heard of: a connection opened at an earlier count
/// may be on the server that refused (see [`Connection::refuses_writes`]
/// in `conn/mod.rs`). Clones share the count.
///
/// [`Connection::refuses_writes`]: super::Connection::refuses_writes
#[derive(Clone, Debug, Default)]
pub(crate) struct WritableWatch(Arc<AtomicU64>);

impl WritableWatch {
    /// The count now: what a connection opened now remembers.
    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// A connection opened at `opened_at` found its server read-only:
    /// every connection opened up to then is suspect.
    pub(crate) fn report_refusal(&self, opened_at: u64) {
        self.0.fetch_max(opened_at + 1, Ordering::AcqRel);
    }

    /// Whether a refusal was heard of since `opened_at`.
    pub(crate) fn refused_since(&self, opened_at: u64) -> bool {
        self.now() > opened_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_marks_every_connection_opened_before_it_and_none_after() {
        let watch = WritableWatch::default();
        let shared = watch.clone();
        let (first, second) = (watch.now(), watch.now());
        assert!(!watch.refused_since(first));
        shared.report_refusal(second);
        assert!(watch.refused_since(first) && watch.refused_since(second));
        let after = watch.now();
        assert!(!watch.refused_since(after));
        // A late report from a connection opened long ago moves nothing back.
        watch.report_refusal(first);
        assert!(!watch.refused_since(after));
    }
}

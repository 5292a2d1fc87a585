//! What the connections made from one builder (a pool's members, or
//! managers built from one builder) learn together about the server they
//! took for writable: that it turned read-only. One member finding out is
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

/// One connection's side, when its settings want a writable server: the
/// signs that its server may no longer be one, and what asking found.
pub(crate) struct WritableCheck {
    /// What asks the server (see `SessionTarget::still_writable_question`).
    question: &'static str,
    /// A write was refused as read-only (SQLSTATE 25006) since the server
    /// was last known writable: perhaps it turned read-only, perhaps the
    /// session's own transaction was `READ ONLY`.
    write_refused: bool,
    /// The server was found read-only: the connection is to be replaced.
    read_only_found: bool,
    watch: WritableWatch,
    /// The watch's count when the server was last known writable.
    known_writable_at: u64,
}

impl WritableCheck {
    /// A connection opened now, on a server `target_session_attrs` found
    /// writable.
    pub(crate) fn new(question: &'static str, watch: &WritableWatch) -> WritableCheck {
        WritableCheck {
            question,
            write_refused: false,
            read_only_found: false,
            known_writable_at: watch.now(),
            watch: watch.clone(),
        }
    }

    pub(crate) fn question(&self) -> &'static str {
        self.question
    }

    /// The count to remember if the answer about to be asked for says
    /// "writable" (read before asking: a refusal reported meanwhile still
    /// counts).
    pub(crate) fn asked_at(&self) -> u64 {
        self.watch.now()
    }

    /// The server refused a write as read-only.
    pub(crate) fn write_refused(&mut self) {
        self.write_refused = true;
    }

    /// Whether the server should be asked: a write was refused here, or a
    /// connection alongside found its server read-only since this one's
    /// was last known writable.
    pub(crate) fn in_doubt(&self) -> bool {
        !self.read_only_found
            && (self.write_refused || self.watch.refused_since(self.known_writable_at))
    }

    /// What asking (at count `asked_at`) found: a server found read-only
    /// (or a question that failed) retires the connection and is told to
    /// the connections alongside.
    pub(crate) fn answered(&mut self, writable: bool, asked_at: u64) {
        if writable {
            self.write_refused = false;
            self.known_writable_at = asked_at;
        } else {
            self.read_only_found = true;
            self.watch.report_refusal(self.known_writable_at);
        }
    }

    /// Whether the server was found read-only.
    pub(crate) fn found_read_only(&self) -> bool {
        self.read_only_found
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

    #[test]
    fn a_refused_write_is_asked_about_and_only_a_read_only_answer_spreads() {
        let watch = WritableWatch::default();
        let (mut one, two) = (
            WritableCheck::new("?", &watch),
            WritableCheck::new("?", &watch),
        );
        assert!(!one.in_doubt() && !two.in_doubt());
        // The session's own READ ONLY transaction: asked, found writable.
        one.write_refused();
        assert!(one.in_doubt() && !two.in_doubt());
        let at = one.asked_at();
        one.answered(true, at);
        assert!(!one.in_doubt() && !one.found_read_only() && !two.in_doubt());
        // The server turned read-only: found so, and the other asks too.
        one.write_refused();
        let at = one.asked_at();
        one.answered(false, at);
        assert!(one.found_read_only() && !one.in_doubt());
        assert!(two.in_doubt());
        // A connection opened after the report is not in doubt.
        assert!(!WritableCheck::new("?", &watch).in_doubt());
    }
}

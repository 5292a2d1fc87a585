//! Telling a `transaction(…)` scope whose future was dropped mid-closure
//! (reported, as a dropped `Tx` is) from one whose closure returned an
//! error after dropping its `Tx` (its error is its report).
//!
//! The two facts come from two destructors that run in an order nobody
//! promises: the scope's `Tx` letting go with its transaction open, and
//! the scope's own future being dropped before its closure returned.
//! Each sets its bit; whichever comes second reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;
use postgres::error::DbError;

/// The scope's `Tx` let go while its transaction was open (rolled back).
const ROLLED_BACK: u8 = 1;
/// The scope's future was dropped before its closure returned.
const ABANDONED: u8 = 2;

/// What a scope and its `Tx` share: the two marks, and the last error the
/// server reported in the scope's transaction (what `transaction_retrying`
/// decides on), handed over when the `Tx` lets go — while its lease is
/// still held, before another holder's transaction can begin.
#[derive(Clone, Default)]
pub(crate) struct ScopeMarks(Arc<Shared>);

#[derive(Default)]
struct Shared {
    marks: AtomicU8,
    failure: Mutex<Option<Box<DbError>>>,
}

impl ScopeMarks {
    /// Sets `mark`; whether both are now set (and the caller reports).
    fn set(&self, mark: u8) -> bool {
        let before = self.0.marks.fetch_or(mark, Ordering::AcqRel);
        before | mark == ROLLED_BACK | ABANDONED && before & mark == 0
    }

    /// Keeps the last error of the scope's transaction.
    pub(crate) fn keep_failure(&self, failure: Option<Box<DbError>>) {
        *self.0.failure.lock() = failure;
    }

    /// The last error of the scope's transaction, taken.
    pub(crate) fn take_failure(&self) -> Option<Box<DbError>> {
        self.0.failure.lock().take()
    }

    /// The scope's `Tx` let go with its transaction open: whether the
    /// scope was already abandoned (then report).
    pub(crate) fn rolled_back(&self) -> bool {
        self.set(ROLLED_BACK)
    }

    /// The scope's future was dropped before its closure returned:
    /// whether its `Tx` already let go with the transaction open (then
    /// report).
    pub(crate) fn abandoned(&self) -> bool {
        self.set(ABANDONED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whichever_mark_comes_second_reports_once() {
        let marks = ScopeMarks::default();
        assert!(!marks.rolled_back(), "alone: not yet");
        assert!(marks.abandoned(), "second: reports");
        assert!(!marks.abandoned(), "again: no second report");

        let marks = ScopeMarks::default();
        assert!(!marks.abandoned());
        assert!(marks.rolled_back(), "the other order reports too");
        assert!(!marks.rolled_back());
    }
}

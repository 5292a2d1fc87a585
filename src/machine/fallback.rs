//! What the runtime fallback decides when a hold ends without `commit` or
//! `rollback`: whether to roll back, what to report, and whether a holder
//! that let go on purpose gets an error. Pure: no I/O, unit-tested.
//!
//! The session records the decision and a front carries it out
//! (`SessionCore::record_fallback`, `settle_fallback`): the blocking shell
//! at once, so that the next holder starts idle; an async front, which
//! cannot wait inside `Drop`, on the next use of the connection.

use std::fmt;
use std::time::Duration;

/// Why an acquirer decided the holder had abandoned the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abandoned {
    /// The holding thread has exited.
    ThreadExited,
    /// The holder ran nothing for longer than `abandon_after`.
    Idle(Duration),
    /// The handle that held it was forgotten (`mem::forget`), which its
    /// owner found out at once (a two-phase participant's lent
    /// transaction).
    #[cfg_attr(not(feature = "aio"), allow(dead_code))]
    Forgotten,
}

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abandoned::ThreadExited => f.write_str("its thread exited without releasing it"),
            Abandoned::Idle(idle) => write!(f, "it ran nothing for {idle:?}"),
            Abandoned::Forgotten => f.write_str("its handle was forgotten (`mem::forget`)"),
        }
    }
}

/// Why the fallback rolled something back (the words of its report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Dropped,
    Panic,
    Abandoned(Abandoned),
    ManagerDropped,
    /// SQL run through a guard opened a transaction block and left it open.
    UserBlock,
    /// A savepoint was dropped (or unwound) before `release` or `rollback`.
    SavepointDropped {
        panicked: bool,
    },
    /// A savepoint was forgotten, and its transaction used again.
    SavepointForgotten,
    /// A `COPY … FROM STDIN` writer was dropped or forgotten before
    /// `finish()`: the COPY failed, and a transaction it ran in is aborted.
    CopyUnfinished,
    /// The future of an async `transaction(…)` was dropped before its
    /// closure finished (a timeout, a `select!`, an aborted task).
    #[cfg_attr(not(feature = "aio"), allow(dead_code))]
    ScopeDropped,
}

impl Cause {
    /// Whether what was rolled back is a whole transaction that `begin()`
    /// or `transaction(...)` began (its report names where).
    pub(crate) fn is_a_begun_transaction(self) -> bool {
        !matches!(
            self,
            Cause::UserBlock
                | Cause::SavepointDropped { .. }
                | Cause::SavepointForgotten
                | Cause::CopyUnfinished
        )
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Dropped => f.write_str("the transaction was dropped while open"),
            Cause::Panic => f.write_str("a panic unwound the open transaction"),
            Cause::Abandoned(reason) => write!(f, "its holder was abandoned: {reason}"),
            Cause::ManagerDropped => f.write_str("the manager was dropped while it was open"),
            Cause::UserBlock => f.write_str(
                "SQL run through a guard left a transaction block open when the guard was released",
            ),
            Cause::SavepointDropped { panicked: false } => f.write_str(
                "a savepoint was dropped before release() or rollback(); only the savepoint",
            ),
            Cause::SavepointDropped { panicked: true } => {
                f.write_str("a panic unwound an open savepoint; only the savepoint")
            }
            Cause::SavepointForgotten => f.write_str(
                "a savepoint was forgotten and its transaction used again; only the savepoint",
            ),
            Cause::CopyUnfinished => f.write_str(
                "a COPY FROM STDIN writer was dropped or forgotten before finish(), so the COPY \
                 failed: none of its rows were stored, and a transaction it ran in is aborted; \
                 the COPY",
            ),
            Cause::ScopeDropped => f.write_str(
                "the future of transaction(...) was dropped before its closure finished",
            ),
        }
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HolderEnd {
    /// A guard or a `Tx` was dropped: `tx_open` when it was a `Tx<Open>`
    /// (not a guard, nor a finished `Tx`); `panicking` when by an unwind.
    Dropped { tx_open: bool, panicking: bool },
    /// `Guard::release`: let go on purpose.
    Released,
    /// A `transaction` scope ended: its closure returned (what it left
    /// open is its own `Err` to report), or it unwound (`panicked`).
    ScopeEnded { panicked: bool },
    /// Another holder took the lease from an abandoned one.
    TakenOver(Abandoned),
    /// The manager was dropped.
    ManagerDropped,
    /// A savepoint was dropped open (`panicked`: by an unwind).
    SavepointDropped { panicked: bool },
    /// A `savepoint_scope` closure returned (what it left open is its own
    /// `Err` to report).
    SavepointScopeEnded,
}

/// What the fallback does at the end of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Roll back what is open (the transaction, or for a savepoint's end
    /// only the savepoint).
    pub(crate) roll_back: bool,
    /// Count and log it as an unfinished transaction, for this cause.
    pub(crate) report: Option<Cause>,
    /// Also return [`Error::UnfinishedTransaction`](crate::Error::UnfinishedTransaction)
    /// to the holder, who let go on purpose.
    pub(crate) error: bool,
}

impl Verdict {
    const NOTHING: Verdict = Verdict {
        roll_back: false,
        report: None,
        error: false,
    };

    fn roll_back(report: Option<Cause>) -> Verdict {
        Verdict {
            roll_back: true,
            report,
            error: false,
        }
    }
}

/// What the fallback does when a hold ends the way `end` says, while
/// `unfinished`: a transaction block is open (for a savepoint's end: the
/// savepoint is still open).
pub(crate) fn verdict(end: HolderEnd, unfinished: bool) -> Verdict {
    if !unfinished {
        return Verdict::NOTHING;
    }
    match end {
        HolderEnd::Dropped {
            panicking: true, ..
        } => Verdict::roll_back(Some(Cause::Panic)),
        HolderEnd::Dropped { tx_open: true, .. } => Verdict::roll_back(Some(Cause::Dropped)),
        HolderEnd::Dropped { tx_open: false, .. } => Verdict::roll_back(Some(Cause::UserBlock)),
        HolderEnd::Released => Verdict {
            error: true,
            ..Verdict::roll_back(Some(Cause::UserBlock))
        },
        HolderEnd::ScopeEnded { panicked } => Verdict::roll_back(panicked.then_some(Cause::Panic)),
        HolderEnd::TakenOver(reason) => Verdict::roll_back(Some(Cause::Abandoned(reason))),
        HolderEnd::ManagerDropped => Verdict::roll_back(Some(Cause::ManagerDropped)),
        HolderEnd::SavepointDropped { panicked } => {
            Verdict::roll_back(Some(Cause::SavepointDropped { panicked }))
        }
        HolderEnd::SavepointScopeEnded => Verdict::roll_back(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_END: [HolderEnd; 11] = [
        HolderEnd::Dropped {
            tx_open: true,
            panicking: false,
        },
        HolderEnd::Dropped {
            tx_open: true,
            panicking: true,
        },
        HolderEnd::Dropped {
            tx_open: false,
            panicking: false,
        },
        HolderEnd::Dropped {
            tx_open: false,
            panicking: true,
        },
        HolderEnd::Released,
        HolderEnd::ScopeEnded { panicked: false },
        HolderEnd::ScopeEnded { panicked: true },
        HolderEnd::TakenOver(Abandoned::ThreadExited),
        HolderEnd::ManagerDropped,
        HolderEnd::SavepointDropped { panicked: false },
        HolderEnd::SavepointScopeEnded,
    ];

    #[test]
    fn nothing_open_means_nothing_to_do_however_the_hold_ended() {
        for end in EVERY_END {
            assert_eq!(verdict(end, false), Verdict::NOTHING, "{end:?}");
        }
    }

    #[test]
    fn whatever_is_left_open_is_rolled_back_however_the_hold_ended() {
        for end in EVERY_END {
            assert!(verdict(end, true).roll_back, "{end:?}");
        }
    }

    #[test]
    fn a_dropped_tx_a_guard_s_block_and_a_panic_are_told_apart() {
        let dropped =
            |tx_open, panicking| verdict(HolderEnd::Dropped { tx_open, panicking }, true).report;
        assert_eq!(dropped(true, false), Some(Cause::Dropped));
        assert_eq!(dropped(false, false), Some(Cause::UserBlock));
        assert_eq!(dropped(true, true), Some(Cause::Panic));
        assert_eq!(dropped(false, true), Some(Cause::Panic));
    }

    #[test]
    fn only_a_release_on_purpose_returns_the_error_too() {
        for end in EVERY_END {
            let expected = end == HolderEnd::Released;
            assert_eq!(verdict(end, true).error, expected, "{end:?}");
        }
        assert_eq!(
            verdict(HolderEnd::Released, true).report,
            Some(Cause::UserBlock)
        );
    }

    #[test]
    fn a_scope_that_returned_leaves_the_report_to_its_closure_s_err() {
        assert_eq!(
            verdict(HolderEnd::ScopeEnded { panicked: false }, true).report,
            None
        );
        assert_eq!(
            verdict(HolderEnd::ScopeEnded { panicked: true }, true).report,
            Some(Cause::Panic)
        );
        assert_eq!(verdict(HolderEnd::SavepointScopeEnded, true).report, None);
    }

    #[test]
    fn takeovers_and_dropped_managers_and_savepoints_say_so() {
        let idle = Abandoned::Idle(Duration::from_secs(3));
        assert_eq!(
            verdict(HolderEnd::TakenOver(idle), true).report,
            Some(Cause::Abandoned(idle))
        );
        assert_eq!(
            verdict(HolderEnd::ManagerDropped, true).report,
            Some(Cause::ManagerDropped)
        );
        assert_eq!(
            verdict(HolderEnd::SavepointDropped { panicked: true }, true).report,
            Some(Cause::SavepointDropped { panicked: true })
        );
    }

    #[test]
    fn only_whole_transactions_name_where_they_were_begun() {
        assert!(Cause::Dropped.is_a_begun_transaction());
        assert!(Cause::Panic.is_a_begun_transaction());
        assert!(Cause::ManagerDropped.is_a_begun_transaction());
        assert!(Cause::Abandoned(Abandoned::ThreadExited).is_a_begun_transaction());
        assert!(!Cause::UserBlock.is_a_begun_transaction());
        assert!(!Cause::SavepointDropped { panicked: false }.is_a_begun_transaction());
        assert!(!Cause::SavepointForgotten.is_a_begun_transaction());
    }

    #[test]
    fn reports_read_as_before() {
        assert_eq!(
            Cause::Abandoned(Abandoned::ThreadExited).to_string(),
            "its holder was abandoned: its thread exited without releasing it"
        );
        assert_eq!(
            Cause::Abandoned(Abandoned::Idle(Duration::from_millis(1500))).to_string(),
            "its holder was abandoned: it ran nothing for 1.5s"
        );
        assert_eq!(
            Cause::Abandoned(Abandoned::Forgotten).to_string(),
            "its holder was abandoned: its handle was forgotten (`mem::forget`)"
        );
    }
}

//! What a cached statement that met a stale prepared statement does next
//! (pure, unit-tested; the session carries it out).
//!
//! A statement is stale when the server refused to bind a prepared
//! statement that no longer fits (its plan, or the statement itself, is
//! gone): the server then ran nothing of that Sync group. Whether running
//! it again is right depends on what else the group or the transaction
//! held.

/// What the last run of a cached statement met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StaleRun {
    /// The statement's own prepared statement was stale.
    pub(crate) stale: bool,
    /// tokio-postgres' own statements (its type lookups) are gone: only a
    /// new connection has them again.
    pub(crate) internals_gone: bool,
    /// The run carried the transaction's `BEGIN` in its Sync group (it was
    /// the transaction's first statement).
    pub(crate) first_of_transaction: bool,
    /// A transaction block is open (or was, as the machine knows it).
    pub(crate) in_transaction: bool,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StalePlan {
    /// The error stands. `replace_after`: the connection is replaced once
    /// the transaction it aborted is over.
    Stop { replace_after: bool },
    /// Run the statement again: after rolling back and beginning again
    /// (`begin_again`: nothing of the transaction ran), on a new connection
    /// (`new_connection`).
    Again {
        begin_again: bool,
        new_connection: bool,
    },
}

/// What a cached statement that failed as `run` says does next, with
/// `retries_left` more runs allowed.
pub(crate) fn after_stale(run: StaleRun, retries_left: u32) -> StalePlan {
    if retries_left == 0 || !(run.stale || run.internals_gone) {
        return StalePlan::Stop {
            replace_after: false,
        };
    }
    if run.first_of_transaction {
        // BEGIN went in the statement's Sync group, and the server skipped
        // the rest of it at the stale statement: nothing of the
        // transaction ran.
        return StalePlan::Again {
            begin_again: true,
            new_connection: run.internals_gone,
        };
    }
    if run.in_transaction {
        // The error aborted the transaction, as any statement error does.
        return StalePlan::Stop {
            replace_after: run.internals_gone,
        };
    }
    StalePlan::Again {
        begin_again: false,
        new_connection: run.internals_gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stale: bool, internals_gone: bool, first: bool, in_tx: bool) -> StaleRun {
        StaleRun {
            stale,
            internals_gone,
            first_of_transaction: first,
            in_transaction: in_tx,
        }
    }

    const STOP: StalePlan = StalePlan::Stop {
        replace_after: false,
    };

    #[test]
    fn an_error_that_is_not_staleness_stands() {
        for (first, in_tx) in [(false, false), (true, true), (false, true)] {
            assert_eq!(after_stale(run(false, false, first, in_tx), 2), STOP);
        }
    }

    #[test]
    fn no_retries_left_means_the_error_stands() {
        assert_eq!(after_stale(run(true, true, true, true), 0), STOP);
        assert_eq!(after_stale(run(true, false, false, false), 0), STOP);
    }

    #[test]
    fn outside_a_transaction_it_runs_again_on_a_new_connection_only_if_needed() {
        assert_eq!(
            after_stale(run(true, false, false, false), 2),
            StalePlan::Again {
                begin_again: false,
                new_connection: false
            }
        );
        assert_eq!(
            after_stale(run(false, true, false, false), 1),
            StalePlan::Again {
                begin_again: false,
                new_connection: true
            }
        );
    }

    #[test]
    fn a_transaction_s_first_statement_begins_again() {
        assert_eq!(
            after_stale(run(true, false, true, true), 2),
            StalePlan::Again {
                begin_again: true,
                new_connection: false
            }
        );
        assert_eq!(
            after_stale(run(false, true, true, true), 2),
            StalePlan::Again {
                begin_again: true,
                new_connection: true
            }
        );
    }

    #[test]
    fn later_in_a_transaction_the_error_aborts_it_and_a_lost_lookup_replaces_the_connection_after()
    {
        assert_eq!(after_stale(run(true, false, false, true), 2), STOP);
        assert_eq!(
            after_stale(run(false, true, false, true), 2),
            StalePlan::Stop {
                replace_after: true
            }
        );
    }
}

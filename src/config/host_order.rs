//! Which servers are tried in which order, and which sessions are kept:
//! libpq's `load_balance_hosts` and `target_session_attrs`, decided here
//! and nowhere else (pure: the caller supplies the randomness and what the
//! server said). `connect/` tries the servers in this order and asks this
//! module whether to keep each session.

/// How the servers of a host list are tried (`load_balance_hosts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LoadBalance {
    /// In the order listed, and each server's addresses in the order the
    /// resolver gave them (the default).
    #[default]
    Disable,
    /// In a random order, and each server's addresses in a random order
    /// (libpq 16): new connections spread over the servers.
    Random,
}

impl LoadBalance {
    /// The setting's value (checked against libpq's list beforehand).
    pub(crate) fn parse(value: Option<&str>) -> LoadBalance {
        match value {
            Some("random") => LoadBalance::Random,
            _ => LoadBalance::Disable,
        }
    }

    /// The order in which to try `count` things (servers, or one server's
    /// addresses), as indices. `random_below(n)` returns a number in
    /// `0..n`, uniformly.
    pub(crate) fn order(
        self,
        count: usize,
        mut random_below: impl FnMut(usize) -> usize,
    ) -> Vec<usize> {
        let mut order: Vec<usize> = (0..count).collect();
        if self == LoadBalance::Random {
            // Fisher-Yates, as libpq shuffles its host list.
            for i in (1..count).rev() {
                order.swap(i, random_below(i + 1).min(i));
            }
        }
        order
    }
}

/// Which servers of a host list a connection may go to: libpq's
/// `target_session_attrs`, typed, for [`Settings::with_target`](crate::Settings::with_target) and the
/// builders' `target` (see [`Settings`](crate::Settings) for what each keeps, and how).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionTarget {
    /// Any server that accepts the connection (libpq's default).
    Any,
    /// A server that takes writes: not a standby, and
    /// `default_transaction_read_only` off. Connections found on a
    /// read-only server later (a failover) are replaced.
    ReadWrite,
    /// A read-only session: a standby, or a server whose
    /// `default_transaction_read_only` is on.
    ReadOnly,
    /// A server not in hot standby. Connections found on a read-only
    /// server later are replaced, as for [`ReadWrite`](Self::ReadWrite).
    Primary,
    /// A hot standby.
    Standby,
    /// A hot standby if the list has one that answers, else any server:
    /// reads that may go to a replica.
    PreferStandby,
}

impl SessionTarget {
    /// The value as libpq spells it (`read-write`, `prefer-standby`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionTarget::Any => "any",
            SessionTarget::ReadWrite => "read-write",
            SessionTarget::ReadOnly => "read-only",
            SessionTarget::Primary => "primary",
            SessionTarget::Standby => "standby",
            SessionTarget::PreferStandby => "prefer-standby",
        }
    }
}

impl std::fmt::Display for SessionTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a server said about itself: the parameter statuses PostgreSQL 14
/// and later report at start-up and whenever they change, or what a
/// question (see [`SessionTarget::question`]) found out. `None`: not
/// reported (an older server, or a pooler that does not pass them on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerRole {
    /// `default_transaction_read_only`.
    pub(crate) default_read_only: Option<bool>,
    /// `in_hot_standby`.
    pub(crate) in_hot_standby: Option<bool>,
}

impl ServerRole {
    /// Reads a parameter status's value as the server writes booleans.
    pub(crate) fn flag(value: Option<&str>) -> Option<bool> {
        match value? {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        }
    }
}

/// A question asked of a server that did not report what
/// `target_session_attrs` needs to know, before the session is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Question {
    /// `SHOW transaction_read_only`: on for a read-only session, whatever
    /// the reason.
    TransactionReadOnly,
    /// `SELECT pg_catalog.pg_is_in_recovery()`.
    InRecovery,
}

impl Question {
    /// The statement that asks it.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Question::TransactionReadOnly => "SHOW transaction_read_only",
            Question::InRecovery => "SELECT pg_catalog.pg_is_in_recovery()",
        }
    }

    /// What the answer (the one row's one value) says about the server,
    /// as libpq reads it: for `transaction_read_only`, "on" proves one of
    /// the two settings is on (which does not matter), anything else
    /// that both are off; for `pg_is_in_recovery()`, "t" is in recovery.
    pub(crate) fn answered(self, value: &str, role: &mut ServerRole) {
        match self {
            Question::TransactionReadOnly => {
                let on = value.starts_with("on");
                role.default_read_only = Some(on);
                role.in_hot_standby = Some(on);
            }
            Question::InRecovery => role.in_hot_standby = Some(value.starts_with('t')),
        }
    }

    /// Why a session whose question went unanswered (an error, or not one
    /// row) is not kept: libpq moves on to the next server.
    pub(crate) fn failed(self) -> String {
        let what = match self {
            Question::TransactionReadOnly => "SHOW transaction_read_only",
            Question::InRecovery => "SELECT pg_is_in_recovery()",
        };
        format!("\"{what}\" failed")
    }
}

impl SessionTarget {
    /// The setting's value (checked against libpq's list beforehand).
    pub(crate) fn parse(value: Option<&str>) -> SessionTarget {
        match value {
            Some("read-write") => SessionTarget::ReadWrite,
            Some("read-only") => SessionTarget::ReadOnly,
            Some("primary") => SessionTarget::Primary,
            Some("standby") => SessionTarget::Standby,
            Some("prefer-standby") => SessionTarget::PreferStandby,
            _ => SessionTarget::Any,
        }
    }

    /// The passes over the host list, each with what it keeps: one, but
    /// for `prefer-standby` (standbys, then any server, as libpq does
    /// once its first pass finds none).
    pub(crate) fn passes(self) -> &'static [SessionTarget] {
        match self {
            SessionTarget::Any => &[SessionTarget::Any],
            SessionTarget::ReadWrite => &[SessionTarget::ReadWrite],
            SessionTarget::ReadOnly => &[SessionTarget::ReadOnly],
            SessionTarget::Primary => &[SessionTarget::Primary],
            SessionTarget::Standby => &[SessionTarget::Standby],
            SessionTarget::PreferStandby => &[SessionTarget::Standby, SessionTarget::Any],
        }
    }

    /// What must be asked of a server that reported `role` before the
    /// session can be judged, if anything (libpq asks when either status
    /// is missing for the read-only modes, and when `in_hot_standby` is
    /// for the standby ones).
    pub(crate) fn question(self, role: ServerRole) -> Option<Question> {
        match self {
            SessionTarget::Any => None,
            SessionTarget::ReadWrite | SessionTarget::ReadOnly => {
                (role.default_read_only.is_none() || role.in_hot_standby.is_none())
                    .then_some(Question::TransactionReadOnly)
            }
            SessionTarget::Primary | SessionTarget::Standby | SessionTarget::PreferStandby => role
                .in_hot_standby
                .is_none()
                .then_some(Question::InRecovery),
        }
    }

    /// Why a session on a server that reported (or answered) `role` is
    /// not kept, in libpq's words, or `None` if it is. Call once
    /// [`question`](Self::question) has nothing left to ask; a status
    /// still unknown counts as off, as in libpq.
    pub(crate) fn refusal(self, role: ServerRole) -> Option<&'static str> {
        let read_only = role.default_read_only == Some(true) || role.in_hot_standby == Some(true);
        let in_hot_standby = role.in_hot_standby == Some(true);
        match self {
            SessionTarget::Any => None,
            SessionTarget::ReadWrite => read_only.then_some("session is read-only"),
            SessionTarget::ReadOnly => (!read_only).then_some("session is not read-only"),
            SessionTarget::Primary => in_hot_standby.then_some("server is in hot standby mode"),
            SessionTarget::Standby | SessionTarget::PreferStandby => {
                (!in_hot_standby).then_some("server is not in hot standby mode")
            }
        }
    }

    /// The question that tells whether a session kept under this setting
    /// is still on a server this setting would keep, once there is a sign
    /// it may not be (a write refused as read-only): answered true, the
    /// server has turned read-only under it (a primary demoted or fenced),
    /// and the session is given up. Only for the settings that look for a
    /// writable server. A session's own `SET` or `READ ONLY` transaction
    /// does not count: `reset_val` is the server's (and role's and
    /// database's) setting, not the session's. `primary`, as in libpq,
    /// asks only whether the server is in hot standby.
    pub(crate) fn still_writable_question(self) -> Option<&'static str> {
        match self {
            SessionTarget::ReadWrite => Some(
                "SELECT pg_catalog.pg_is_in_recovery() OR (SELECT reset_val = 'on' \
                 FROM pg_catalog.pg_settings WHERE name = 'default_transaction_read_only')",
            ),
            SessionTarget::Primary => Some("SELECT pg_catalog.pg_is_in_recovery()"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_keeps_the_listed_order() {
        let order = LoadBalance::Disable.order(4, |_| unreachable!("no randomness"));
        assert_eq!(order, [0, 1, 2, 3]);
        assert!(LoadBalance::Disable.order(0, |_| 0).is_empty());
    }

    #[test]
    fn random_is_a_permutation_drawn_from_the_randomness_given() {
        // Always drawing 0 swaps each last element with the first.
        assert_eq!(LoadBalance::Random.order(3, |_| 0), [1, 2, 0]);
        // Always drawing the largest number leaves the order alone.
        assert_eq!(LoadBalance::Random.order(3, |n| n - 1), [0, 1, 2]);
        // A source out of range cannot make it index out of bounds.
        let mut order = LoadBalance::Random.order(5, |n| n + 7);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn random_spreads_the_first_choice_evenly() {
        // A small linear congruential generator stands in for the system's.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random_below = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(state >> 33).unwrap_or(0) % n
        };
        let mut first = [0_u32; 3];
        for _ in 0..3000 {
            first[LoadBalance::Random.order(3, &mut random_below)[0]] += 1;
        }
        for count in first {
            assert!((850..=1150).contains(&count), "{first:?}");
        }
    }

    #[test]
    fn settings_read_as_libpq_names_them() {
        assert_eq!(LoadBalance::parse(None), LoadBalance::Disable);
        assert_eq!(LoadBalance::parse(Some("random")), LoadBalance::Random);
        assert_eq!(LoadBalance::parse(Some("disable")), LoadBalance::Disable);
        for (value, attrs) in [
            (None, SessionTarget::Any),
            (Some("any"), SessionTarget::Any),
            (Some("read-write"), SessionTarget::ReadWrite),
            (Some("read-only"), SessionTarget::ReadOnly),
            (Some("primary"), SessionTarget::Primary),
            (Some("standby"), SessionTarget::Standby),
            (Some("prefer-standby"), SessionTarget::PreferStandby),
        ] {
            assert_eq!(SessionTarget::parse(value), attrs, "{value:?}");
        }
    }

    const PRIMARY: ServerRole = ServerRole {
        default_read_only: Some(false),
        in_hot_standby: Some(false),
    };
    const STANDBY: ServerRole = ServerRole {
        default_read_only: Some(false),
        in_hot_standby: Some(true),
    };
    /// A primary whose `default_transaction_read_only` is on.
    const READ_ONLY_PRIMARY: ServerRole = ServerRole {
        default_read_only: Some(true),
        in_hot_standby: Some(false),
    };
    const UNREPORTED: ServerRole = ServerRole {
        default_read_only: None,
        in_hot_standby: None,
    };

    #[test]
    fn each_mode_keeps_the_sessions_libpq_keeps() {
        use SessionTarget::*;
        let kept = |attrs: SessionTarget, role| attrs.refusal(role).is_none();
        for attrs in [Any, ReadWrite, ReadOnly, Primary, Standby, PreferStandby] {
            assert_eq!(attrs.question(PRIMARY), None, "{attrs:?}");
            assert_eq!(attrs.question(STANDBY), None, "{attrs:?}");
        }
        // (mode, primary, standby, read-only primary)
        for (attrs, expected) in [
            (Any, [true, true, true]),
            (ReadWrite, [true, false, false]),
            (ReadOnly, [false, true, true]),
            (Primary, [true, false, true]),
            (Standby, [false, true, false]),
            (PreferStandby, [false, true, false]),
        ] {
            let got = [PRIMARY, STANDBY, READ_ONLY_PRIMARY].map(|role| kept(attrs, role));
            assert_eq!(got, expected, "{attrs:?}");
        }
        assert_eq!(ReadWrite.refusal(STANDBY), Some("session is read-only"));
        assert_eq!(ReadOnly.refusal(PRIMARY), Some("session is not read-only"));
        assert_eq!(
            Primary.refusal(STANDBY),
            Some("server is in hot standby mode")
        );
        assert_eq!(
            Standby.refusal(PRIMARY),
            Some("server is not in hot standby mode")
        );
    }

    #[test]
    fn a_server_that_reports_nothing_is_asked_what_the_mode_needs() {
        use SessionTarget::*;
        assert_eq!(Any.question(UNREPORTED), None);
        assert_eq!(
            ReadWrite.question(UNREPORTED),
            Some(Question::TransactionReadOnly)
        );
        // One status missing is enough to ask, for the read-only modes.
        let half = ServerRole {
            default_read_only: Some(false),
            in_hot_standby: None,
        };
        assert_eq!(ReadOnly.question(half), Some(Question::TransactionReadOnly));
        assert_eq!(Primary.question(half), Some(Question::InRecovery));
        assert_eq!(Standby.question(UNREPORTED), Some(Question::InRecovery));
        assert_eq!(
            PreferStandby.question(UNREPORTED),
            Some(Question::InRecovery)
        );
        let only_standby = ServerRole {
            default_read_only: None,
            in_hot_standby: Some(true),
        };
        assert_eq!(Primary.question(only_standby), None);
    }

    #[test]
    fn answers_are_read_as_libpq_reads_them() {
        let mut role = UNREPORTED;
        Question::TransactionReadOnly.answered("on", &mut role);
        assert_eq!(SessionTarget::ReadWrite.question(role), None);
        assert!(SessionTarget::ReadWrite.refusal(role).is_some());
        assert!(SessionTarget::ReadOnly.refusal(role).is_none());
        let mut role = UNREPORTED;
        Question::TransactionReadOnly.answered("off", &mut role);
        assert!(SessionTarget::ReadWrite.refusal(role).is_none());
        let mut role = UNREPORTED;
        Question::InRecovery.answered("t", &mut role);
        assert_eq!(SessionTarget::Standby.question(role), None);
        assert!(SessionTarget::Standby.refusal(role).is_none());
        assert!(SessionTarget::Primary.refusal(role).is_some());
        let mut role = UNREPORTED;
        Question::InRecovery.answered("f", &mut role);
        assert!(SessionTarget::Primary.refusal(role).is_none());
        assert_eq!(
            Question::InRecovery.failed(),
            "\"SELECT pg_is_in_recovery()\" failed"
        );
    }

    #[test]
    fn prefer_standby_makes_a_second_pass_that_keeps_any_server() {
        use SessionTarget::*;
        assert_eq!(PreferStandby.passes(), [Standby, Any]);
        for attrs in [Any, ReadWrite, ReadOnly, Primary, Standby] {
            assert_eq!(attrs.passes(), [attrs]);
        }
        assert!(ReadWrite.still_writable_question().is_some());
        assert_eq!(
            Primary.still_writable_question(),
            Some("SELECT pg_catalog.pg_is_in_recovery()")
        );
        assert!(
            [Any, ReadOnly, Standby, PreferStandby]
                .iter()
                .all(|a| a.still_writable_question().is_none())
        );
    }

    #[test]
    fn parameter_statuses_read_as_the_server_writes_them() {
        assert_eq!(ServerRole::flag(Some("on")), Some(true));
        assert_eq!(ServerRole::flag(Some("off")), Some(false));
        assert_eq!(ServerRole::flag(Some("maybe")), None);
        assert_eq!(ServerRole::flag(None), None);
    }
}

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

/// What a session must be for pgtx to keep it (`target_session_attrs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    /// Any session (the default).
    #[default]
    Any,
    /// One that accepts writes (`transaction_read_only` is off).
    ReadWrite,
    /// One that does not (`transaction_read_only` is on).
    ReadOnly,
    /// A server not in recovery. Not supported yet.
    Primary,
    /// A server in recovery. Not supported yet.
    Standby,
    /// A standby if there is one, else any. Not supported yet.
    PreferStandby,
}

impl SessionAttrs {
    /// The setting's value (checked against libpq's list beforehand).
    pub(crate) fn parse(value: Option<&str>) -> SessionAttrs {
        match value {
            Some("read-write") => SessionAttrs::ReadWrite,
            Some("read-only") => SessionAttrs::ReadOnly,
            Some("primary") => SessionAttrs::Primary,
            Some("standby") => SessionAttrs::Standby,
            Some("prefer-standby") => SessionAttrs::PreferStandby,
            _ => SessionAttrs::Any,
        }
    }

    /// Whether pgtx keeps its promise for this value (the others are
    /// refused when the settings are read, not ignored).
    pub(crate) fn is_supported(self) -> bool {
        matches!(
            self,
            SessionAttrs::Any | SessionAttrs::ReadWrite | SessionAttrs::ReadOnly
        )
    }

    /// Whether a session must be asked whether it is read-only before it
    /// is kept.
    pub(crate) fn needs_check(self) -> bool {
        self != SessionAttrs::Any
    }

    /// Why a session whose `transaction_read_only` is `read_only` is not
    /// kept (libpq's words), or `None` if it is.
    pub(crate) fn refusal(self, read_only: bool) -> Option<&'static str> {
        match (self, read_only) {
            (SessionAttrs::ReadWrite, true) => Some("session is read-only"),
            (SessionAttrs::ReadOnly, false) => Some("session is not read-only"),
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
            (None, SessionAttrs::Any),
            (Some("any"), SessionAttrs::Any),
            (Some("read-write"), SessionAttrs::ReadWrite),
            (Some("read-only"), SessionAttrs::ReadOnly),
            (Some("primary"), SessionAttrs::Primary),
            (Some("standby"), SessionAttrs::Standby),
            (Some("prefer-standby"), SessionAttrs::PreferStandby),
        ] {
            assert_eq!(SessionAttrs::parse(value), attrs, "{value:?}");
        }
    }

    #[test]
    fn read_write_and_read_only_keep_the_sessions_libpq_keeps() {
        use SessionAttrs::*;
        assert_eq!(Any.refusal(true), None);
        assert_eq!(Any.refusal(false), None);
        assert_eq!(ReadWrite.refusal(false), None);
        assert_eq!(ReadWrite.refusal(true), Some("session is read-only"));
        assert_eq!(ReadOnly.refusal(true), None);
        assert_eq!(ReadOnly.refusal(false), Some("session is not read-only"));
        assert!(!Any.needs_check());
        assert!(ReadWrite.needs_check() && ReadOnly.needs_check());
        assert!([Any, ReadWrite, ReadOnly].iter().all(|a| a.is_supported()));
        assert!(
            [Primary, Standby, PreferStandby]
                .iter()
                .all(|a| !a.is_supported())
        );
    }
}

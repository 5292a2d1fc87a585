//! Running a whole transaction again when the server asks for it: a
//! serialization failure (SQLSTATE 40001) or a deadlock (40P01), which
//! PostgreSQL expects the application to retry.

use std::time::Duration;

use postgres::error::{DbError, SqlState};

use crate::machine::reconnect::{Backoff, ReconnectPolicy};

/// How often, and how far apart, to run a transaction again after a
/// serialization failure or a deadlock (see
/// [`ManagedConnection::transaction_retrying`](crate::ManagedConnection::transaction_retrying)).
///
/// | setting | default |
/// |---|---|
/// | [`max_attempts`](Self::max_attempts) | 5 (the first run included) |
/// | [`initial_delay`](Self::initial_delay) | 10 ms (before the second run; the first is at once) |
/// | [`factor`](Self::factor) | 2 |
/// | [`max_delay`](Self::max_delay) | 1 s |
/// | [`jitter`](Self::jitter) | 0.5 (each wait ±50 %, so that the transactions that collided do not collide again) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let policy = pgtx::RetryPolicy::default()
///     .max_attempts(10)
///     .initial_delay(Duration::from_millis(2));
/// assert_eq!(policy.attempts(), 10);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until it is used"]
pub struct RetryPolicy {
    attempts: u32,
    schedule: ReconnectPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            schedule: ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(10))
                .factor(2.0)
                .max_delay(Duration::from_secs(1))
                .jitter(0.5)
                .max_attempts(Some(5)),
        }
    }
}

impl RetryPolicy {
    /// Runs of the transaction at most, the first included (at least 1:
    /// `0` counts as `1`, which never retries). Default 5.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self.schedule = self.schedule.max_attempts(Some(self.attempts));
        self
    }

    /// The runs allowed, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the second run. Default 10 ms.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.schedule = self.schedule.initial_delay(delay);
        self
    }

    /// How much each wait grows over the one before (at least 1). Default 2.
    pub fn factor(mut self, factor: f64) -> Self {
        self.schedule = self.schedule.factor(factor);
        self
    }

    /// The longest wait, jitter included. Default 1 s. `Duration::ZERO`
    /// means no maximum.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.schedule = self.schedule.max_delay(delay);
        self
    }

    /// Spreads each wait at random by up to this fraction either way
    /// (clamped to `0.0..=1.0`). Default 0.5.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.schedule = self.schedule.jitter(fraction);
        self
    }

    /// The waits before each run: zero first, then growing; ends when the
    /// attempts are used up.
    pub(crate) fn waits(&self) -> Backoff {
        self.schedule.backoff()
    }
}

/// Whether the server's `error` asks for the whole transaction to run again.
pub(crate) fn asks_for_retry(error: &DbError) -> bool {
    let code = error.code();
    *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runs_five_times_at_most_first_at_once_then_growing() {
        let waits: Vec<Duration> = RetryPolicy::default().jitter(0.0).waits().collect();
        assert_eq!(
            waits,
            [0, 10, 20, 40, 80].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn a_zero_max_delay_means_no_maximum() {
        let waits: Vec<Duration> = RetryPolicy::default()
            .jitter(0.0)
            .max_attempts(10)
            .max_delay(Duration::ZERO)
            .waits()
            .collect();
        assert_eq!(
            waits,
            [0, 10, 20, 40, 80, 160, 320, 640, 1280, 2560]
                .map(Duration::from_millis)
                .to_vec()
        );
    }

    #[test]
    fn one_attempt_never_waits_and_zero_means_one() {
        assert_eq!(RetryPolicy::default().max_attempts(1).waits().count(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).waits().count(), 1);
    }

    #[test]
    fn jittered_waits_stay_within_their_bounds() {
        let policy = RetryPolicy::default()
            .max_attempts(50)
            .max_delay(Duration::from_millis(300));
        for wait in policy.waits().skip(1) {
            assert!(wait >= Duration::from_millis(5), "{wait:?}");
            assert!(wait <= Duration::from_millis(300), "{wait:?}");
        }
    }
}

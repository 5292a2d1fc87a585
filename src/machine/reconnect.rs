//! When to try reconnecting: a pure backoff schedule ([`ReconnectPolicy`],
//! [`Backoff`]) and the bookkeeping of one outage, with no I/O and no
//! clock of its own, so that every rule is unit-tested without sleeping.
//!
//! The defaults are txpostgres' (`txpostgres.reconnection`): the first
//! attempt at once, then waits of 1.7, 2.89, 4.91, 8.35 s and 10 s from
//! then on, each spread at random by up to ±12 %, for ever (the exact rule
//! is on [`ReconnectPolicy`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::error::Error;

/// How long to wait before each attempt to reconnect, and when to give up.
///
/// A builder: start from [`ReconnectPolicy::default`] (txpostgres'
/// defaults) and change what you need. [`backoff`](Self::backoff) gives the
/// schedule of one outage.
///
/// | setting | default |
/// |---|---|
/// | [`initial_delay`](Self::initial_delay) | 1.7 s (the first wait, after a first attempt made at once) |
/// | [`factor`](Self::factor) | 1.7 |
/// | [`max_delay`](Self::max_delay) | 10 s |
/// | [`jitter`](Self::jitter) | 0.12 (each wait ±12 %) |
/// | [`max_attempts`](Self::max_attempts) | `None` (unlimited) |
///
/// # The schedule
///
/// The first attempt of an outage is made at once. The wait before
/// attempt *n* + 1 (*n* = 1, 2, …) is the nominal wait
/// `min(initial_delay × factor^(n-1), max_delay)`, multiplied by a number
/// drawn uniformly from `[1 - jitter, 1 + jitter]` (a fresh draw for each
/// wait; the draws do not accumulate), and capped at `max_delay` again.
///
/// With the defaults the nominal waits are 1.7, 2.89, 4.913, 8.3521 s,
/// then 10 s for ever, so attempts come at about 0, 1.7, 4.6, 9.5, 17.9,
/// 27.9, 37.9 s, …; with the jitter, the first wait is between 1.496 and
/// 1.904 s, and a wait at the cap between 8.8 and 10 s.
///
/// This is txpostgres' `defaultReconnectionIterator`: an initial delay of
/// 1 s multiplied by the factor 1.7 before each wait (so the first wait is
/// 1.7 s), at most 10 s, no limit on attempts, and jitter on. Its jitter
/// is Twisted's: a normal distribution with a standard deviation of
/// 11.96 % of the wait, which feeds into the next wait; pgtx's is bounded
/// (±12 %) around a schedule that does not drift, so the bounds above hold.
/// The jitter keeps the many clients that one server restart cuts off from
/// reconnecting in lockstep; `jitter(0.0)` makes the schedule exact.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use pgtx::ReconnectPolicy;
///
/// let exact: Vec<Duration> = ReconnectPolicy::default().jitter(0.0).backoff().take(7).collect();
/// assert_eq!(exact[0], Duration::ZERO); // the first attempt at once
/// assert_eq!(exact[1].as_millis(), 1700);
/// assert_eq!(exact[2].as_millis(), 2890);
/// assert_eq!(exact[6], Duration::from_secs(10)); // 8.3521 s × 1.7, capped
///
/// // The default spreads each wait by up to ±12 %.
/// let first_wait = ReconnectPolicy::default().backoff().nth(1).unwrap();
/// assert!(first_wait >= Duration::from_millis(1496) && first_wait <= Duration::from_millis(1904));
///
/// let quick = ReconnectPolicy::default()
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(2))
///     .jitter(0.1)
///     .max_attempts(Some(5));
/// assert_eq!(quick.backoff().count(), 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a policy does nothing until it is used"]
pub struct ReconnectPolicy {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// txpostgres' defaults: at once, then 1.7 s growing ×1.7 up to 10 s,
    /// each wait ±12 %, unlimited attempts (see
    /// [the schedule](ReconnectPolicy#the-schedule)).
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_millis(1700),
            max: Duration::from_secs(10),
            factor: 1.7,
            jitter: 0.12,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The wait before the second attempt (the first is made at once),
    /// before jitter. Default 1.7 s (txpostgres' 1 s, already multiplied
    /// by its factor). `Duration::ZERO` makes every wait zero: the
    /// attempts follow one another without a pause.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// The longest wait between two attempts, jitter included. Default 10 s.
    ///
    /// `Duration::ZERO` means no maximum, as txpostgres' `maxDelay = 0`
    /// does: the waits grow without bound (it is not a loop of attempts
    /// without waits).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max = if delay.is_zero() {
            Duration::MAX
        } else {
            delay
        };
        self
    }

    /// How much each wait grows over the one before. Default 1.7. A factor
    /// below 1 (or not a number) is taken as 1: the waits never shrink.
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        self
    }

    /// Spreads each wait at random by up to this fraction either way
    /// (`0.1`: ±10 %), so that many clients cut off together do not all
    /// come back at the same instant. Clamped to `0.0..=1.0`; default
    /// 0.12; `0.0` for none. The first attempt stays immediate, and no wait
    /// exceeds [`max_delay`](Self::max_delay).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// How many attempts to make in one outage before giving up (`None`:
    /// never give up, the default). At least one attempt is always made:
    /// `Some(0)` counts as `Some(1)`.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts.map(|n| n.max(1));
        self
    }

    /// The schedule of one outage: the wait before each attempt, starting
    /// with the first. Each `Backoff` has its own jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.clone(), random_seed())
    }
}

/// The waits before each attempt of one outage, made by
/// [`ReconnectPolicy::backoff`]: an iterator that yields `Duration::ZERO`
/// first, then the growing delays, and ends when
/// [`max_attempts`](ReconnectPolicy::max_attempts) are used up (never, by
/// default).
///
/// Pure: it only computes the waits; whoever uses it sleeps.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    /// Attempts handed out so far.
    attempts: u32,
    /// The next delay before jitter (after the first attempt).
    base: Duration,
    rng: SplitMix64,
}

impl Backoff {
    fn new(policy: ReconnectPolicy, seed: u64) -> Backoff {
        Backoff {
            base: policy.initial.min(policy.max),
            policy,
            attempts: 0,
            rng: SplitMix64(seed),
        }
    }

    /// How many waits (so attempts) this backoff has handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        let jitter = self.policy.jitter;
        if jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        // A uniform factor in [1 - jitter, 1 + jitter].
        let spread = 1.0 + jitter * (2.0 * self.rng.next_unit() - 1.0);
        Duration::try_from_secs_f64(delay.as_secs_f64() * spread)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts == 1 {
            return Some(Duration::ZERO);
        }
        let base = self.base;
        self.base = Duration::try_from_secs_f64(base.as_secs_f64() * self.policy.factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max);
        Some(self.jittered(base))
    }
}

/// A different seed for every backoff: `RandomState` is keyed randomly per
/// process and its keys move on with every instance, so this needs no
/// dependency and no clock.
fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// Sebastiano Vigna's SplitMix64: a few lines, good enough for jitter.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        // The top 53 bits fill an f64's mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// One outage, from the moment the connection was found broken to the
/// attempt that succeeds: when to try next, how many attempts were made,
/// and the first and latest failure of the current round.
///
/// When a round's attempts run out, [`Outage::failed`] reports
/// [`Error::ReconnectFailed`] and starts a new round at once (the caller
/// decides whether to go on); the outage itself, and its attempt count,
/// last until the connection is back.
#[derive(Debug)]
pub(crate) struct Outage {
    since: Instant,
    policy: ReconnectPolicy,
    backoff: Backoff,
    /// Every attempt of the outage, all rounds.
    attempts: u32,
    /// Attempts of the current round.
    round: u32,
    first: Option<Error>,
    next_at: Instant,
}

/// What to do after a failed attempt.
#[derive(Debug)]
pub(crate) enum Next {
    /// Try again at this instant.
    RetryAt(Instant),
    /// This round's attempts are used up: report this
    /// [`Error::ReconnectFailed`]. The next round may start at once.
    GiveUp(Error),
}

impl Outage {
    /// An outage noticed at `since`: the first attempt is due at once.
    pub(crate) fn new(since: Instant, policy: &ReconnectPolicy) -> Outage {
        let mut outage = Outage {
            since,
            policy: policy.clone(),
            backoff: policy.backoff(),
            attempts: 0,
            round: 0,
            first: None,
            next_at: since,
        };
        outage.schedule(since);
        outage
    }

    #[cfg(test)]
    fn seeded(since: Instant, policy: &ReconnectPolicy, seed: u64) -> Outage {
        let mut outage = Outage::new(since, policy);
        outage.backoff = Backoff::new(policy.clone(), seed);
        outage.schedule(since);
        outage
    }

    /// When the connection was found broken.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Attempts made so far, all rounds.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the next attempt is due.
    pub(crate) fn next_attempt_at(&self) -> Instant {
        self.next_at
    }

    /// Counts an attempt that is being made now.
    pub(crate) fn attempting(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
        self.round = self.round.saturating_add(1);
    }

    /// The attempt counted by [`attempting`](Self::attempting) failed at
    /// `now` with `error`: when to try again, or, if this round's attempts
    /// are used up, the [`Error::ReconnectFailed`] to report (with this
    /// round's first failure and this one; those in between are dropped).
    pub(crate) fn failed(&mut self, now: Instant, error: Error) -> Next {
        if self.schedule(now) {
            self.first.get_or_insert(error);
            return Next::RetryAt(self.next_at);
        }
        let error = Error::ReconnectFailed {
            attempts: self.round,
            first: self.first.take().map(Box::new),
            last: Box::new(error),
        };
        self.new_round(now);
        Next::GiveUp(error)
    }

    /// Sets `next_at` from the backoff; false when it is exhausted.
    fn schedule(&mut self, now: Instant) -> bool {
        match self.backoff.next() {
            Some(delay) => {
                // A delay past what `Instant` can hold (a `max_delay` of
                // `Duration::MAX`) means "not for a very long time", not "now".
                self.next_at = now
                    .checked_add(delay)
                    .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
                    .unwrap_or(now);
                true
            }
            None => false,
        }
    }

    fn new_round(&mut self, now: Instant) {
        self.round = 0;
        self.first = None;
        self.backoff = self.policy.backoff();
        self.schedule(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_first_attempt_is_made_at_once() {
        assert_eq!(
            ReconnectPolicy::default().backoff().next(),
            Some(Duration::ZERO)
        );
        let slow = ReconnectPolicy::default()
            .initial_delay(secs(5.0))
            .jitter(1.0);
        assert_eq!(slow.backoff().next(), Some(Duration::ZERO));
    }

    /// txpostgres' `defaultReconnectionIterator` without its jitter: at
    /// once, then 1 s × 1.7 = 1.7 s, × 1.7 each time, capped at 10 s.
    const TXPOSTGRES: [f64; 8] = [0.0, 1.7, 2.89, 4.913, 8.3521, 10.0, 10.0, 10.0];

    #[test]
    fn the_defaults_are_txpostgres_schedule_at_once_then_1_7_s_growing_by_1_7_up_to_ten() {
        let delays: Vec<Duration> = ReconnectPolicy::default()
            .jitter(0.0)
            .backoff()
            .take(8)
            .collect();
        for (got, want) in delays.iter().zip(TXPOSTGRES) {
            assert!(
                (got.as_secs_f64() - want).abs() < 1e-6,
                "{delays:?} vs {TXPOSTGRES:?}"
            );
        }
    }

    #[test]
    fn the_default_jitters_each_wait_by_up_to_12_percent_never_above_ten_seconds() {
        let mut spread = Vec::new();
        for seed in 0..200 {
            let delays: Vec<Duration> = Backoff::new(ReconnectPolicy::default(), seed)
                .take(8)
                .collect();
            assert_eq!(delays[0], Duration::ZERO);
            for (got, nominal) in delays.iter().zip(TXPOSTGRES).skip(1) {
                let got = got.as_secs_f64();
                assert!(
                    got >= nominal * 0.88 - 1e-9 && got <= (nominal * 1.12).min(10.0) + 1e-9,
                    "{got} for {nominal} with seed {seed}"
                );
                spread.push(got / nominal);
            }
        }
        let (lo, hi) = spread
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        assert!(
            lo < 0.9 && hi > 1.1,
            "the default barely jitters: {lo}..{hi}"
        );
    }

    #[test]
    fn a_zero_max_delay_means_no_maximum_not_a_tight_loop() {
        let delays: Vec<Duration> = ReconnectPolicy::default()
            .jitter(0.0)
            .max_delay(Duration::ZERO)
            .backoff()
            .take(10)
            .collect();
        assert_eq!(delays[0], Duration::ZERO);
        for (n, got) in delays.iter().enumerate().skip(1) {
            let want = 1.7_f64.powi(i32::try_from(n).unwrap());
            assert!(
                (got.as_secs_f64() - want).abs() < 1e-6,
                "wait {n}: {got:?}, not {want} s: {delays:?}"
            );
        }
        // With jitter too, and for a retry schedule.
        for delay in ReconnectPolicy::default()
            .max_delay(Duration::ZERO)
            .backoff()
            .skip(1)
            .take(50)
        {
            assert!(delay >= secs(1.7 * 0.88 - 1e-9), "{delay:?}");
        }
    }

    #[test]
    fn the_default_backoff_never_gives_up() {
        assert_eq!(
            ReconnectPolicy::default().backoff().take(10_000).count(),
            10_000
        );
    }

    #[test]
    fn no_delay_exceeds_the_maximum_even_with_jitter() {
        let policy = ReconnectPolicy::default()
            .initial_delay(secs(0.3))
            .max_delay(secs(2.0))
            .factor(3.0)
            .jitter(0.5);
        for seed in 0..200 {
            for delay in Backoff::new(policy.clone(), seed).take(30) {
                assert!(delay <= secs(2.0), "{delay:?} with seed {seed}");
            }
        }
        // An initial delay above the maximum is capped too.
        let capped = ReconnectPolicy::default()
            .initial_delay(secs(60.0))
            .max_delay(secs(1.0))
            .jitter(0.0);
        assert_eq!(capped.backoff().nth(1), Some(secs(1.0)));
    }

    #[test]
    fn max_attempts_ends_the_schedule() {
        let policy = ReconnectPolicy::default().max_attempts(Some(3));
        let mut backoff = policy.backoff();
        assert_eq!(backoff.by_ref().count(), 3);
        assert_eq!(backoff.next(), None);
        assert_eq!(backoff.attempts(), 3);
        // At least one attempt is always made.
        let zero = ReconnectPolicy::default().max_attempts(Some(0));
        assert_eq!(zero.backoff().count(), 1);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let policy = ReconnectPolicy::default()
            .initial_delay(secs(1.0))
            .factor(1.0)
            .max_delay(secs(100.0))
            .jitter(0.1);
        let mut seen = Vec::new();
        for seed in 0..100 {
            for delay in Backoff::new(policy.clone(), seed).skip(1).take(20) {
                let s = delay.as_secs_f64();
                assert!((0.9..=1.1).contains(&s), "{s} with seed {seed}");
                seen.push(s);
            }
        }
        let (lo, hi) = seen
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        assert!(lo < 0.92 && hi > 1.08, "jitter barely spreads: {lo}..{hi}");
    }

    #[test]
    fn two_backoffs_get_different_jitter() {
        let policy = ReconnectPolicy::default().jitter(0.5);
        let a: Vec<Duration> = policy.backoff().take(10).collect();
        let b: Vec<Duration> = policy.backoff().take(10).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn out_of_range_settings_are_clamped_not_panicking() {
        let policy = ReconnectPolicy::default()
            .factor(0.5)
            .jitter(f64::NAN)
            .max_delay(Duration::MAX)
            .initial_delay(Duration::MAX);
        let delays: Vec<Duration> = policy.backoff().take(3).collect();
        assert_eq!(delays[1], Duration::MAX);
        assert_eq!(delays[2], Duration::MAX);
        let wild = ReconnectPolicy::default().factor(f64::INFINITY).jitter(7.0);
        assert_eq!(wild, ReconnectPolicy::default().factor(1.0).jitter(1.0));
    }

    #[test]
    fn an_outage_retries_on_schedule_then_gives_up_with_the_first_and_last_failure() {
        let start = Instant::now();
        let policy = ReconnectPolicy::default().max_attempts(Some(3));
        let mut outage = Outage::seeded(start, &policy, 7);
        assert_eq!(outage.next_attempt_at(), start);
        outage.attempting();
        let first = Error::LockTimeout(secs(1.0));
        let Next::RetryAt(at) = outage.failed(start, first) else {
            panic!("gave up after one attempt of three");
        };
        let after = at - start;
        assert!(
            (secs(1.7 * 0.88)..=secs(1.7 * 1.12)).contains(&after),
            "{after:?}"
        );
        outage.attempting();
        assert!(matches!(
            outage.failed(at, Error::WouldBlock),
            Next::RetryAt(_)
        ));
        outage.attempting();
        let Next::GiveUp(error) = outage.failed(at, Error::Reentrant) else {
            panic!("a fourth attempt was scheduled");
        };
        let Error::ReconnectFailed {
            attempts,
            first,
            last,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(*attempts, 3);
        assert!(
            matches!(first.as_deref(), Some(Error::LockTimeout(_))),
            "{first:?}"
        );
        assert!(matches!(**last, Error::Reentrant), "{last:?}");
        assert!(error.to_string().contains("3 attempts"), "{error}");

        // The outage goes on: a new round starts at once, counting on.
        assert_eq!(outage.next_attempt_at(), at);
        assert_eq!(outage.attempts(), 3);
        assert_eq!(outage.since(), start);
    }

    #[test]
    fn a_single_attempt_round_reports_its_failure_once_as_the_last() {
        let start = Instant::now();
        let policy = ReconnectPolicy::default().max_attempts(Some(1));
        let mut outage = Outage::seeded(start, &policy, 1);
        outage.attempting();
        let Next::GiveUp(Error::ReconnectFailed {
            attempts,
            first,
            last,
        }) = outage.failed(start, Error::WouldBlock)
        else {
            panic!("retried beyond max_attempts");
        };
        assert_eq!(attempts, 1);
        assert!(first.is_none());
        assert!(matches!(*last, Error::WouldBlock));
    }
}

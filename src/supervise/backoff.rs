//! [`Backoff`]: how long a restart waits after a failure, exponential from an initial delay,
//! doubled at each attempt, capped, with jitter; and [`Jitter`], where the jitter's randomness
//! comes from (std's `RandomState` seeds a xorshift; a test injects a fixed value).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first delay, unless set otherwise: short enough that a one-off failure costs little,
/// long enough that a crash loop does not burn the budget in microseconds.
pub(crate) const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
/// The longest delay, unless set otherwise (and never more than the budget's window allows,
/// see [`Backoff::cap_within`]): under the default window's 60 s / 11, so that a crash loop at
/// the cap still exhausts the default budget.
pub(crate) const DEFAULT_CAP: Duration = Duration::from_secs(5);

/// The share of the base delay that jitter may take off: a delay is in `[base × 0.8, base]`.
const JITTER_PERMILLE: u128 = 200;

/// An exponential backoff: attempt 1 waits `initial`, each later attempt twice the one before,
/// never more than the cap; each delay then loses up to a fifth of itself to jitter, so that
/// services that failed together do not restart in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: DEFAULT_INITIAL,
            cap: DEFAULT_CAP,
        }
    }
}

impl Backoff {
    /// A backoff from `initial`, capped at `cap` (a cap under `initial` is raised to it). Any
    /// `Duration` is taken: a zero `initial` is refused by [`check`](Backoff::check) when the
    /// run begins, `Duration::MAX` waits about forever (arithmetic saturates).
    pub(crate) fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap: cap.max(initial),
        }
    }

    /// The cap as given (see [`cap_within`](Backoff::cap_within) for the one in force).
    #[cfg(test)]
    pub(crate) fn cap(&self) -> Duration {
        self.cap
    }

    /// Refuses a backoff that cannot work: a zero first delay would make every delay zero, so a
    /// crash loop would spend the whole restart budget in microseconds.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.initial.is_zero() {
            return Err(
                "the restart backoff's initial delay is zero: a crash loop would spend \
                        the restart budget at once; give it at least a millisecond"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The cap in force under a budget of `max_restarts` in `within`: the smaller of the cap and
    /// `within / (max_restarts + 1)`, so that `max_restarts + 1` restarts at the cap fit in the
    /// window and a crash loop at the cap still exhausts the budget (a sliding window with a
    /// longer backoff would never trip). It applies to the first delay too.
    pub(crate) fn cap_within(&self, max_restarts: u32, within: Duration) -> Duration {
        let share = within / max_restarts.saturating_add(1);
        self.cap.min(share)
    }

    /// The delay before restart `attempt` (1 for the first restart after the instance was last
    /// up long enough) before jitter: `initial × 2^(attempt - 1)`, at most `cap`. Attempt 0
    /// counts as 1.
    pub(crate) fn base(&self, attempt: u32, cap: Duration) -> Duration {
        let doublings = attempt.saturating_sub(1).min(127);
        let nanos = self.initial.as_nanos();
        let scaled = nanos
            .checked_shl(doublings)
            .filter(|n| n >> doublings == nanos);
        let delay = scaled.map_or(Duration::MAX, from_nanos);
        delay.min(cap)
    }

    /// The delay before restart `attempt`, with jitter `unit` (in `[0, 1]`, clamped; NaN counts
    /// as 0): `base × (0.8 + 0.2 × unit)`.
    pub(crate) fn delay(&self, attempt: u32, cap: Duration, unit: f64) -> Duration {
        let base = self.base(attempt, cap);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        // Whole permilles: no float arithmetic on the duration itself, which could overflow.
        let jitter = (unit * JITTER_PERMILLE as f64) as u128;
        let permille = 1000 - JITTER_PERMILLE + jitter.min(JITTER_PERMILLE);
        // At most u64::MAX s in nanoseconds times 1000: well within a u128.
        from_nanos(base.as_nanos() * permille / 1000)
    }
}

/// A duration of `nanos` nanoseconds, `Duration::MAX` past it.
fn from_nanos(nanos: u128) -> Duration {
    const NANOS: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS) {
        Ok(secs) => Duration::new(secs, (nanos % NANOS) as u32),
        Err(_) => Duration::MAX,
    }
}

/// Where the jitter of the delays comes from.
#[derive(Debug, Clone)]
pub(crate) enum Jitter {
    /// A xorshift64 generator, seeded from std's `RandomState` (random per process).
    Random(u64),
    /// Always this value (tests).
    #[allow(dead_code)]
    Fixed(f64),
}

impl Jitter {
    /// A generator seeded at random.
    pub(crate) fn random() -> Jitter {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        // Xorshift must not start at zero.
        Jitter::Random(hasher.finish() | 1)
    }

    /// The next value, in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        match self {
            Jitter::Fixed(unit) => *unit,
            Jitter::Random(state) => {
                let mut x = *state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *state = x;
                // The top 53 bits, as a fraction.
                (x >> 11) as f64 / (1u64 << 53) as f64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_schedule_doubles_from_the_initial_delay_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let cap = b.cap();
        let schedule: Vec<Duration> = (1..=7).map(|a| b.base(a, cap)).collect();
        let expected = [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS);
        assert_eq!(schedule, expected);
        // Attempt 0 is the first.
        assert_eq!(b.base(0, cap), 100 * MS);
    }

    #[test]
    fn jitter_takes_off_at_most_a_fifth() {
        let b = Backoff::new(100 * MS, 10_000 * MS);
        let cap = b.cap();
        assert_eq!(b.delay(1, cap, 0.0), 80 * MS);
        assert_eq!(b.delay(1, cap, 1.0), 100 * MS);
        assert_eq!(b.delay(1, cap, 0.5), 90 * MS);
        assert_eq!(b.delay(3, cap, 0.5), 360 * MS);
        // Out of range and NaN are clamped.
        assert_eq!(b.delay(1, cap, 7.0), 100 * MS);
        assert_eq!(b.delay(1, cap, -1.0), 80 * MS);
        assert_eq!(b.delay(1, cap, f64::NAN), 80 * MS);
        // A delay in nanoseconds keeps its precision.
        let tiny = Backoff::new(Duration::from_nanos(1001), Duration::MAX);
        assert_eq!(tiny.delay(1, Duration::MAX, 0.0), Duration::from_nanos(800));
    }

    #[test]
    fn every_duration_is_taken_without_a_panic() {
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.base(1, Duration::MAX), Duration::MAX);
        assert_eq!(huge.base(u32::MAX, Duration::MAX), Duration::MAX);
        assert_eq!(huge.delay(u32::MAX, Duration::MAX, 1.0), Duration::MAX);
        assert!(huge.delay(9, Duration::MAX, 0.0) > Duration::from_secs(1 << 40));
        // Doubling past the range saturates to the cap.
        let b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert_eq!(b.base(200, Duration::MAX), Duration::MAX);
        assert_eq!(b.base(65, Duration::MAX), Duration::MAX);
        // A cap under the initial delay is raised to it.
        let b = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(b.cap(), 500 * MS);
        // A zero initial delay is refused with a reason.
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(zero.check().unwrap_err().contains("initial delay is zero"));
        assert!(Backoff::default().check().is_ok());
    }

    #[test]
    fn the_window_limits_the_cap_so_a_crash_loop_still_trips_it() {
        let b = Backoff::new(100 * MS, Duration::from_secs(30));
        // 10 restarts in 60 s: 11 restarts at the cap must fit in 60 s.
        let cap = b.cap_within(10, Duration::from_secs(60));
        assert_eq!(cap, Duration::from_secs(60) / 11);
        assert!(cap * 11 <= Duration::from_secs(60));
        // A cap already under the share stays.
        assert_eq!(
            Backoff::default().cap_within(10, Duration::from_secs(60)),
            5000 * MS
        );
        // It applies to the first delay too.
        let slow = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let cap = slow.cap_within(4, Duration::from_secs(5));
        assert_eq!(slow.base(1, cap), Duration::from_secs(1));
        // No restarts allowed, or a window of forever: no overflow.
        assert_eq!(
            b.cap_within(0, Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.cap_within(u32::MAX, Duration::MAX),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn random_jitter_stays_in_range_and_varies() {
        let mut j = Jitter::random();
        let values: Vec<f64> = (0..1000).map(|_| j.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
        let low = values.iter().filter(|&&v| v < 0.5).count();
        assert!((300..700).contains(&low), "{low} of 1000 under 0.5");
        let mut fixed = Jitter::Fixed(0.25);
        assert_eq!(fixed.next_unit(), 0.25);
        assert_eq!(fixed.next_unit(), 0.25);
    }
}

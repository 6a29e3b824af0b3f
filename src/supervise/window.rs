//! [`Window`]: the restart budget, at most R restarts in any span of T (a sliding window, as an
//! OTP supervisor's intensity and period): the (R+1)-th restart within T is refused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many restarts the budget allows within [`DEFAULT_WITHIN`], unless set otherwise.
pub(crate) const DEFAULT_MAX_RESTARTS: u32 = 10;
/// The span of the budget, unless set otherwise.
pub(crate) const DEFAULT_WITHIN: Duration = Duration::from_secs(60);

/// The restarts of a run in the last `within`, at most `max` of them.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    max: u32,
    within: Duration,
    /// When each restart admitted within the last `within` was, oldest first.
    times: VecDeque<Instant>,
}

impl Default for Window {
    fn default() -> Window {
        Window::new(DEFAULT_MAX_RESTARTS, DEFAULT_WITHIN)
    }
}

impl Window {
    /// At most `max` restarts in any span of `within`. Zero restarts: every restart is refused
    /// (the first failure exhausts the budget). A zero `within` is refused by
    /// [`check`](Window::check) when the run begins.
    pub(crate) fn new(max: u32, within: Duration) -> Window {
        Window {
            max,
            within,
            times: VecDeque::new(),
        }
    }

    /// The most restarts allowed in the window.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    /// The window's span.
    pub(crate) fn within(&self) -> Duration {
        self.within
    }

    /// Refuses a budget that cannot work: a zero window would never hold two restarts, so no
    /// crash loop would ever exhaust it.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.within.is_zero() {
            return Err(
                "the restart budget's window is zero: no crash loop would ever exhaust \
                        it; give it a span (the default is 10 restarts in 60 s)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Asks for a restart at `now`: admitted (and counted) while fewer than `max` restarts were
    /// admitted in the `within` before `now`, else refused (and not counted). An instant
    /// earlier than one already counted counts as in the window.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        self.forget(now);
        if self.times.len() >= self.max as usize {
            return false;
        }
        self.times.push_back(now);
        true
    }

    /// How many restarts are counted in the `within` before `now`.
    #[cfg(test)]
    pub(crate) fn count(&mut self, now: Instant) -> usize {
        self.forget(now);
        self.times.len()
    }

    /// Forgets the restarts `within` or more before `now`.
    fn forget(&mut self, now: Instant) {
        while let Some(&oldest) = self.times.front() {
            if now.saturating_duration_since(oldest) >= self.within {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_restart_past_the_budget_within_the_window_is_refused() {
        let t0 = Instant::now();
        let mut w = Window::new(3, 10 * S);
        assert!(w.admit(t0));
        assert!(w.admit(t0 + S));
        assert!(w.admit(t0 + 2 * S));
        // The fourth within 10 s.
        assert!(!w.admit(t0 + 9 * S));
        // A refusal is not counted.
        assert_eq!(w.count(t0 + 9 * S), 3);
        // At exactly 10 s after the first, it has left the window.
        assert!(w.admit(t0 + 10 * S));
        assert!(!w.admit(t0 + 10 * S));
        assert_eq!(w.count(t0 + 11 * S), 2);
        // Long after: empty.
        assert_eq!(w.count(t0 + 100 * S), 0);
    }

    #[test]
    fn a_sliding_window_trips_on_a_sustained_rate_over_its_budget() {
        // 10 in 60 s: one restart every 5 s is 12 a minute and trips; every 7 s never does.
        let t0 = Instant::now();
        let mut fast = Window::default();
        let admitted = (0..30).take_while(|&k| fast.admit(t0 + k * 5 * S)).count();
        assert_eq!(admitted, 10);
        let mut slow = Window::default();
        assert!((0..1000).all(|k| slow.admit(t0 + k * 7 * S)));
    }

    #[test]
    fn zero_restarts_refuses_every_one_and_a_zero_window_is_refused() {
        let t0 = Instant::now();
        let mut none = Window::new(0, 60 * S);
        assert!(!none.admit(t0));
        assert!(none.check().is_ok());
        let zero = Window::new(5, Duration::ZERO);
        assert!(zero.check().unwrap_err().contains("window is zero"));
        assert!(Window::default().check().is_ok());
        assert_eq!(Window::default().max(), 10);
        assert_eq!(Window::default().within(), 60 * S);
    }

    #[test]
    fn a_window_of_forever_and_instants_out_of_order_do_not_panic() {
        let t0 = Instant::now();
        let mut forever = Window::new(2, Duration::MAX);
        assert!(forever.admit(t0 + S));
        // Earlier than one counted: in the window.
        assert!(forever.admit(t0));
        assert!(!forever.admit(t0 + 1_000_000 * S));
        let mut huge = Window::new(u32::MAX, S);
        assert!((0..1000).all(|_| huge.admit(t0)));
    }
}

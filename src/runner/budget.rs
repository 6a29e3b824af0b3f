//! How one shutdown deadline is shared by the steps of a shutdown: the rule, in one place.
//!
//! After the drain, the shutdown runs its steps one after the other: the services' closes (in
//! reverse order of start), the cleanups (last added first), then the health endpoint and its
//! checker. Each has a timeout of its own (a service's close timeout; the runner's close
//! timeout for the endpoint and the checker, which are guaranteed at most 2 s of it; none for a
//! cleanup), and all share the deadline.
//!
//! When the steps begin, each is *guaranteed* the smaller of its own timeout and an equal share
//! of the time left (`left / steps`). A step may then run until its own timeout, but never into
//! the time guaranteed to the steps after it: its bound is
//! `min(its timeout, time left - what the later steps are guaranteed)`. So when every step is
//! quick, none is cut short; when one hangs, it is abandoned in time for every later step to
//! have at least its guaranteed time; and the last steps (the endpoint and the checker) always
//! run.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The shared deadline of a shutdown's steps, and what each step not yet run is guaranteed.
#[derive(Debug)]
pub(super) struct Budget {
    deadline: Instant,
    guaranteed: VecDeque<Duration>,
}

impl Budget {
    /// A budget for steps with these `timeouts`, in the order they run, from `now` until
    /// `deadline`.
    pub(super) fn new(now: Instant, deadline: Instant, timeouts: &[Duration]) -> Budget {
        let left = deadline.saturating_duration_since(now);
        let steps = u32::try_from(timeouts.len().max(1)).unwrap_or(u32::MAX);
        let share = left / steps;
        Budget {
            deadline,
            guaranteed: timeouts.iter().map(|t| (*t).min(share)).collect(),
        }
    }

    /// The bound of the next step, whose own timeout is `timeout`, beginning `now`: zero once
    /// the deadline has passed.
    pub(super) fn next(&mut self, now: Instant, timeout: Duration) -> Duration {
        self.guaranteed.pop_front();
        let left = self.deadline.saturating_duration_since(now);
        let reserved =
            (self.guaranteed.iter()).fold(Duration::ZERO, |sum, g| sum.saturating_add(*g));
        // Should the steps before have overrun their bounds by a little (a thread's start, the
        // clock), this step still gets its equal share of what is left.
        let steps = u32::try_from(self.guaranteed.len() + 1).unwrap_or(u32::MAX);
        let bound = left.saturating_sub(reserved).max(left / steps);
        timeout.min(bound)
    }

    /// Whether the deadline has passed at `now`: no step may begin any more.
    pub(super) fn has_passed(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn quick_steps_get_their_own_timeouts() {
        let now = Instant::now();
        let mut b = Budget::new(now, now + 25 * S, &[2 * S, 2 * S, 2 * S]);
        assert_eq!(b.next(now, 2 * S), 2 * S);
        assert_eq!(b.next(now + S, 2 * S), 2 * S);
        assert_eq!(b.next(now + 2 * S, 2 * S), 2 * S);
    }

    #[test]
    fn a_long_timeout_never_takes_what_later_steps_are_guaranteed() {
        let now = Instant::now();
        let hour = 3600 * S;
        // Four steps in 20 s: each is guaranteed min(its timeout, 5 s).
        let mut b = Budget::new(now, now + 20 * S, &[hour, 10 * S, S, 10 * S]);
        // The first may run until 20 - (5 + 1 + 5) = 9 s.
        assert_eq!(b.next(now, hour), 9 * S);
        // It hung for its whole bound: the second may run until 20 - 9 - (1 + 5) = 5 s.
        assert_eq!(b.next(now + 9 * S, 10 * S), 5 * S);
        assert_eq!(b.next(now + 14 * S, S), S);
        // The last gets everything left, up to its own timeout.
        assert_eq!(b.next(now + 15 * S, 10 * S), 5 * S);
    }

    #[test]
    fn overrun_steps_still_leave_a_share_and_a_passed_deadline_leaves_none() {
        let now = Instant::now();
        let mut b = Budget::new(now, now + 10 * S, &[5 * S, 5 * S, 5 * S]);
        // The first overran to 9 s: the other two share the last second.
        b.next(now, 5 * S);
        assert_eq!(b.next(now + 9 * S, 5 * S), S / 2);
        assert_eq!(b.next(now + 11 * S, 5 * S), Duration::ZERO);
    }

    #[test]
    fn any_duration_is_accepted() {
        let now = Instant::now();
        let far = crate::thread::later(now, Duration::MAX);
        let mut b = Budget::new(now, far, &[Duration::MAX, Duration::MAX]);
        assert!(b.next(now, Duration::MAX) > 3600 * S);
        let mut none = Budget::new(now, now, &[]);
        assert_eq!(none.next(now, Duration::MAX), Duration::ZERO);
    }
}

//! How one shutdown deadline is shared by the steps of a shutdown: the rule, in one place.
//!
//! After the drain, the shutdown runs its steps: the services' closes (each once every service
//! that needs it has closed, independent ones at the same time), then the cleanups (last added
//! first), then the health endpoint and its checker, one after the other. Each has a timeout of
//! its own (a service's close timeout; the runner's close timeout for the endpoint and the
//! checker, which are guaranteed at most 2 s of it; none for a cleanup), and all share the
//! deadline.
//!
//! The steps form a graph: each step begins once the steps before it have ended. Its *chain*
//! is the longest run of steps that must still follow it, one after the other (for a service,
//! the services it needs, transitively, then every cleanup and the runner's own steps). When
//! the steps begin, each is *guaranteed* the smaller of its own timeout and an equal share of
//! the time left, the share being `left / steps` where `steps` is the number of steps in the
//! longest chain of the whole graph (with closes one after another, as when nothing declares
//! its needs, that is every step). A step may then run until its own timeout, but never into
//! the time guaranteed to the longest chain that follows it: its bound is
//! `min(its timeout, time left - what that chain is guaranteed)`. Steps that run at the same
//! time do not take from each other. So when every step is quick, none is cut short; when one
//! hangs, it is abandoned in time for every step after it to have at least its guaranteed
//! time; and the last steps (the endpoint and the checker) always run.

use std::time::{Duration, Instant};

/// The shared deadline of a shutdown's steps, and what the chain after each step is
/// guaranteed.
#[derive(Debug)]
pub(super) struct Budget {
    deadline: Instant,
    /// What the longest chain after each step is guaranteed, in total.
    reserved: Vec<Duration>,
    /// How many steps that chain has.
    after: Vec<u32>,
}

impl Budget {
    /// A budget for steps with these `timeouts`, from `now` until `deadline`, where `then[i]`
    /// are the steps that begin only once step `i` has ended (each of a higher index than `i`:
    /// the steps are numbered in an order they could run one by one).
    pub(super) fn new(
        now: Instant,
        deadline: Instant,
        timeouts: &[Duration],
        then: &[Vec<usize>],
    ) -> Budget {
        debug_assert_eq!(timeouts.len(), then.len());
        let n = timeouts.len();
        let mut after = vec![0_u32; n];
        for i in (0..n).rev() {
            debug_assert!(then[i].iter().all(|&s| s > i && s < n));
            after[i] = (then[i].iter()).map(|&s| after[s] + 1).max().unwrap_or(0);
        }
        let longest = after.iter().map(|a| a + 1).max().unwrap_or(1);
        let share = deadline.saturating_duration_since(now) / longest;
        let guaranteed: Vec<Duration> = timeouts.iter().map(|t| (*t).min(share)).collect();
        let mut reserved = vec![Duration::ZERO; n];
        for i in (0..n).rev() {
            reserved[i] = (then[i].iter())
                .map(|&s| guaranteed[s].saturating_add(reserved[s]))
                .max()
                .unwrap_or(Duration::ZERO);
        }
        Budget {
            deadline,
            reserved,
            after,
        }
    }

    /// A budget for steps that run one after the other, in the order of `timeouts`.
    #[cfg(test)]
    pub(super) fn sequence(now: Instant, deadline: Instant, timeouts: &[Duration]) -> Budget {
        let then: Vec<Vec<usize>> = (0..timeouts.len())
            .map(|i| {
                if i + 1 < timeouts.len() {
                    vec![i + 1]
                } else {
                    vec![]
                }
            })
            .collect();
        Budget::new(now, deadline, timeouts, &then)
    }

    /// The bound of step `step`, whose own timeout is `timeout`, beginning `now`: zero once the
    /// deadline has passed.
    pub(super) fn bound(&self, step: usize, now: Instant, timeout: Duration) -> Duration {
        let left = self.deadline.saturating_duration_since(now);
        // Should the steps before have overrun their bounds by a little (a thread's start, the
        // clock), this step still gets its equal share of what is left to its chain.
        let bound = (left.saturating_sub(self.reserved[step])).max(left / (self.after[step] + 1));
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
        let b = Budget::sequence(now, now + 25 * S, &[2 * S, 2 * S, 2 * S]);
        assert_eq!(b.bound(0, now, 2 * S), 2 * S);
        assert_eq!(b.bound(1, now + S, 2 * S), 2 * S);
        assert_eq!(b.bound(2, now + 2 * S, 2 * S), 2 * S);
    }

    #[test]
    fn a_long_timeout_never_takes_what_later_steps_are_guaranteed() {
        let now = Instant::now();
        let hour = 3600 * S;
        // Four steps in 20 s: each is guaranteed min(its timeout, 5 s).
        let b = Budget::sequence(now, now + 20 * S, &[hour, 10 * S, S, 10 * S]);
        // The first may run until 20 - (5 + 1 + 5) = 9 s.
        assert_eq!(b.bound(0, now, hour), 9 * S);
        // It hung for its whole bound: the second may run until 20 - 9 - (1 + 5) = 5 s.
        assert_eq!(b.bound(1, now + 9 * S, 10 * S), 5 * S);
        assert_eq!(b.bound(2, now + 14 * S, S), S);
        // The last gets everything left, up to its own timeout.
        assert_eq!(b.bound(3, now + 15 * S, 10 * S), 5 * S);
    }

    #[test]
    fn overrun_steps_still_leave_a_share_and_a_passed_deadline_leaves_none() {
        let now = Instant::now();
        let b = Budget::sequence(now, now + 10 * S, &[5 * S, 5 * S, 5 * S]);
        // The first overran to 9 s: the other two share the last second.
        b.bound(0, now, 5 * S);
        assert_eq!(b.bound(1, now + 9 * S, 5 * S), S / 2);
        assert_eq!(b.bound(2, now + 11 * S, 5 * S), Duration::ZERO);
    }

    #[test]
    fn any_duration_is_accepted() {
        let now = Instant::now();
        let far = crate::thread::later(now, Duration::MAX);
        let b = Budget::sequence(now, far, &[Duration::MAX, Duration::MAX]);
        assert!(b.bound(0, now, Duration::MAX) > 3600 * S);
        let none = Budget::sequence(now, now, &[Duration::MAX]);
        assert_eq!(none.bound(0, now, Duration::MAX), Duration::ZERO);
    }

    #[test]
    fn steps_at_the_same_time_do_not_take_from_each_other() {
        let now = Instant::now();
        let hour = 3600 * S;
        // Two closes at once (0 and 1), then one they both need (2), then the endpoint (3): the
        // longest chain has three steps, so each is guaranteed min(its timeout, 10 s).
        let then = [vec![2], vec![2], vec![3], vec![]];
        let b = Budget::new(now, now + 30 * S, &[hour, hour, hour, 2 * S], &then);
        // Each of the first two may run until 30 - (10 + 2) = 18 s, whatever the other does.
        assert_eq!(b.bound(0, now, hour), 18 * S);
        assert_eq!(b.bound(1, now, hour), 18 * S);
        // Both hung: the one they need still gets 30 - 18 - 2 = 10 s, and the endpoint 2 s.
        assert_eq!(b.bound(2, now + 18 * S, hour), 10 * S);
        assert_eq!(b.bound(3, now + 28 * S, 2 * S), 2 * S);
        // A quick close keeps its own timeout.
        assert_eq!(b.bound(0, now, S), S);
    }
}

//! Supervision's decisions, apart from the runner's threads and channels: whether an instance
//! that ended is restarted, after how long, and whether the restart budget allows it.
//!
//! - `backoff.rs`: [`Backoff`], the delay before each restart (exponential, capped, jittered),
//!   and [`Jitter`], its randomness.
//! - `window.rs`: [`Window`], the restart budget (at most R restarts in any span of T).
//! - this file: [`Policy`], [`RestartOptions`], and [`Supervisor`], the per-run state machine
//!   the runner asks when an instance ends ([`Supervisor::ended`]) and tells when one is ready
//!   ([`Supervisor::ready`]). It never waits and calls no user code: the runner does both, on
//!   its pool, with bounds.
//!
//! An instance is named by its service's index and a generation, bumped at every restart, so
//! that a report from an instance replaced since (a stale one) is told apart and ignored.

mod backoff;
mod window;

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{Error, Phase};

#[allow(unused_imports)]
pub(crate) use self::backoff::{Backoff, Jitter, DEFAULT_CAP, DEFAULT_INITIAL};
#[allow(unused_imports)]
pub(crate) use self::window::{Window, DEFAULT_MAX_RESTARTS, DEFAULT_WITHIN};

/// When a service's instance is replaced by a fresh one from its factory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Policy {
    /// Never: a failure shuts the program down (OTP's *temporary*, except that the program
    /// goes down with it).
    #[default]
    Never,
    /// When it fails (OTP's *transient*): an instance that finishes its work cleanly stays
    /// finished.
    OnFailure,
    /// Whenever it ends while the program runs, cleanly or not (OTP's *permanent*).
    Always,
}

/// A restartable service's supervision, from its [`ServiceOptions`](crate::ServiceOptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RestartOptions {
    pub(crate) policy: Policy,
    pub(crate) backoff: Backoff,
    /// Restarted once its health fails this many polls in a row, if set.
    pub(crate) unhealthy_polls: Option<u32>,
    /// Its restart restarts the restartable services that need it too (OTP's rest_for_one).
    pub(crate) dependants: bool,
}

/// How an instance ended while the program ran.
#[derive(Debug, Clone)]
pub(crate) enum Exit {
    /// It failed: reported through its handle, failed to start again, or its health failed
    /// its polls in a row.
    Failed(Error),
    /// Its work finished without an error before it was told to stop.
    Finished,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Failed(e) => write!(f, "{e}"),
            Exit::Finished => f.write_str("it finished"),
        }
    }
}

/// What the runner does about an instance that ended.
#[derive(Debug, Clone)]
pub(crate) enum Decision {
    /// From an instance replaced since, or of a service that is not supervised: nothing.
    Stale,
    /// Not restarted, and nothing else happens: it finished, and its policy restarts only
    /// failures (it stays finished until the shutdown closes it).
    Stays,
    /// Not restarted: its policy is never, so the program shuts down with this error, as
    /// [`RunHandle::fatal`](crate::RunHandle::fatal) did before supervision.
    Fatal(Error),
    /// Restarted: close the instance, wait `delay`, start a fresh one (generation
    /// `generation`). `attempt` counts the restarts since it was last up for long enough.
    Restart {
        attempt: u32,
        delay: Duration,
        generation: u64,
    },
    /// The restart budget is spent: the program shuts down with this error.
    Exhausted(Error),
}

/// The most restart causes kept per service (the latest): a service that restarts every 6 s
/// for months must not grow the report without bound. The count of all is in the metrics.
pub(crate) const MAX_CAUSES: usize = 256;

/// One service's supervision.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    options: RestartOptions,
    generation: u64,
    /// Restarts since the instance was last up for at least the cap.
    attempt: u32,
    /// Since when the current instance has been ready, if it is.
    ready_since: Option<Instant>,
    /// Every restart of the run, with its cause.
    causes: Vec<Error>,
}

/// The supervision of one run: a slot per restartable service, one budget for them all.
#[derive(Debug)]
pub(crate) struct Supervisor {
    window: Window,
    jitter: Jitter,
    /// By service index; `None` for a service that is not restartable.
    slots: Vec<Option<Slot>>,
}

impl Supervisor {
    /// The supervision of services by index (`None`: not restartable, with its name) under one
    /// budget.
    pub(crate) fn new(
        window: Window,
        jitter: Jitter,
        services: impl IntoIterator<Item = (String, Option<RestartOptions>)>,
    ) -> Supervisor {
        let slots = (services.into_iter())
            .map(|(name, options)| {
                options.map(|options| Slot {
                    name,
                    options,
                    generation: 0,
                    attempt: 0,
                    ready_since: None,
                    causes: Vec::new(),
                })
            })
            .collect();
        Supervisor {
            window,
            jitter,
            slots,
        }
    }

    /// Whether service `index` is restartable (given by a factory).
    pub(crate) fn is_restartable(&self, index: usize) -> bool {
        self.slot(index).is_some()
    }

    /// Service `index`'s supervision options, if it is restartable.
    pub(crate) fn options(&self, index: usize) -> Option<&RestartOptions> {
        self.slot(index).map(|s| &s.options)
    }

    /// The current generation of service `index`'s instance (0 for the first).
    pub(crate) fn generation(&self, index: usize) -> u64 {
        self.slot(index).map_or(0, |s| s.generation)
    }

    /// The cap on the delays in force under this budget.
    pub(crate) fn cap(&self, index: usize) -> Duration {
        let (max, within) = (self.window.max(), self.window.within());
        (self.slot(index)).map_or(Duration::ZERO, |s| {
            s.options.backoff.cap_within(max, within)
        })
    }

    /// Every restart of service `index` so far, with its cause.
    #[cfg(test)]
    pub(crate) fn causes(&self, index: usize) -> &[Error] {
        self.slot(index).map_or(&[], |s| &s.causes)
    }

    /// Takes the causes of every service's restarts, by index.
    pub(crate) fn take_causes(&mut self) -> Vec<Vec<Error>> {
        (self.slots.iter_mut())
            .map(|s| s.as_mut().map(|s| std::mem::take(&mut s.causes)))
            .map(Option::unwrap_or_default)
            .collect()
    }

    /// Instance `generation` of service `index` is ready at `now`.
    pub(crate) fn ready(&mut self, index: usize, generation: u64, now: Instant) {
        if let Some(slot) = self.slot_mut(index).filter(|s| s.generation == generation) {
            slot.ready_since.get_or_insert(now);
        }
    }

    /// Instance `generation` of service `index` ended at `now` as `exit`: what to do about it.
    /// A restart is counted in the budget, bumps the generation (reports of the instance that
    /// ended are stale from then on) and grows the next delay; the attempt count starts over
    /// when the instance had been ready for at least the cap.
    pub(crate) fn ended(
        &mut self,
        index: usize,
        generation: u64,
        exit: Exit,
        now: Instant,
    ) -> Decision {
        let cap = self.cap(index);
        let (max, within) = (self.window.max(), self.window.within());
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return Decision::Stale;
        };
        if slot.generation != generation {
            return Decision::Stale;
        }
        let cause = match (exit, slot.options.policy) {
            (Exit::Finished, Policy::Never | Policy::OnFailure) => return Decision::Stays,
            (Exit::Failed(e), Policy::Never) => return Decision::Fatal(e),
            (Exit::Failed(e), _) => e,
            (Exit::Finished, Policy::Always) => {
                Error::msg("it ended without an error (restarted always)")
                    .in_service(&slot.name, Phase::Run)
            }
        };
        let up_since = slot.ready_since.take();
        if up_since.is_some_and(|t| now.saturating_duration_since(t) >= cap) {
            slot.attempt = 0;
        }
        if !self.window.admit(now) {
            let e = Error::msg(format!(
                "the restart budget is spent ({max} restart(s) within {within:?}); its last \
                 failure: {cause}"
            ))
            .in_service(&slot.name, Phase::Run);
            return Decision::Exhausted(e);
        }
        slot.attempt = slot.attempt.saturating_add(1);
        slot.generation += 1;
        if slot.causes.len() >= MAX_CAUSES {
            slot.causes.remove(0);
        }
        slot.causes.push(cause);
        let unit = self.jitter.next_unit();
        Decision::Restart {
            attempt: slot.attempt,
            delay: slot.options.backoff.delay(slot.attempt, cap, unit),
            generation: slot.generation,
        }
    }

    /// Service `index` is restarted along with another (`cause` says which), outside the
    /// budget (the restart that took it along was counted) and without a backoff of its own:
    /// its generation is bumped, its cause recorded. Returns the new generation, or `None` for
    /// a service that is not restartable.
    pub(crate) fn restart_along(&mut self, index: usize, cause: Error) -> Option<u64> {
        let cap = self.cap(index);
        let now = Instant::now();
        let slot = self.slot_mut(index)?;
        // As for a restart of its own: up for the cap, its attempts start again.
        let up_since = slot.ready_since.take();
        if up_since.is_some_and(|t| now.saturating_duration_since(t) >= cap) {
            slot.attempt = 0;
        }
        slot.attempt = slot.attempt.saturating_add(1);
        slot.generation += 1;
        if slot.causes.len() >= MAX_CAUSES {
            slot.causes.remove(0);
        }
        slot.causes.push(cause);
        Some(slot.generation)
    }

    /// Service `index`'s restart attempt in progress (1 for the first since it was last up
    /// long enough).
    pub(crate) fn attempt(&self, index: usize) -> u32 {
        self.slot(index).map_or(0, |s| s.attempt)
    }

    fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn options(policy: Policy) -> Option<RestartOptions> {
        Some(RestartOptions {
            policy,
            backoff: Backoff::new(100 * MS, 10 * S),
            unhealthy_polls: None,
            dependants: false,
        })
    }

    /// db (on failure), cache (always), plain (not restartable), never (never); jitter fixed
    /// at its top, so every delay is its base.
    fn supervisor(window: Window) -> Supervisor {
        Supervisor::new(
            window,
            Jitter::Fixed(1.0),
            [
                ("db".to_owned(), options(Policy::OnFailure)),
                ("cache".to_owned(), options(Policy::Always)),
                ("plain".to_owned(), None),
                ("never".to_owned(), options(Policy::Never)),
            ],
        )
    }

    fn failed(what: &str) -> Exit {
        Exit::Failed(Error::msg(what.to_owned()).in_service("db", Phase::Run))
    }

    fn delay(d: &Decision) -> Duration {
        match d {
            Decision::Restart { delay, .. } => *delay,
            other => panic!("not a restart: {other:?}"),
        }
    }

    #[test]
    fn each_policy_decides_on_a_failure_and_on_a_clean_finish() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::default());
        assert!(s.is_restartable(0) && !s.is_restartable(2));
        // On failure: a failure restarts, a finish stays.
        assert!(matches!(s.ended(0, 0, Exit::Finished, t0), Decision::Stays));
        let d = s.ended(0, 0, failed("boom"), t0);
        assert!(
            matches!(
                d,
                Decision::Restart {
                    attempt: 1,
                    generation: 1,
                    ..
                }
            ),
            "{d:?}"
        );
        // Always: a finish restarts too, its cause says so.
        let d = s.ended(1, 0, Exit::Finished, t0);
        assert!(matches!(d, Decision::Restart { attempt: 1, .. }), "{d:?}");
        let cause = s.causes(1)[0].to_string();
        assert!(
            cause.ends_with("it ended without an error (restarted always)"),
            "{cause}"
        );
        // Never: a failure is fatal, as before supervision; a finish stays.
        assert!(matches!(s.ended(3, 0, failed("x"), t0), Decision::Fatal(_)));
        assert!(matches!(s.ended(3, 0, Exit::Finished, t0), Decision::Stays));
        // Not restartable, or out of range: nothing to decide.
        assert!(matches!(s.ended(2, 0, failed("x"), t0), Decision::Stale));
        assert!(matches!(s.ended(9, 0, failed("x"), t0), Decision::Stale));
        assert_eq!(s.causes(2).len(), 0);
    }

    #[test]
    fn a_report_from_a_replaced_instance_is_stale() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::default());
        assert!(matches!(
            s.ended(0, 0, failed("a"), t0),
            Decision::Restart { .. }
        ));
        assert_eq!(s.generation(0), 1);
        // The old instance fails again (its thread saw the error twice): ignored.
        assert!(matches!(s.ended(0, 0, failed("b"), t0), Decision::Stale));
        assert_eq!(s.causes(0).len(), 1);
        assert!(s.causes(0)[0].to_string().ends_with(": a"));
    }

    #[test]
    fn the_delays_double_up_to_the_cap_and_start_over_after_an_instance_stayed_up() {
        let t0 = Instant::now();
        // 100 in 600 s: the cap in force is the window's share, 600 s / 101, under 10 s.
        let mut s = supervisor(Window::new(100, 600 * S));
        let cap = s.cap(0);
        assert_eq!(cap, 600 * S / 101);
        let mut at = t0;
        let mut delays = Vec::new();
        for g in 0..8 {
            let d = s.ended(0, g, failed("again"), at);
            delays.push(delay(&d));
            at += S;
        }
        let mut expected = [100, 200, 400, 800, 1600, 3200].map(|ms| ms * MS).to_vec();
        expected.extend([cap, cap]);
        assert_eq!(delays, expected);
        // Ready, but not for as long as the cap: the schedule goes on.
        s.ready(0, 8, at);
        let d = s.ended(0, 8, failed("again"), at + cap / 2);
        assert!(matches!(d, Decision::Restart { attempt: 9, .. }), "{d:?}");
        // Ready for the cap: the next failure starts over at the initial delay.
        s.ready(0, 9, at + S);
        let d = s.ended(0, 9, failed("later"), at + S + cap);
        assert!(matches!(d, Decision::Restart { attempt: 1, .. }), "{d:?}");
        assert_eq!(delay(&d), 100 * MS);
        // A readiness of a stale generation changes nothing.
        s.ready(0, 3, at);
    }

    #[test]
    fn a_restart_along_starts_the_attempts_over_after_an_instance_stayed_up() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::default());
        for g in 0..3 {
            assert!(matches!(
                s.ended(0, g, failed("again"), t0),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(s.attempt(0), 3);
        // The third fresh instance stayed up for longer than the cap, then its need restarts.
        let Some(long_ago) = Instant::now().checked_sub(s.cap(0) + S) else {
            return;
        };
        s.ready(0, 3, long_ago);
        assert_eq!(s.restart_along(0, Error::msg("its need restarts")), Some(4));
        assert_eq!(s.attempt(0), 1);
    }

    #[test]
    fn jitter_is_drawn_for_each_restart() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Window::default(),
            Jitter::Fixed(0.0),
            [("db".to_owned(), options(Policy::OnFailure))],
        );
        assert_eq!(delay(&s.ended(0, 0, failed("a"), t0)), 80 * MS);
        assert_eq!(delay(&s.ended(0, 1, failed("a"), t0)), 160 * MS);
    }

    #[test]
    fn the_budget_is_shared_and_its_refusal_says_why() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::new(2, 10 * S));
        assert!(matches!(
            s.ended(0, 0, failed("a"), t0),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            s.ended(1, 0, failed("b"), t0 + S),
            Decision::Restart { .. }
        ));
        let Decision::Exhausted(e) = s.ended(0, 1, failed("c"), t0 + 2 * S) else {
            panic!("the third restart within 10 s");
        };
        assert_eq!(e.service(), Some("db"));
        let text = e.to_string();
        assert!(
            text.contains("restart budget is spent (2 restart(s) within 10s)"),
            "{text}"
        );
        assert!(
            text.ends_with("its last failure: db: run failed: c"),
            "{text}"
        );
        // Not restarted: its generation and causes are as they were.
        assert_eq!(s.generation(0), 1);
        assert_eq!(s.causes(0).len(), 1);
        let all = s.take_causes();
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 0, 0]);
        assert!(s.causes(0).is_empty());
    }

    #[test]
    fn the_causes_kept_are_the_latest_and_bounded() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::new(u32::MAX, S));
        for g in 0..(MAX_CAUSES as u64 + 10) {
            let what = format!("failure {g}");
            assert!(matches!(
                s.ended(0, g, failed(&what), t0),
                Decision::Restart { .. }
            ));
        }
        let causes = s.causes(0);
        assert_eq!(causes.len(), MAX_CAUSES);
        assert!(
            causes[0].to_string().ends_with("failure 10"),
            "{}",
            causes[0]
        );
    }

    #[test]
    fn a_restart_along_another_is_outside_the_budget_and_makes_the_old_instance_stale() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::new(1, 10 * S));
        let cause = Error::msg("restarted with db").in_service("cache", Phase::Run);
        assert_eq!(s.restart_along(1, cause.clone()), Some(1));
        assert_eq!(s.restart_along(2, cause), None);
        assert_eq!(s.attempt(1), 1);
        assert!(matches!(s.ended(1, 0, failed("old"), t0), Decision::Stale));
        // The budget is untouched: one restart is still allowed.
        assert!(matches!(
            s.ended(0, 0, failed("a"), t0),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            s.ended(0, 1, failed("b"), t0),
            Decision::Exhausted(_)
        ));
    }

    #[test]
    fn no_restart_budget_makes_the_first_failure_exhaust_it() {
        let t0 = Instant::now();
        let mut s = supervisor(Window::new(0, 60 * S));
        assert!(matches!(
            s.ended(0, 0, failed("a"), t0),
            Decision::Exhausted(_)
        ));
        // A finish of a service restarted on failure only is still no restart.
        assert!(matches!(s.ended(0, 0, Exit::Finished, t0), Decision::Stays));
        assert_eq!(Exit::Finished.to_string(), "it finished");
        assert_eq!(failed("x").to_string(), "db: run failed: x");
        assert_eq!(s.options(0).unwrap().policy, Policy::OnFailure);
        assert!(s.options(2).is_none());
    }
}

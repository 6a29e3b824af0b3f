//! The systemd watchdog of a run: a thread `sd watchdog` that sends `WATCHDOG=1` every
//! [`Notifier::watchdog_interval`] (half of `WATCHDOG_USEC`) while liveness passes, as
//! `/livez` judges it ([`Snapshot::is_live`]: the checker polls, and no
//! [liveness check](crate::health::CheckOptions::liveness) fails). It exists only when the
//! watchdog is on for this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checker::{HealthChecker, Snapshot, Verdict};
use crate::relay;
use crate::state::State;
use crate::stop::StopSignal;
use crate::systemd::Notifier;
use crate::thread::{later, Thread};

/// The name of the watchdog's thread.
const THREAD: &str = "sd watchdog";

/// How long the end of a run waits for the watchdog's thread, which only ever waits for its
/// stop signal (it calls no user code and takes no lock user code holds).
const JOIN: Duration = Duration::from_secs(1);

/// What the watchdog judges liveness from.
struct Liveness {
    /// The run's health checker, if it has one.
    checker: Option<Arc<HealthChecker>>,
    /// Whether the runner has started the checker and not yet begun closing it: only then is
    /// liveness the checker's; before and after, the run is alive as long as it runs.
    judged: AtomicBool,
}

impl Liveness {
    /// Whether liveness passes now ([`Snapshot::is_live`], the rule `/livez` answers by), and
    /// why not when it does not.
    fn passes(&self) -> Result<(), String> {
        match &self.checker {
            Some(checker) if self.judged.load(Ordering::Acquire) => {
                let snapshot = checker.snapshot();
                let verdict = snapshot.is_live();
                if verdict.is_passing() {
                    Ok(())
                } else {
                    Err(why(&snapshot, &verdict))
                }
            }
            _ => Ok(()),
        }
    }
}

/// Why liveness fails, in a few words: the checker's state when it does not poll, else each
/// failing liveness check's error.
fn why(snapshot: &Snapshot, verdict: &Verdict) -> String {
    let state = snapshot.checker_state();
    if state != State::Started {
        return format!("the health checker is {state}, not polling");
    }
    let failures: Vec<String> = verdict.failures().map(|(_, e)| e.to_string()).collect();
    failures.join("; ")
}

/// The run's watchdog thread: stopped and joined at the end of the run.
pub(super) struct Watchdog {
    liveness: Arc<Liveness>,
    stop: StopSignal,
    thread: Thread<()>,
}

impl Watchdog {
    /// Starts the watchdog of a run whose health checker is `checker`, when the watchdog is on
    /// for this process (`WATCHDOG_USEC`, `WATCHDOG_PID`); `None` otherwise, and no thread.
    pub(super) fn start(checker: Option<Arc<HealthChecker>>) -> Option<Watchdog> {
        let notifier = Notifier::get();
        let every = notifier.watchdog_interval()?;
        let liveness = Arc::new(Liveness {
            checker,
            judged: AtomicBool::new(false),
        });
        let stop = StopSignal::new();
        let (live, stopped) = (liveness.clone(), stop.clone());
        let thread = Thread::spawn(THREAD.to_owned(), move || {
            ping(notifier, &live, &stopped, every);
        });
        match thread {
            Ok(thread) => Some(Watchdog {
                liveness,
                stop,
                thread,
            }),
            Err(e) => {
                relay::error!("systemd: cannot start the watchdog's thread: {e}");
                None
            }
        }
    }

    /// Whether liveness is the checker's (from the checker's start by the runner until the
    /// runner begins closing it), or only the run's.
    pub(super) fn judge_checker(&self, on: bool) {
        self.liveness.judged.store(on, Ordering::Release);
    }

    /// Stops the thread and joins it.
    pub(super) fn stop(self) {
        self.stop.stop();
        if let Err(thread) = self.thread.join_until(later(Instant::now(), JOIN)) {
            relay::warn!("thread {THREAD:?} did not end in time; leaving it");
            drop(thread.abandon());
        }
    }
}

/// The watchdog's loop: `WATCHDOG=1` at once, then every `every` while liveness passes, until
/// `stop` fires. A change of liveness is logged.
fn ping(notifier: &Notifier, liveness: &Liveness, stop: &StopSignal, every: Duration) {
    let mut next = Instant::now();
    let mut failing = false;
    loop {
        match liveness.passes() {
            Ok(()) => {
                if failing {
                    relay::info!("systemd: liveness passes again: sending WATCHDOG=1 again");
                    failing = false;
                }
                notifier.watchdog();
            }
            Err(why) if !failing => {
                relay::warn!("systemd: liveness fails ({why}): WATCHDOG=1 is no longer sent");
                failing = true;
            }
            Err(_) => {}
        }
        // A steady beat; after a late wake-up, the next beat is an interval from now.
        let now = Instant::now();
        next = later(next, every).max(now);
        if next == now {
            next = later(now, every);
        }
        if stop.wait_deadline(next) {
            return;
        }
    }
}

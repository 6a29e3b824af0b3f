//! The shutdown of a run: the drain, the closes and cleanups within one shared deadline (see
//! [`budget`](super::super::budget)), the health parts last, and the report with its summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{flatten_call, Error, Phase};
use crate::relay;
use crate::service::{close_guarded, Service};
use crate::thread::{call_within, later, Called};

use super::super::budget::Budget;
use super::super::{CleanupFn, Request, RunReport, ShutdownCause};
use super::Run;

/// The most the end of a run waits for its log lines to be written (see [`relay::flush`]),
/// within what is left of the shutdown timeout.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// The most the shutdown keeps back for each of the runner's own last steps (closing the health
/// endpoint, then the checker), which take milliseconds.
const OWN_STEP: Duration = Duration::from_secs(2);
/// What that wait is given even when the shutdown timeout has run out.
const MIN_FLUSH: Duration = Duration::from_millis(10);

impl Run {
    pub(super) fn shutdown(&mut self, cause: &ShutdownCause, drain: bool) {
        // From the moment the shutdown was asked for: during a start, that was before now.
        let now = Instant::now();
        let timeout = self.runner.shutdown_timeout;
        let deadline = *self.deadline.get_or_insert_with(|| later(now, timeout));
        self.runner.handle.shutting_down.stop();
        let handed_over = match cause {
            #[cfg(target_os = "linux")]
            ShutdownCause::Upgraded { pid } => {
                // Readiness stays: the new process serves the same sockets, so clients see
                // one healthy address; this one answers what its connections still ask.
                self.hand_over(*pid, deadline);
                true
            }
            _ => {
                self.notes.stopping(format!("shutting down ({cause})"));
                if let Some(h) = &self.health {
                    // Readiness fails at once so load balancers stop sending traffic; liveness
                    // stays.
                    h.set_running(false);
                }
                false
            }
        };
        relay::info!(
            "shutting down ({cause}): closing {} services",
            self.started.len()
        );

        if drain && !handed_over && !self.runner.termination_delay.is_zero() {
            // At most half the shutdown timeout (a longer delay is refused before the run):
            // the closes keep the rest.
            let delay = (self.runner.termination_delay).min(self.runner.shutdown_timeout / 2);
            // Readiness may have failed earlier, while restarts in progress were waited for.
            let drained = self.drain_began.map_or(Duration::ZERO, |t| t.elapsed());
            let delay = delay.saturating_sub(drained);
            relay::info!("draining for {delay:?} before closing");
            self.notes.status(format!("draining {delay:?}"));
            self.drain(delay);
        }

        // Every step of the shutdown with its own timeout: the started services' closes (each
        // after those that need it), then the cleanups, the endpoint and the checker one after
        // the other; they share the deadline by the budget's rule.
        let mut started = vec![false; self.graph.len()];
        for &i in &self.started {
            started[i] = true;
        }
        self.started.clear();
        // Dependants first: each service comes before every service it needs.
        let order: Vec<usize> = (self.graph.order().iter().rev())
            .copied()
            .filter(|&i| started[i])
            .collect();
        let cleanups = std::mem::take(&mut self.runner.cleanups);
        let health = self.health.take().map(|h| h.into_services_to_close());
        let health = health.unwrap_or_default();
        // What each step may need: the runner's own steps take milliseconds, so they are
        // guaranteed at most OWN_STEP (and still get, in their turn, all that is left up to the
        // close timeout).
        let own = OWN_STEP.min(self.runner.close_timeout);
        let timeouts: Vec<Duration> = (order.iter().map(|i| self.close_timeout(*i)))
            .chain(cleanups.iter().map(|_| Duration::MAX))
            .chain(health.iter().map(|_| own))
            .collect();
        let steps = timeouts.len();
        let tail = order.len();
        let mut step = vec![usize::MAX; self.graph.len()];
        for (k, &i) in order.iter().enumerate() {
            step[i] = k;
        }
        let then: Vec<Vec<usize>> = (0..steps)
            .map(|k| {
                let mut next: Vec<usize> = Vec::new();
                if k < tail {
                    let needs = self.graph.needs(order[k]).iter();
                    next.extend(needs.filter(|&&j| started[j]).map(|&j| step[j]));
                }
                // The steps after the closes run one after the other.
                let after = if k < tail { tail } else { k + 1 };
                if after < steps {
                    next.push(after);
                }
                next
            })
            .collect();
        let budget = Budget::new(Instant::now(), deadline, &timeouts, &then);

        self.close_services(&order, &budget);
        for (k, (name, cleanup)) in cleanups.into_iter().rev().enumerate() {
            self.cleanup_one(name, cleanup, &budget, tail + k);
        }
        // Last, the health endpoint (so probes are answered until the end), then its checker:
        // from now on, the watchdog no longer judges liveness by the checker's state.
        if let Some(watchdog) = &self.watchdog {
            watchdog.judge_checker(false);
        }
        let first_own = steps - health.len();
        for (k, service) in health.into_iter().enumerate() {
            let timeout = self.runner.close_timeout;
            self.close_bounded(service, timeout, &budget, first_own + k);
        }
        #[cfg(target_os = "linux")]
        self.join_upgrade(deadline);
    }

    /// Waits `delay`, the termination delay; under systemd, waking every
    /// [`REFRESH`](super::super::notify::REFRESH) to extend its stop timeout until the drain's
    /// end.
    fn drain(&mut self, delay: Duration) {
        let end = later(Instant::now(), delay);
        loop {
            self.notes.extend_until(end);
            let wake = self.notes.wake_by(end);
            let _ = crossbeam_channel::at(wake).recv();
            if wake >= end {
                return;
            }
        }
    }

    /// Service `index`'s close timeout.
    pub(super) fn close_timeout(&self, index: usize) -> Duration {
        let options = &self.runner.entries[index].options;
        options.close_timeout.unwrap_or(self.runner.close_timeout)
    }

    /// Closes `service` on a thread of its own, waiting at most `timeout` and never into the
    /// time the budget keeps for later steps; records any error. Returns how long the close
    /// took if it returned in time.
    fn close_bounded(
        &mut self,
        service: Arc<dyn Service>,
        timeout: Duration,
        budget: &Budget,
        step: usize,
    ) -> Option<Duration> {
        let name = service.name().to_owned();
        let now = Instant::now();
        let bound = budget.bound(step, now, timeout);
        if budget.has_passed(now) {
            self.not_closed_past_deadline(&name);
            return None;
        }
        relay::info!("{name}: closing");
        self.notes.status(format!("closing {name}"));
        self.notes.extend_until(later(now, bound));
        let began = Instant::now();
        match call_within(&name, Phase::Close, bound, move || close_guarded(&*service)) {
            Called::Returned(result) => {
                let took = began.elapsed();
                match result {
                    Ok(()) => relay::info!("{name}: closed in {took:?}"),
                    Err(e) => {
                        relay::error!("{e}");
                        self.shutdown_errors.push(e);
                    }
                }
                Some(took)
            }
            Called::Failed(e) => {
                relay::error!("{e}");
                self.shutdown_errors.push(e);
                None
            }
            Called::Stuck(thread, e) => {
                let e = if bound < timeout {
                    // Cut short to leave the later steps their time: say so.
                    Error::timed_out_noting(
                        &name,
                        Phase::Close,
                        bound,
                        format!(
                            "cut short of its close timeout of {timeout:?} to leave the rest of \
                             the shutdown its time"
                        ),
                    )
                } else {
                    e
                };
                relay::error!("{e}: abandoning its close");
                self.abandoned.push(thread);
                self.shutdown_errors.push(e);
                None
            }
        }
    }

    fn cleanup_one(&mut self, name: String, cleanup: CleanupFn, budget: &Budget, step: usize) {
        let now = Instant::now();
        let bound = budget.bound(step, now, Duration::MAX);
        if budget.has_passed(now) {
            relay::error!("cleanup {name}: not run: the shutdown deadline has passed");
            self.shutdown_errors.push(Error::timed_out(
                &name,
                Phase::Cleanup,
                self.runner.shutdown_timeout,
            ));
            return;
        }
        self.notes.status(format!("cleanup {name}"));
        self.notes.extend_until(later(now, bound));
        let label = name.clone();
        let called = call_within(&name, Phase::Cleanup, bound, move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
            flatten_call(&label, Phase::Cleanup, outcome)
        });
        let error = match called {
            Called::Returned(Ok(())) => {
                relay::info!("cleanup {name}: done");
                None
            }
            Called::Returned(Err(e)) | Called::Failed(e) => Some(e),
            Called::Stuck(thread, e) => {
                self.abandoned.push(thread);
                Some(e)
            }
        };
        if let Some(e) = error {
            relay::error!("{e}");
            self.shutdown_errors.push(e);
        }
    }

    /// Records that `name` is not closed: the shutdown deadline passed before its turn.
    pub(super) fn not_closed_past_deadline(&mut self, name: &str) {
        let e = Error::timed_out(name, Phase::Shutdown, self.runner.shutdown_timeout);
        relay::error!("{name}: not closed: the shutdown deadline has passed");
        self.shutdown_errors.push(e);
    }

    pub(super) fn finish(mut self, cause: ShutdownCause, durations: [Duration; 3]) -> RunReport {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        // Fatal errors reported after the run phase ended (a worker failing during the drain or
        // while the others close): nothing waits for requests any more, but none is lost.
        // A restartable service's instance that failed since is not restarted: its error is
        // the run's, as a fatal one (an instance replaced since is not).
        let early = std::mem::take(&mut self.early).into_iter();
        let requests: Vec<Request> = early.chain(self.runner.requests.try_iter()).collect();
        for request in requests {
            let e = match request {
                Request::Fatal(e) => e,
                Request::Failed {
                    index,
                    generation,
                    error,
                } if generation == self.supervisor.generation(index) => error,
                Request::Upgrade => {
                    relay::warn!(
                        "RunHandle::upgrade: upgrade refused: the program is shutting down"
                    );
                    continue;
                }
                _ => continue,
            };
            relay::error!("fatal: {e}");
            self.run_errors.push(e);
        }
        if !matches!(cause, ShutdownCause::Upgraded { .. }) {
            if let Some(path) = &self.runner.upgrade.pid_file {
                super::super::pid_file::remove_if_ours(path);
            }
        }
        let causes = self.supervisor.take_causes();
        for (index, (report, causes)) in self.reports.iter_mut().zip(causes).enumerate() {
            report.restarts = causes;
            report.restart_count = self.table.restarts(index);
        }
        // Threads abandoned earlier may have ended since: join those.
        let mut still_running = Vec::new();
        for a in std::mem::take(&mut self.abandoned) {
            if let Err(a) = a.try_join() {
                relay::warn!("thread {:?} is still running user code; leaving it", a.name);
                still_running.push(a.name);
            }
        }
        let report = RunReport {
            cause,
            services: self.reports,
            start_errors: self.start_errors,
            run_errors: self.run_errors,
            shutdown_errors: self.shutdown_errors,
            abandoned: still_running,
            start_path: self.start_path,
            shutdown_path: self.shutdown_path,
            start_duration: durations[0],
            run_duration: durations[1],
            shutdown_duration: durations[2],
        };
        let failed = report.error();
        let level = if failed.is_some() {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        // Built only when it is logged: a line per service.
        if relay::enabled(level) {
            for line in report.summary() {
                relay::log_at!(level, "{line}");
            }
        }
        match failed {
            None => {
                relay::info!("shut down cleanly ({})", report.cause);
                self.notes.status("shut down cleanly".to_owned());
            }
            Some(e) => {
                let n = e.errors().len();
                relay::error!("shut down with {n} error(s): {e}");
                self.notes.status(format!("shut down with {n} error(s)"));
            }
        }
        // The run's last lines are written before `run` returns (and `main` with it), unless
        // the log sink is stuck: then no longer than what is left of the shutdown timeout.
        let now = Instant::now();
        let left = (self.deadline).map_or(FINAL_FLUSH, |d| d.saturating_duration_since(now));
        relay::flush(later(now, left.clamp(MIN_FLUSH, FINAL_FLUSH)));
        report
    }
}

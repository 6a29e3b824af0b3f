//! One run of a [`Runner`]: start, wait, shutdown (`run/shutdown.rs`). Every call into a
//! service runs on a named thread of its own, so that the runner thread waits for it with a
//! bound and gives up on it (naming it in the report) when it hangs.

mod shutdown;

#[cfg(feature = "metrics")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::checker::CHECKER_NAME;
use crate::error::{check_name, Error, ErrorKind, Phase, Result};
#[cfg(feature = "metrics")]
use crate::metrics::ServiceTable;
use crate::multi::check_names;
use crate::relay;
use crate::service::{start_until_ready, StartOutcome};
use crate::state::State;
use crate::stop::{StartContext, StopSignal};
use crate::thread::{later, Abandoned, Thread};

use super::health::{RunnerHealth, RUNNER_CHECK};
use super::signals::{signal_name, SignalRoute};
use super::{Request, RunReport, Runner, ServiceReport, ShutdownCause, START_GRACE};

/// The state of one call to [`Runner::run`].
pub(super) struct Run {
    runner: Runner,
    signals: Receiver<i32>,
    _route: Option<SignalRoute>,
    setup_error: Option<Error>,
    health: Option<RunnerHealth>,
    reports: Vec<ServiceReport>,
    started: Vec<usize>,
    abandoned: Vec<Abandoned>,
    start_errors: Vec<Error>,
    run_errors: Vec<Error>,
    shutdown_errors: Vec<Error>,
    /// The shutdown's deadline, once it has begun.
    deadline: Option<Instant>,
    /// Each service's state and durations, for the metrics.
    #[cfg(feature = "metrics")]
    table: Option<Arc<ServiceTable>>,
}

/// The names a runner refuses before anything starts: an invalid name, two services of one
/// name, a service that takes the name of one of the runner's own checks (`runner` and `health
/// checker`, with health on), and an invalid cleanup name.
fn check_runner_names(runner: &Runner) -> Result<()> {
    let services = runner.entries.iter().map(|e| e.service.name());
    let own: &[&str] = if runner.checker.is_some() || runner.endpoint.is_some() {
        &[RUNNER_CHECK, CHECKER_NAME]
    } else {
        &[]
    };
    if let Some(taken) = services.clone().find(|name| own.contains(name)) {
        return Err(Error::registration(ErrorKind::DuplicateName, taken));
    }
    check_names([], services)?;
    runner
        .cleanups
        .iter()
        .try_for_each(|(name, _)| check_name(name))
}

/// The timeouts a runner refuses before anything starts: a zero shutdown timeout (nothing could
/// close), and a termination delay of more than half the shutdown timeout (the closes would
/// have less time than the drain).
fn check_runner_timeouts(runner: &Runner) -> Result<()> {
    let (delay, timeout) = (runner.termination_delay, runner.shutdown_timeout);
    if timeout.is_zero() {
        return Err(Error::invalid_input(
            RUNNER_CHECK,
            "the shutdown timeout is zero: nothing could close; give it at least the time the \
             closes need",
        ));
    }
    if delay > timeout / 2 {
        return Err(Error::invalid_input(
            RUNNER_CHECK,
            format!(
                "the termination delay ({delay:?}) is more than half the shutdown timeout \
                 ({timeout:?}): the closes would have less time than the drain; shorten the \
                 delay or lengthen the shutdown timeout"
            ),
        ));
    }
    Ok(())
}

impl Run {
    pub(super) fn new(runner: Runner) -> Run {
        // An invalid name, or two services of one name, would make the report, the health
        // checks and the metrics ambiguous: refuse to run them, before any signal route is
        // claimed.
        let names = check_runner_names(&runner)
            .and_then(|()| check_runner_timeouts(&runner))
            .err();
        let (route, setup_error) = match names {
            Some(e) => (None, Some(e)),
            None if runner.handle_signals => match SignalRoute::claim() {
                Ok(route) => (Some(route), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        let signals = route
            .as_ref()
            .map_or_else(crossbeam_channel::never, |r| r.events().clone());
        let reports = runner
            .entries
            .iter()
            .map(|e| ServiceReport {
                name: e.service.name().to_owned(),
                state: State::Unstarted,
                ready_in: None,
                closed_in: None,
                started: false,
                closed: false,
            })
            .collect();
        let health = RunnerHealth::new(&runner);
        #[cfg(feature = "metrics")]
        let table = runner.metrics.as_ref().map(|metrics| {
            let table = Arc::new(ServiceTable::new(
                runner.entries.iter().map(|e| e.service.name()),
            ));
            metrics.watch_services(table.clone());
            table
        });
        Run {
            runner,
            signals,
            _route: route,
            setup_error,
            health,
            reports,
            started: Vec::new(),
            abandoned: Vec::new(),
            start_errors: Vec::new(),
            run_errors: Vec::new(),
            shutdown_errors: Vec::new(),
            deadline: None,
            #[cfg(feature = "metrics")]
            table,
        }
    }

    /// Records that service `index` is now in `state`, and how long the step that got it there
    /// took, for the metrics.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn mark(&mut self, index: usize, state: State, took: Option<Duration>) {
        self.reports[index].state = state;
        #[cfg(feature = "metrics")]
        if let Some(table) = &self.table {
            table.set_state(index, state);
            match (state, took) {
                (State::Started, Some(took)) => table.started_in(index, took),
                (State::Closed | State::CloseFailed, Some(took)) => table.closed_in(index, took),
                _ => {}
            }
        }
    }

    pub(super) fn execute(mut self) -> RunReport {
        let began = Instant::now();
        if let Some(e) = self.setup_error.take() {
            relay::error!("cannot run: {e}");
            self.start_errors.push(e);
            return self.finish(ShutdownCause::StartFailed, [Duration::ZERO; 3]);
        }

        let start_outcome = match self.start_health() {
            Ok(()) => self.start_all(),
            Err(e) => {
                relay::error!("{e}");
                self.start_errors.push(e);
                Some(ShutdownCause::StartFailed)
            }
        };
        let start_duration = began.elapsed();
        let run_began = Instant::now();
        let (cause, drain) = match start_outcome {
            Some(cause) => (cause, false),
            None => {
                relay::info!(
                    "all {} services ready in {start_duration:?}; running",
                    self.started.len()
                );
                if let Some(h) = &self.health {
                    h.set_running(true);
                }
                self.runner.handle.running.stop();
                (self.wait_for_end(), true)
            }
        };
        let run_duration = run_began.elapsed();

        let shutdown_began = Instant::now();
        self.shutdown(&cause, drain);
        let shutdown_duration = shutdown_began.elapsed();
        self.finish(cause, [start_duration, run_duration, shutdown_duration])
    }

    /// Takes a pending shutdown request or signal without blocking.
    fn poll_request(&mut self) -> Option<ShutdownCause> {
        if let Ok(signal) = self.signals.try_recv() {
            return Some(self.on_signal(signal));
        }
        self.runner.requests.try_recv().ok().map(|r| self.take(r))
    }

    fn on_signal(&self, signal: i32) -> ShutdownCause {
        relay::info!("{}: shutting down gracefully", signal_name(signal));
        ShutdownCause::Signal
    }

    fn take(&mut self, request: Request) -> ShutdownCause {
        match request {
            Request::Shutdown => ShutdownCause::Requested,
            Request::Fatal(e) => {
                relay::error!("fatal: {e}");
                self.run_errors.push(e);
                ShutdownCause::Fatal
            }
        }
    }

    /// Starts the health checker and endpoint, and registers every service, before any service
    /// starts: probes get answers (not ready) from the start.
    fn start_health(&mut self) -> Result<()> {
        let Some(health) = &mut self.health else {
            return Ok(());
        };
        let services: Vec<_> = self
            .runner
            .entries
            .iter()
            .map(|e| e.service.clone())
            .collect();
        health.start(services)?;
        *self.runner.handle.health_addr.lock() = health.local_addr();
        Ok(())
    }

    /// Starts every service in order; returns the cause if the start phase ended early.
    fn start_all(&mut self) -> Option<ShutdownCause> {
        // Fired on a shutdown request during the start phase: cancels the start in progress.
        let cancel = StopSignal::new();
        for index in 0..self.runner.entries.len() {
            if let Some(cause) = self.poll_request() {
                relay::info!("{cause} during start: not starting the remaining services");
                return Some(cause);
            }
            if let Some(cause) = self.start_one(index, &cancel) {
                return Some(cause);
            }
        }
        None
    }

    fn start_one(&mut self, index: usize, cancel: &StopSignal) -> Option<ShutdownCause> {
        let entry = &self.runner.entries[index];
        let service = entry.service.clone();
        let name = service.name().to_owned();
        let timeout = entry
            .options
            .start_timeout
            .unwrap_or(self.runner.start_timeout);
        let close_timeout = entry
            .options
            .close_timeout
            .unwrap_or(self.runner.close_timeout);
        relay::info!("{name}: starting");
        self.mark(index, State::Starting, None);
        let began = Instant::now();

        let ctx =
            StartContext::new(cancel.clone(), Some(timeout)).with_handle(self.runner.handle());
        let pending = match Thread::spawn(format!("start {name}"), move || {
            start_until_ready(&*service, &ctx)
        }) {
            Ok(p) => p,
            Err(e) => {
                let e = Error::from(e).in_service(&name, Phase::Start);
                relay::error!("{e}");
                self.start_errors.push(e);
                self.mark(index, State::StartFailed, None);
                return Some(ShutdownCause::StartFailed);
            }
        };

        // The start thread gives up by itself at the deadline; the fixed grace covers a start
        // that ignores its context, and the error says so.
        let give_up_at = later(later(began, timeout), START_GRACE);
        let give_up = crossbeam_channel::at(give_up_at);
        let mut interrupted = None;
        let outcome = select! {
            recv(pending.receiver()) -> outcome => {
                pending.join();
                outcome.ok()
            }
            recv(self.signals) -> signal => {
                interrupted = signal.ok().map(|s| self.on_signal(s));
                let grace = self.interrupted_start_grace(close_timeout, give_up_at);
                self.cancel_start(pending, cancel, grace)
            }
            recv(self.runner.requests) -> request => {
                interrupted = request.ok().map(|r| self.take(r));
                let grace = self.interrupted_start_grace(close_timeout, give_up_at);
                self.cancel_start(pending, cancel, grace)
            }
            recv(give_up) -> _ => self.cancel_start(pending, cancel, Duration::ZERO),
        };

        match outcome {
            Some(StartOutcome {
                started,
                result: Ok(()),
            }) => {
                self.reports[index].started = started;
                self.started.push(index);
                if interrupted.is_none() {
                    let took = began.elapsed();
                    self.reports[index].ready_in = Some(took);
                    self.mark(index, State::Started, Some(took));
                    relay::info!("{name}: ready in {took:?}");
                    return None;
                }
                self.mark(index, State::Started, None);
            }
            Some(StartOutcome {
                started,
                result: Err(e),
            }) => {
                self.reports[index].started = started;
                if started {
                    // Started but never became ready: it still needs closing.
                    self.started.push(index);
                }
                // A start cut short by a shutdown is no failure: a service that did not start
                // counts as closed, one that did is closed like the others.
                let state = match (interrupted.is_some(), started) {
                    (true, false) => State::Closed,
                    (true, true) => State::Started,
                    (false, _) => State::StartFailed,
                };
                self.mark(index, state, None);
                if interrupted.is_none() {
                    relay::error!("{e}");
                    self.start_errors.push(e);
                } else {
                    relay::info!("{name}: start interrupted: {e}");
                }
            }
            None => {
                self.mark(index, State::StartFailed, None);
                let e = Error::timed_out_noting(
                    &name,
                    Phase::Start,
                    timeout,
                    format!("abandoned {START_GRACE:?} later: its start did not return"),
                );
                relay::error!("{e}");
                if interrupted.is_none() {
                    self.start_errors.push(e);
                }
            }
        }
        Some(interrupted.unwrap_or(ShutdownCause::StartFailed))
    }

    /// A shutdown was asked for during a start: its deadline begins now, and the start, once
    /// cancelled, is waited for at most its close timeout, at most until it would have been
    /// abandoned anyway, and at most half the shutdown timeout, so that the closes keep the rest.
    fn interrupted_start_grace(
        &mut self,
        close_timeout: Duration,
        give_up_at: Instant,
    ) -> Duration {
        let now = Instant::now();
        self.deadline
            .get_or_insert_with(|| later(now, self.runner.shutdown_timeout));
        (close_timeout)
            .min(give_up_at.saturating_duration_since(now))
            .min(self.runner.shutdown_timeout / 2)
    }

    /// Cancels the start in progress and waits up to `grace` for it to return.
    fn cancel_start(
        &mut self,
        pending: Thread<StartOutcome>,
        cancel: &StopSignal,
        grace: Duration,
    ) -> Option<StartOutcome> {
        cancel.stop();
        match pending.join_until(later(Instant::now(), grace)) {
            Ok(outcome) => outcome,
            Err(pending) => {
                self.abandoned.push(pending.abandon());
                None
            }
        }
    }

    /// Waits in the run phase until a signal, a request or a fatal error.
    fn wait_for_end(&mut self) -> ShutdownCause {
        select! {
            recv(self.signals) -> signal => match signal {
                Ok(s) => self.on_signal(s),
                Err(_) => ShutdownCause::Signal,
            },
            recv(self.runner.requests) -> request => match request {
                Ok(r) => self.take(r),
                // Unreachable while the runner holds a handle; treat it as a request.
                Err(_) => ShutdownCause::Requested,
            },
        }
    }
}

//! One run of a [`Runner`]: start, wait, shutdown. Every call into a service runs on a named
//! thread of its own, so that the runner thread waits for it with a bound and gives up on it
//! (naming it in the report) when it hangs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::checker::CHECKER_NAME;
use crate::error::{check_name, flatten_call, Error, ErrorKind, Phase, Result};
#[cfg(feature = "metrics")]
use crate::metrics::ServiceTable;
use crate::multi::check_names;
use crate::service::{close_guarded, start_until_ready, Service, StartOutcome};
use crate::state::State;
use crate::stop::{StartContext, StopSignal};
use crate::thread::{call_within, later, Abandoned, Called, Thread};

use super::health::{RunnerHealth, RUNNER_CHECK};
use super::signals::SignalRoute;
use super::{CleanupFn, Request, RunReport, Runner, ServiceReport, ShutdownCause};

/// The state of one call to [`Runner::run`].
pub(super) struct Run {
    runner: Runner,
    signals: Receiver<()>,
    _route: Option<SignalRoute>,
    setup_error: Option<Error>,
    health: Option<RunnerHealth>,
    reports: Vec<ServiceReport>,
    started: Vec<usize>,
    abandoned: Vec<Abandoned>,
    start_errors: Vec<Error>,
    run_errors: Vec<Error>,
    shutdown_errors: Vec<Error>,
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

impl Run {
    pub(super) fn new(runner: Runner) -> Run {
        // An invalid name, or two services of one name, would make the report, the health
        // checks and the metrics ambiguous: refuse to run them, before any signal route is
        // claimed.
        let names = check_runner_names(&runner).err();
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
            #[cfg(feature = "metrics")]
            table,
        }
    }

    /// Records that service `index` is now in `state`, and how long the step that got it there
    /// took, for the metrics.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn mark(&self, index: usize, state: State, took: Option<Duration>) {
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
            log::error!("cannot run: {e}");
            self.start_errors.push(e);
            return self.finish(ShutdownCause::StartFailed, [Duration::ZERO; 3]);
        }

        let start_outcome = match self.start_health() {
            Ok(()) => self.start_all(),
            Err(e) => {
                log::error!("{e}");
                self.start_errors.push(e);
                Some(ShutdownCause::StartFailed)
            }
        };
        let start_duration = began.elapsed();
        let run_began = Instant::now();
        let (cause, drain) = match start_outcome {
            Some(cause) => (cause, false),
            None => {
                log::info!(
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
        if self.signals.try_recv().is_ok() {
            return Some(ShutdownCause::Signal);
        }
        self.runner.requests.try_recv().ok().map(|r| self.take(r))
    }

    fn take(&mut self, request: Request) -> ShutdownCause {
        match request {
            Request::Shutdown => ShutdownCause::Requested,
            Request::Fatal(e) => {
                log::error!("fatal: {e}");
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
                log::info!("{cause} during start: not starting the remaining services");
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
        let grace = entry
            .options
            .close_timeout
            .unwrap_or(self.runner.close_timeout);
        log::info!("{name}: starting");
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
                log::error!("{e}");
                self.start_errors.push(e);
                self.mark(index, State::StartFailed, None);
                return Some(ShutdownCause::StartFailed);
            }
        };

        // The start thread gives up by itself at the deadline; the extra grace covers a start that
        // ignores its context.
        let give_up = crossbeam_channel::at(later(later(began, timeout), grace));
        let mut interrupted = None;
        let outcome = select! {
            recv(pending.receiver()) -> outcome => {
                pending.join();
                outcome.ok()
            }
            recv(self.signals) -> _ => {
                interrupted = Some(ShutdownCause::Signal);
                self.cancel_start(pending, cancel, grace)
            }
            recv(self.runner.requests) -> request => {
                interrupted = request.ok().map(|r| self.take(r));
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
                    log::info!("{name}: ready in {took:?}");
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
                    log::error!("{e}");
                    self.start_errors.push(e);
                } else {
                    log::info!("{name}: start interrupted: {e}");
                }
            }
            None => {
                self.mark(index, State::StartFailed, None);
                let e = Error::timed_out(&name, Phase::Start, timeout);
                log::error!("{e}; abandoning its start, which did not return");
                if interrupted.is_none() {
                    self.start_errors.push(e);
                }
            }
        }
        Some(interrupted.unwrap_or(ShutdownCause::StartFailed))
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
            recv(self.signals) -> _ => ShutdownCause::Signal,
            recv(self.runner.requests) -> request => match request {
                Ok(r) => self.take(r),
                // Unreachable while the runner holds a handle; treat it as a request.
                Err(_) => ShutdownCause::Requested,
            },
        }
    }

    fn shutdown(&mut self, cause: &ShutdownCause, drain: bool) {
        let deadline = later(Instant::now(), self.runner.shutdown_timeout);
        self.runner.handle.shutting_down.stop();
        if let Some(h) = &self.health {
            // Readiness fails at once so load balancers stop sending traffic; liveness stays.
            h.set_running(false);
        }
        log::info!(
            "shutting down ({cause}): closing {} services",
            self.started.len()
        );

        if drain && !self.runner.termination_delay.is_zero() {
            let delay = self
                .runner
                .termination_delay
                .min(deadline.saturating_duration_since(Instant::now()));
            log::info!("draining for {delay:?} before closing");
            let _ = crossbeam_channel::after(delay).recv();
        }

        while let Some(index) = self.started.pop() {
            self.close_one(index, deadline);
        }

        let cleanups = std::mem::take(&mut self.runner.cleanups);
        for (name, cleanup) in cleanups.into_iter().rev() {
            self.cleanup_one(name, cleanup, deadline);
        }

        // Last, the health endpoint (so probes are answered until the end), then its checker.
        if let Some(health) = self.health.take() {
            for service in health.into_services_to_close() {
                self.close_bounded(service, self.runner.close_timeout, deadline);
            }
        }
    }

    fn close_one(&mut self, index: usize, deadline: Instant) {
        let entry = &self.runner.entries[index];
        let service = entry.service.clone();
        let timeout = entry
            .options
            .close_timeout
            .unwrap_or(self.runner.close_timeout);
        self.mark(index, State::Closing, None);
        let errors_before = self.shutdown_errors.len();
        let took = self.close_bounded(service, timeout, deadline);
        if let Some(took) = took {
            self.reports[index].closed = true;
            self.reports[index].closed_in = Some(took);
        }
        let state = if took.is_some() && self.shutdown_errors.len() == errors_before {
            State::Closed
        } else {
            State::CloseFailed
        };
        self.mark(index, state, took);
    }

    /// Closes `service` on a thread of its own, waiting at most `timeout` and never past
    /// `deadline`; records any error. Returns how long the close took if it returned in time.
    fn close_bounded(
        &mut self,
        service: Arc<dyn Service>,
        timeout: Duration,
        deadline: Instant,
    ) -> Option<Duration> {
        let name = service.name().to_owned();
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let e = Error::timed_out(&name, Phase::Shutdown, self.runner.shutdown_timeout);
            log::error!("{name}: not closed: the shutdown deadline has passed");
            self.shutdown_errors.push(e);
            return None;
        }
        let bound = timeout.min(remaining);
        log::info!("{name}: closing");
        let began = Instant::now();
        match call_within(&name, Phase::Close, bound, move || close_guarded(&*service)) {
            Called::Returned(result) => {
                let took = began.elapsed();
                match result {
                    Ok(()) => log::info!("{name}: closed in {took:?}"),
                    Err(e) => {
                        log::error!("{e}");
                        self.shutdown_errors.push(e);
                    }
                }
                Some(took)
            }
            Called::Failed(e) => {
                log::error!("{e}");
                self.shutdown_errors.push(e);
                None
            }
            Called::Stuck(thread, e) => {
                log::error!("{e}: abandoning its close");
                self.abandoned.push(thread);
                self.shutdown_errors.push(e);
                None
            }
        }
    }

    fn cleanup_one(&mut self, name: String, cleanup: CleanupFn, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            log::error!("cleanup {name}: not run: the shutdown deadline has passed");
            self.shutdown_errors.push(Error::timed_out(
                &name,
                Phase::Cleanup,
                self.runner.shutdown_timeout,
            ));
            return;
        }
        let label = name.clone();
        let called = call_within(&name, Phase::Cleanup, remaining, move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
            flatten_call(&label, Phase::Cleanup, outcome)
        });
        let error = match called {
            Called::Returned(Ok(())) => {
                log::info!("cleanup {name}: done");
                None
            }
            Called::Returned(Err(e)) | Called::Failed(e) => Some(e),
            Called::Stuck(thread, e) => {
                self.abandoned.push(thread);
                Some(e)
            }
        };
        if let Some(e) = error {
            log::error!("{e}");
            self.shutdown_errors.push(e);
        }
    }

    fn finish(mut self, cause: ShutdownCause, durations: [Duration; 3]) -> RunReport {
        // Fatal errors reported after the run phase ended (a worker failing during the drain or
        // while the others close): nothing waits for requests any more, but none is lost.
        while let Ok(request) = self.runner.requests.try_recv() {
            if let Request::Fatal(e) = request {
                log::error!("fatal: {e}");
                self.run_errors.push(e);
            }
        }
        // Threads abandoned earlier may have ended since: join those.
        let mut still_running = Vec::new();
        for a in std::mem::take(&mut self.abandoned) {
            if let Err(a) = a.try_join() {
                log::warn!("thread {:?} is still running user code; leaving it", a.name);
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
            start_duration: durations[0],
            run_duration: durations[1],
            shutdown_duration: durations[2],
        };
        match report.error() {
            None => log::info!("shut down cleanly ({})", report.cause),
            Some(e) => log::error!("shut down with {} error(s): {e}", e.errors().len()),
        }
        report
    }
}

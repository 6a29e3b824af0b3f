//! [`Runner`]: the main job, from `main()` to a clean exit.

mod call;
mod report;

mod health;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

use crate::checker::HealthChecker;
use crate::endpoint::EndpointOptions;
use crate::error::{Error, ErrorKind, Phase, Result};
#[cfg(feature = "metrics")]
use crate::metrics::{Metrics, ServiceTable};
use crate::service::{close_guarded, ready_guarded, start_guarded, Service};
use crate::signals::SignalRoute;
use crate::state::State;
use crate::stop::{StartContext, StopSignal};

use self::health::RunnerHealth;

use self::call::{Abandoned, Pending};
pub use self::report::{RunPhase, RunReport, ServiceReport, ShutdownCause};

/// How long a service may take to start and become ready, unless set otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to close, unless set otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole shutdown (drain, closes, cleanups) may take, unless set otherwise: under
/// Kubernetes' default 30 s grace period, so the runner finishes before the kubelet's SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// Per-service timeouts, for [`Runner::service_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceOptions {
    start_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
}

impl ServiceOptions {
    /// Options that use the runner's defaults.
    pub fn new() -> ServiceOptions {
        ServiceOptions::default()
    }

    /// How long this service may take to start and become ready (default: the runner's
    /// [`start_timeout`](Runner::start_timeout)).
    pub fn start_timeout(mut self, timeout: Duration) -> ServiceOptions {
        self.start_timeout = Some(timeout);
        self
    }

    /// How long this service may take to close (default: the runner's
    /// [`stop_timeout`](Runner::stop_timeout)).
    pub fn stop_timeout(mut self, timeout: Duration) -> ServiceOptions {
        self.stop_timeout = Some(timeout);
        self
    }
}

struct Entry {
    service: Arc<dyn Service>,
    options: ServiceOptions,
}

type CleanupFn = Box<dyn FnOnce() -> Result<()> + Send + 'static>;

enum Request {
    Shutdown,
    Fatal(Error),
}

/// A cloneable handle to a [`Runner`]: asks it to shut down, or reports a fatal error that stops
/// the whole program. Give one to any service that may need to stop the program.
///
/// Calls after the run has ended do nothing.
#[derive(Clone)]
pub struct RunHandle {
    requests: Sender<Request>,
    shutting_down: StopSignal,
    // Fired (used as a one-shot latch) when every service is ready and the run phase begins.
    running: StopSignal,
    health_addr: Arc<Mutex<Option<SocketAddr>>>,
}

impl RunHandle {
    /// Asks the runner to shut down gracefully, as a signal would. Idempotent.
    pub fn shutdown(&self) {
        self.shutting_down.stop();
        let _ = self.requests.send(Request::Shutdown);
    }

    /// Reports a fatal error: the runner shuts down and the run fails with this error (in the run
    /// phase). Name the service with [`Error::in_service`] so the report says who failed.
    pub fn fatal(&self, error: Error) {
        self.shutting_down.stop();
        let _ = self.requests.send(Request::Fatal(error));
    }

    /// Whether a shutdown has been asked for through any handle, or has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_stopped()
    }

    /// The address the health endpoint listens on, once it has started (useful with port 0).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        *self.health_addr.lock()
    }

    /// Whether the run phase has begun: every service started and became ready. It stays `true`
    /// from then on, through the shutdown.
    pub fn has_run(&self) -> bool {
        self.running.is_stopped()
    }

    /// Waits until the run phase begins (every service ready), a shutdown begins first, or
    /// `timeout` passes; returns whether the run phase has begun. For tests and for code that
    /// must wait for the whole program to be up.
    ///
    /// Returns `false` at once when a shutdown was asked for or began before the run phase (a
    /// start failed, or a signal arrived during start): the run phase will not begin then.
    pub fn wait_running(&self, timeout: Duration) -> bool {
        select! {
            recv(self.running.receiver()) -> _ => {}
            recv(self.shutting_down.receiver()) -> _ => {}
            default(timeout) => {}
        }
        self.running.is_stopped()
    }
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

/// Runs a program's services from `main()` to a clean exit.
///
/// Add services in dependency order, configure timeouts, then call [`run`](Runner::run), which
/// blocks until the program has shut down:
///
/// 1. installs signal handling for SIGINT and SIGTERM (unless [turned off](Runner::handle_signals));
/// 2. starts the services in order, each until its `ready()` is `Ok` (within its start timeout)
///    before the next one starts; if one fails, times out or panics, or a shutdown is asked for
///    meanwhile, the started ones are closed in reverse and the run fails (a shutdown request
///    during start is not a failure: it rolls back cleanly);
/// 3. waits for a signal, a [`RunHandle::shutdown`], or a [`RunHandle::fatal`] error;
/// 4. waits the [termination delay](Runner::termination_delay), then closes the services in
///    reverse order, each within its stop timeout, and runs the cleanups (last added, first run),
///    all within the overall [shutdown timeout](Runner::shutdown_timeout). A start or close that
///    hangs is abandoned and named in the report, never waited on forever.
///
/// A second signal during the shutdown exits the process at once with
/// [`SECOND_SIGNAL_EXIT_CODE`](crate::SECOND_SIGNAL_EXIT_CODE).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lifecycle::{Runner, Service};
/// # use lifecycle::{HealthReporter, Result, StartContext, StateMachine};
/// # #[derive(Default)] struct Db(StateMachine);
/// # impl HealthReporter for Db { fn name(&self) -> &str { "db" } fn ready(&self) -> Result<()> { self.0.ready() } }
/// # impl Service for Db {
/// #     fn start(&self, _: &StartContext) -> Result<()> { self.0.start_once("db", || Ok(())) }
/// #     fn close(&self) -> Result<()> { self.0.stop_once("db", || Ok(())) }
/// # }
///
/// let runner = Runner::new()
///     .handle_signals(false) // a test: no process-wide signal handler
///     .stop_timeout(Duration::from_secs(5))
///     .service(Arc::new(Db::default()));
/// let handle = runner.handle();
/// handle.shutdown(); // normally a signal, or a service, asks for this
/// let report = runner.run();
/// assert!(report.is_success());
/// ```
pub struct Runner {
    entries: Vec<Entry>,
    cleanups: Vec<(String, CleanupFn)>,
    start_timeout: Duration,
    stop_timeout: Duration,
    shutdown_timeout: Duration,
    termination_delay: Duration,
    handle_signals: bool,
    requests: Receiver<Request>,
    handle: RunHandle,
    checker: Option<Arc<HealthChecker>>,
    endpoint: Option<(SocketAddr, EndpointOptions)>,
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new()
    }
}

impl Runner {
    /// A runner with no services, the default timeouts, no termination delay, and signal
    /// handling on.
    pub fn new() -> Runner {
        let (tx, rx) = crossbeam_channel::unbounded();
        Runner {
            entries: Vec::new(),
            cleanups: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            termination_delay: Duration::ZERO,
            handle_signals: true,
            requests: rx,
            handle: RunHandle {
                requests: tx,
                shutting_down: StopSignal::new(),
                running: StopSignal::new(),
                health_addr: Arc::new(Mutex::new(None)),
            },
            checker: None,
            endpoint: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Adds a service, started after the ones added before it and closed before them.
    pub fn service(self, service: Arc<dyn Service>) -> Runner {
        self.service_with(service, ServiceOptions::new())
    }

    /// Adds a service with timeouts of its own.
    pub fn service_with(mut self, service: Arc<dyn Service>, options: ServiceOptions) -> Runner {
        self.entries.push(Entry { service, options });
        self
    }

    /// Adds several services, in order.
    pub fn services(mut self, services: impl IntoIterator<Item = Arc<dyn Service>>) -> Runner {
        for service in services {
            self = self.service(service);
        }
        self
    }

    /// Adds a cleanup function, run once after every service has closed (the last added runs
    /// first), within the shutdown timeout. It runs whether the run succeeded or not, as long as
    /// the start phase was reached.
    pub fn cleanup(
        mut self,
        name: impl Into<String>,
        cleanup: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Runner {
        self.cleanups.push((name.into(), Box::new(cleanup)));
        self
    }

    /// How long each service may take to start and become ready (default
    /// [`DEFAULT_START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Runner {
        self.start_timeout = timeout;
        self
    }

    /// How long each service may take to close (default [`DEFAULT_STOP_TIMEOUT`]).
    pub fn stop_timeout(mut self, timeout: Duration) -> Runner {
        self.stop_timeout = timeout;
        self
    }

    /// The bound on the whole shutdown, from the moment it is asked for until `run` returns: the
    /// termination delay, every close and every cleanup (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Runner {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long to keep serving after a shutdown is asked for, with readiness already failing,
    /// before closing anything (default zero).
    ///
    /// Under Kubernetes the pod is removed from the service's endpoints at the same time as it is
    /// sent SIGTERM, and load balancers take a few seconds to notice; a delay of about 5 s keeps
    /// in-flight and late requests served.
    pub fn termination_delay(mut self, delay: Duration) -> Runner {
        self.termination_delay = delay;
        self
    }

    /// Whether `run` handles SIGINT and SIGTERM (default `true`). Turn it off in tests, and where
    /// the program handles signals itself (then call [`RunHandle::shutdown`] from its handler).
    pub fn handle_signals(mut self, on: bool) -> Runner {
        self.handle_signals = on;
        self
    }

    /// Reports health through `checker`: every service is registered with it, together with a
    /// check named `runner` that is ready only in the run phase. The runner starts the checker
    /// before any service and closes it last.
    ///
    /// Create it with your program's version and git sha, which the endpoint reports, and keep a
    /// clone to [subscribe](HealthChecker::subscribe) to health changes.
    pub fn health(mut self, checker: Arc<HealthChecker>) -> Runner {
        self.checker = Some(checker);
        self
    }

    /// Serves health on `addr` with a [`HealthEndpoint`](crate::HealthEndpoint), started before
    /// any service (answering not-ready until every service is ready) and closed last. Uses the
    /// checker given to [`health`](Runner::health), or one with version and sha `unknown`.
    pub fn health_endpoint(self, addr: SocketAddr) -> Runner {
        self.health_endpoint_with(addr, EndpointOptions::new())
    }

    /// Like [`health_endpoint`](Runner::health_endpoint), with options.
    pub fn health_endpoint_with(mut self, addr: SocketAddr, options: EndpointOptions) -> Runner {
        self.endpoint = Some((addr, options));
        self
    }

    /// Exposes `metrics` at `/metrics` on the health endpoint (see
    /// [`health_endpoint`](Runner::health_endpoint)), with each service's lifecycle state and
    /// start and stop durations, and the health checker's metrics (see the
    /// [`metrics`](crate::metrics) module for the list). Keep a clone to register the program's
    /// own metrics and producers.
    ///
    /// ```no_run
    /// use lifecycle::metrics::{prometheus_client::metrics::counter::Counter, Metrics};
    /// use lifecycle::{RunReport, Runner};
    ///
    /// fn main() -> RunReport {
    ///     let metrics = Metrics::new();
    ///     let jobs: Counter = Counter::default();
    ///     metrics
    ///         .register("jobs", "Jobs done", jobs.clone())
    ///         .expect("a valid, unique name");
    ///     Runner::new()
    ///         .health_endpoint("127.0.0.1:8001".parse().unwrap())
    ///         .metrics(metrics)
    ///         .run()
    /// }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: Metrics) -> Runner {
        self.metrics = Some(metrics);
        self
    }

    /// A handle to ask this runner to shut down or to report a fatal error.
    pub fn handle(&self) -> RunHandle {
        self.handle.clone()
    }

    /// Runs the program: starts every service, waits for the end, shuts down. Blocks until done.
    ///
    /// Never panics because of a service: panics in services become errors in the report.
    /// Services must have distinct names: two of one name are refused before anything starts,
    /// with an error of kind [`ErrorKind::DuplicateName`](crate::ErrorKind::DuplicateName) in
    /// the report's start phase.
    pub fn run(self) -> RunReport {
        Run::new(self).execute()
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field(
                "services",
                &self
                    .entries
                    .iter()
                    .map(|e| e.service.name())
                    .collect::<Vec<_>>(),
            )
            .field("cleanups", &self.cleanups.len())
            .field("start_timeout", &self.start_timeout)
            .field("stop_timeout", &self.stop_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("termination_delay", &self.termination_delay)
            .field("handle_signals", &self.handle_signals)
            .field("health", &self.checker.is_some())
            .field("endpoint", &self.endpoint.as_ref().map(|(addr, _)| addr))
            .finish_non_exhaustive()
    }
}

/// What a service's start thread reports back.
struct StartOutcome {
    /// Whether `start` returned `Ok` (the service then needs closing, ready or not).
    started: bool,
    result: Result<()>,
}

/// The state of one call to [`Runner::run`].
struct Run {
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

impl Run {
    fn new(runner: Runner) -> Run {
        // Two services of one name would make the report, the health checks and the metrics
        // ambiguous: refuse to run them, before any signal route is claimed.
        let mut names = std::collections::HashSet::new();
        let duplicate = runner
            .entries
            .iter()
            .map(|e| e.service.name())
            .find(|name| !names.insert(*name))
            .map(|name| Error::registration(ErrorKind::DuplicateName, name));
        let (route, setup_error) = match duplicate {
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
                (State::Stopped | State::StopFailed, Some(took)) => table.stopped_in(index, took),
                _ => {}
            }
        }
    }

    fn execute(mut self) -> RunReport {
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
            .stop_timeout
            .unwrap_or(self.runner.stop_timeout);
        log::info!("{name}: starting");
        self.mark(index, State::Starting, None);
        let began = Instant::now();

        let stop = cancel.clone();
        let pending = match Pending::spawn(format!("start {name}"), move || {
            start_until_ready(&*service, StartContext::new(stop, Some(timeout)))
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
        let give_up = crossbeam_channel::at(began + timeout + grace);
        let mut interrupted = None;
        let outcome = select! {
            recv(pending.receiver()) -> outcome => {
                pending.finish();
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
                // counts as stopped, one that did is closed like the others.
                let state = match (interrupted.is_some(), started) {
                    (true, false) => State::Stopped,
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
        pending: Pending<StartOutcome>,
        cancel: &StopSignal,
        grace: Duration,
    ) -> Option<StartOutcome> {
        cancel.stop();
        match pending.wait_until(Instant::now() + grace) {
            Ok(outcome) => Some(outcome),
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
        let deadline = Instant::now() + self.runner.shutdown_timeout;
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
                self.close_bounded(service, self.runner.stop_timeout, deadline);
            }
        }
    }

    fn close_one(&mut self, index: usize, deadline: Instant) {
        let entry = &self.runner.entries[index];
        let service = entry.service.clone();
        let timeout = entry
            .options
            .stop_timeout
            .unwrap_or(self.runner.stop_timeout);
        self.mark(index, State::Stopping, None);
        let errors_before = self.shutdown_errors.len();
        let took = self.close_bounded(service, timeout, deadline);
        if let Some(took) = took {
            self.reports[index].closed = true;
            self.reports[index].closed_in = Some(took);
        }
        let state = if took.is_some() && self.shutdown_errors.len() == errors_before {
            State::Stopped
        } else {
            State::StopFailed
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
        log::info!("{name}: stopping");
        let began = Instant::now();
        let outcome = Pending::spawn(format!("close {name}"), move || close_guarded(&*service))
            .map_err(|e| Error::from(e).in_service(&name, Phase::Close))
            .map(|pending| pending.wait_until(began + bound));
        match outcome {
            Ok(Ok(result)) => {
                let took = began.elapsed();
                match result {
                    Ok(()) => log::info!("{name}: stopped in {took:?}"),
                    Err(e) => {
                        log::error!("{e}");
                        self.shutdown_errors.push(e);
                    }
                }
                Some(took)
            }
            Ok(Err(pending)) => {
                let e = Error::timed_out(&name, Phase::Close, bound);
                log::error!("{e}; abandoning its close, which did not return");
                self.abandoned.push(pending.abandon());
                self.shutdown_errors.push(e);
                None
            }
            Err(e) => {
                log::error!("{e}");
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
        let thread_name = format!("cleanup {name}");
        let label = name.clone();
        let outcome = Pending::spawn(thread_name, move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cleanup));
            crate::error::flatten_call(&label, Phase::Cleanup, outcome)
        })
        .map_err(|e| Error::from(e).in_service(&name, Phase::Cleanup))
        .map(|pending| pending.wait_until(Instant::now() + remaining));
        let error = match outcome {
            Ok(Ok(Ok(()))) => {
                log::info!("cleanup {name}: done");
                None
            }
            Ok(Ok(Err(e))) | Err(e) => Some(e),
            Ok(Err(pending)) => {
                self.abandoned.push(pending.abandon());
                Some(Error::timed_out(&name, Phase::Cleanup, remaining))
            }
        };
        if let Some(e) = error {
            log::error!("{e}");
            self.shutdown_errors.push(e);
        }
    }

    fn finish(mut self, cause: ShutdownCause, durations: [Duration; 3]) -> RunReport {
        // Threads abandoned earlier may have ended since: join those.
        let mut still_running = Vec::new();
        for a in std::mem::take(&mut self.abandoned) {
            if let Err(a) = a.try_join() {
                log::warn!(
                    "thread {:?} is still running user code; leaving it",
                    a.thread_name
                );
                still_running.push(a.thread_name);
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
            None => log::info!("stopped cleanly ({})", report.cause),
            Some(e) => log::error!("stopped with {} error(s): {e}", e.errors().len()),
        }
        report
    }
}

/// Runs on a service's start thread: starts it, then waits until it is ready, the context's
/// deadline passes, or the start is cancelled.
fn start_until_ready(service: &dyn Service, ctx: StartContext) -> StartOutcome {
    let name = service.name();
    if let Err(e) = start_guarded(service, &ctx) {
        return StartOutcome {
            started: false,
            result: Err(e),
        };
    }
    let mut backoff = Duration::from_micros(100);
    loop {
        let last = match ready_guarded(service) {
            Ok(()) => {
                return StartOutcome {
                    started: true,
                    result: Ok(()),
                }
            }
            Err(e) => e,
        };
        if ctx.wait_timeout(backoff) {
            let gave_up = ctx
                .check(name)
                .err()
                .unwrap_or_else(|| Error::cancelled(name, Phase::Start));
            return StartOutcome {
                started: true,
                result: Err(Error::join([gave_up, last]).expect("two errors")),
            };
        }
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

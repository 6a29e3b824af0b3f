//! [`Runner`]: the main job, from `main()` to a clean exit.
//!
//! - `mod.rs` (this file): the builder, [`Runner`].
//! - `options.rs`: [`ServiceOptions`], one service's timeouts, needs and restart policy.
//! - `handle.rs`: [`RunHandle`], what services hold to ask for a shutdown (or, an instance's,
//!   to report that it failed).
//! - `run.rs`: one run, each call into a service a named call with a bound, on the run's
//!   [pool](crate::pool) of reused threads:
//!   `run/start.rs` its start (each service once those it needs are ready), `run/close.rs` the
//!   services' closes (each after those that need it), `run/shutdown.rs` the rest of its
//!   shutdown, report and summary.
//! - `graph.rs`: who needs whom among the services, checked before anything starts.
//! - `budget.rs`: how the steps of a shutdown share its deadline.
//! - `health.rs`: the runner's checker, endpoint and `runner` check, and each service's check,
//!   which says what a service not started yet waits for.
//! - `table.rs`: the services' states and durations in atomics, written as they change, read
//!   by their checks and the metrics.
//! - `report.rs`: [`RunReport`].
//! - `signals.rs`: the process-wide signal handler, routed to the runner that runs now.
//! - `notify.rs`: what the run tells systemd (its phase, `READY=1`, `STOPPING=1`, extended
//!   timeouts); `watchdog.rs`: the thread that sends `WATCHDOG=1` while liveness passes (see
//!   [systemd](Runner#systemd)).

mod budget;
mod graph;
mod handle;
mod health;
mod notify;
mod options;
mod pid_file;
mod report;
mod run;
#[cfg(unix)]
mod signals;
pub(crate) mod table;
mod upgrade;
mod watchdog;

/// Without Unix signals: a runner that handles signals is refused, with an error that says
/// what to do instead.
#[cfg(not(unix))]
mod signals {
    use crossbeam_channel::Receiver;

    use crate::error::Error;

    pub(crate) fn signal_name(_: i32) -> &'static str {
        "a signal"
    }

    #[derive(Debug)]
    pub(crate) struct SignalRoute {
        events: Receiver<i32>,
        upgrades: Receiver<()>,
    }

    impl SignalRoute {
        pub(crate) fn claim(_upgrades: bool) -> Result<SignalRoute, Error> {
            Err(Error::msg(
                "signal handling needs a Unix platform: turn it off with \
                 Runner::handle_signals(false) and call RunHandle::shutdown from your own handler",
            ))
        }

        pub(crate) fn events(&self) -> &Receiver<i32> {
            &self.events
        }

        pub(crate) fn upgrades(&self) -> &Receiver<()> {
            &self.upgrades
        }

        pub(crate) fn open_upgrades(&self, _open: bool) {}
    }
}

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::checker::HealthChecker;
use crate::endpoint::EndpointOptions;
use crate::error::Result;
#[cfg(feature = "metrics")]
use crate::metrics::Metrics;
use crate::service::{share, Service};
use crate::stop::StopSignal;
use crate::supervise::Window;

use self::handle::Request;
pub use self::handle::RunHandle;
pub use self::options::ServiceOptions;
pub use self::report::{PathStep, RunPhase, RunReport, ServiceReport, ShutdownCause};

/// How long a service may take to start and become ready, unless set otherwise.
pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to close, unless set otherwise.
pub(crate) const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole shutdown (drain, closes, cleanups) may take, unless set otherwise: under
/// Kubernetes' default 30 s grace period, so the runner finishes before the kubelet's SIGKILL.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// How long after its start timeout a start that has not returned is abandoned: the time a
/// start that honours its [`StartContext`](crate::StartContext) deadline has to return.
pub(crate) const START_GRACE: Duration = Duration::from_secs(1);

/// A restartable service's factory, as the runner keeps it.
pub(crate) type Factory = Arc<dyn Fn() -> Arc<dyn Service> + Send + Sync>;

struct Entry {
    /// The service, or for a restartable one its current instance.
    service: Arc<dyn Service>,
    options: ServiceOptions,
    /// A restartable service's factory.
    factory: Option<Factory>,
}

type CleanupFn = Box<dyn FnOnce() -> Result<()> + Send + 'static>;

/// Runs a program's services from `main()` to a clean exit.
///
/// Add services (each needs the ones added before it unless it [declares its
/// needs](#dependencies)), configure timeouts, then call [`run`](Runner::run), which blocks
/// until the program has shut down:
///
/// 1. handles SIGINT and SIGTERM (unless [turned off](Runner::handle_signals); see
///    [Signals](#signals));
/// 2. starts each service as soon as every service it needs is ready, each on a thread of its
///    own until its `ready()` is `Ok` (within its start timeout; a start that has not returned
///    [`START_GRACE`](#hung-starts) after it is abandoned), so independent services start at
///    the same time; if one fails, times out or panics, or a shutdown is asked for meanwhile,
///    every start in progress is cancelled, nothing more starts (the services that need a
///    failed one are [skipped because of it](ServiceReport::skipped_because)), the started ones
///    are closed as in a shutdown and the run fails (a shutdown request during start is not a
///    failure: it rolls back cleanly);
/// 3. waits for a signal, a [`RunHandle::shutdown`], or a [`RunHandle::fatal`] error;
/// 4. waits the [termination delay](Runner::termination_delay), then closes each service once
///    every service that needs it has closed (independent ones at the same time), each within
///    its close timeout, and runs the cleanups (last added, first run),
///    all within the overall [shutdown timeout](Runner::shutdown_timeout), shared as
///    [below](#how-the-shutdown-timeout-is-shared). A start or close that hangs is abandoned
///    and named in the report, never waited on forever.
/// 5. logs a summary: a line for the run, then one per service with its final state, how long
///    its close took, and its errors.
///
/// Any `Duration` is accepted by every timeout and delay (`Duration::MAX` waits about a
/// century); the one combination that cannot work, a [termination
/// delay](Runner::termination_delay) of more than half the shutdown timeout, is refused when
/// the run begins, before anything starts.
///
/// # Dependencies
///
/// A service *needs* other services: it starts only once every one of them is ready, and it
/// closes before any of them closes. The rule is the list order unless a service says
/// otherwise:
///
/// - a service added with no needs declared needs **every service added before it** (so a
///   program that declares nothing starts its services one after the other, in order, and
///   closes them in reverse, exactly as a list would);
/// - [`ServiceOptions::needs`] names exactly the services it needs (added before or after it);
/// - [`ServiceOptions::independent`] needs nothing.
///
/// Services whose needs are ready start at the same time, each on its own `start NAME` thread
/// with its own start timeout; services that no started service needs any more close at the
/// same time. A name that is not a service of the runner, or needs that form a cycle, are
/// refused when the run begins, with an error of kind
/// [`InvalidInput`](crate::ErrorKind::InvalidInput) that names it (a cycle in full: `a -> b ->
/// a`), and nothing starts. When a start fails, the services that need it, directly or not,
/// are never started: their [`ServiceReport::skipped_because`] names it.
///
/// With health on, a service's check says, until the service has started, why it is not ready:
/// `waiting for db, cache` (the services it needs that are not ready yet, in the order it
/// declared them), `starting` (its start is in progress), `not started: it needs db, which
/// failed to start`, `not started: its start failed`, or `not started: shutting down`; so
/// `/readyz?verbose` shows `[-]api failed: api: ready failed: waiting for db`. From its start
/// on, the check is the service's own `ready()` and `health_report()`.
///
/// A start or a close that hangs past its bound is abandoned, and the order is then kept as far
/// as it can be: a service whose dependant's close was abandoned (or whose dependant's start,
/// cancelled, did not return) is closed all the same, since the shutdown must go on. A start
/// abandoned that way and returning later leaves its service running until the process ends;
/// its thread is named in [`RunReport::abandoned_threads`].
///
/// ```
/// use lifecycle::{Runner, ServiceOptions, Worker};
///
/// let idle = |name: &str| Worker::new(name, |stop| { stop.wait(); Ok(()) });
/// let runner = Runner::new()
///     .handle_signals(false)
///     // Needs nothing (it is first).
///     .service(idle("db"))
///     // Needs db: declares nothing, so it needs every service added before it.
///     .service(idle("repository"))
///     // Starts at once, alongside db; closes at once, alongside api.
///     .service_with(idle("metrics exporter"), ServiceOptions::new().independent())
///     // Starts once repository is ready; closes first.
///     .service_with(idle("api"), ServiceOptions::new().needs(["repository"]));
/// let handle = runner.handle();
/// handle.shutdown();
/// assert!(runner.run().is_success());
/// ```
///
/// # How the shutdown timeout is shared
///
/// The shutdown timeout runs from the moment a shutdown is asked for until `run` returns. The
/// termination delay comes first (at most half of it). Then the steps run: the services'
/// closes (each once the services that need it have closed, independent ones at the same
/// time), then the cleanups (last added first), the health endpoint, then the checker, one
/// after the other. Each step has a *chain*: the longest run of steps that must follow it one
/// after the other (for a service, the services it needs, transitively, then the cleanups and
/// the runner's own steps). When they begin, each step is *guaranteed* the smaller of its own
/// timeout (a service's close timeout; none for a cleanup; 2 s, or the close timeout if
/// shorter, for the endpoint and the checker, whose closes take milliseconds) and an equal
/// share of the time left, shared by the steps of the longest chain of all (with nothing
/// declared, every step: closes then run one after the other). A step may run until its own
/// timeout, but never into the time guaranteed to the chain after it; closes that run at the
/// same time take nothing from each other. So when every close is quick none is cut short, and
/// when one hangs it is abandoned (its error says it was cut short) in time for every step
/// after it to have at least its guaranteed time, so the endpoint and the checker always
/// close.
///
/// # Restarts
///
/// A service added with [`restartable`](Runner::restartable) and a restart policy
/// ([`ServiceOptions::restart_on_failure`], [`ServiceOptions::restart_always`]) is restarted
/// when an instance fails while the program runs, instead of shutting the program down; the
/// services that need it keep running, not ready meanwhile. A restart:
///
/// 1. closes the failed instance (a call `close NAME` on the run's pool, within its close
///    timeout; one that hangs is abandoned and named in the report);
/// 2. waits its backoff (see [`ServiceOptions::restart_backoff`]), counted from the failure;
/// 3. builds a fresh instance with the factory and starts it as the start phase would (a call
///    `start NAME`, within its start timeout), until it is ready. A start that fails is a
///    failure of its own, restarted in turn.
///
/// With [`ServiceOptions::restart_dependants`] (OTP's rest_for_one), the restartable services
/// that need it restart along: closed before it, started after it, counted once in the budget.
/// A fresh instance starts only once every service it needs, directly or not, is up again.
///
/// Meanwhile its check says `restarting (attempt 3, next in 2.1s)` (or `closing`, `starting`),
/// and the check of each service that needs it, directly or not, `waiting for db
/// (restarting)`; `/metrics` counts `lifecycle_service_restarts_total{service}`;
/// [`ServiceReport::restarts`] lists each restart with its cause, and each is logged.
/// Nothing else waits: the runner thread only ever waits on one `select` over the signals,
/// the handles' requests, the calls in progress and the earliest timer, so a signal or a
/// [`RunHandle::shutdown`] during a backoff begins the shutdown at once. No restart begins once
/// a shutdown has: a close in progress is waited for (within its bound, and at most half the
/// shutdown timeout), a start in progress is cancelled as in the start phase, and what is up
/// is closed as usual.
///
/// The restarts of every service share one budget, [`restart_budget`](Runner::restart_budget):
/// at most 10 restarts in any 60 s by default. OTP's advice on tuning a supervisor's intensity
/// and period is to pick the intensity as the largest burst worth tolerating if it ends in a
/// successful restart ("5 or 10 attempts, even within the same second"), and the period so
/// that the sustained rate it still allows is one you can live with for days (its example: 5
/// in 30 s, at most a restart every 6 s). 10 in 60 s tolerates a burst of 10 and sustains at
/// most one restart every 6 s; with the default backoff (100 ms doubling to 5 s) a service
/// that fails at once on every start spends it in 21 to 27 s. (OTP's own default, 1 in 5 s,
/// suits deep supervision trees, where every level multiplies the restarts; here there is one
/// level, and the program's own supervisor, systemd or Kubernetes, is the next. suture v4
/// tolerates 5 failures whose count decays over 30 s, then pauses 15 s and starts over, never
/// giving up; giving up, as OTP does, hands the decision to that next supervisor, which sees
/// the exit code.)
///
/// The restart past the budget is refused: the program shuts down gracefully, with
/// [`ShutdownCause::RestartBudgetSpent`] and the exit code
/// [`RESTART_BUDGET_EXIT_CODE`](Runner::RESTART_BUDGET_EXIT_CODE) (75).
///
/// # Hung starts
///
/// A start runs with a [`StartContext`](crate::StartContext) whose deadline is its start
/// timeout; a start that ignores it and has not returned one second (`START_GRACE`) after the
/// timeout is abandoned (its thread is left running, named in the report), and its error says
/// both: `db: start timed out after 60s, abandoned 1s later: its start did not return`.
///
/// # Signals
///
/// | signal | what the runner does |
/// | --- | --- |
/// | SIGINT, SIGTERM | a graceful shutdown; a second one during it exits at once with [`SECOND_SIGNAL_EXIT_CODE`](Runner::SECOND_SIGNAL_EXIT_CODE) |
/// | SIGINT or SIGTERM the process inherited as ignored | stays ignored (a background job of a non-interactive shell starts with SIGINT ignored) |
/// | SIGHUP, with [upgrades on](Runner::upgrade_on_sighup) | in the run phase, an [upgrade](#upgrades); during the start or the shutdown, or while an upgrade is in progress, refused with a log line |
/// | SIGHUP, with upgrades off (the default) | not handled: it keeps its inherited disposition (by default it ends the process at once, without a shutdown; under `nohup` it is ignored) |
/// | SIGQUIT and the others | not handled: their defaults (SIGQUIT dumps core, as an operator asks it to) |
///
/// The handlers are installed (with `signal-hook`) the first time a runner handles signals and
/// stay for the life of the process; with no runner running, SIGINT and SIGTERM do what they
/// would do without a handler. One runner handles signals at a time. The second-signal exit
/// never waits on a lock or the log sink: its log line is given 100 ms, then the process ends
/// with `_exit`.
///
#[doc = include_str!("docs/upgrades.md")]
///
#[doc = include_str!("docs/systemd.md")]
///
/// # Logging
///
/// The runner, and the whole library, log through the `log` crate without ever waiting on the
/// program's logger: lines are queued (1024 at most; more are dropped and counted, and the
/// count is logged once the sink takes lines again) and written by a thread of the library's,
/// `lifecycle log`, which runs only while there are lines. So a log sink stuck on a full pipe
/// blocks no probe, no start, no shutdown and no signal. `run` waits for its last lines to be
/// written before it returns: at most 1 s, and no longer than what is left of the shutdown
/// timeout (10 ms at least).
/// ```
/// use std::time::Duration;
/// use lifecycle::{Runner, Worker};
///
/// let runner = Runner::new()
///     .handle_signals(false) // a test: no process-wide signal handler
///     .close_timeout(Duration::from_secs(5))
///     .service(Worker::new("db", |stop| { stop.wait(); Ok(()) }));
/// let handle = runner.handle();
/// handle.shutdown(); // normally a signal, or a service, asks for this
/// let report = runner.run();
/// assert!(report.is_success());
/// ```
pub struct Runner {
    entries: Vec<Entry>,
    cleanups: Vec<(String, CleanupFn)>,
    start_timeout: Duration,
    close_timeout: Duration,
    shutdown_timeout: Duration,
    termination_delay: Duration,
    handle_signals: bool,
    requests: Receiver<Request>,
    handle: RunHandle,
    checker: Option<Arc<HealthChecker>>,
    endpoint: Option<(SocketAddr, EndpointOptions)>,
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
    /// The restart budget of the restartable services.
    budget: Window,
    /// Errors of the builder (a factory that panicked), refused when the run begins.
    refused: Vec<crate::error::Error>,
    /// Upgrades: on SIGHUP or not, their timeout, the PID file.
    upgrade: upgrade::UpgradeSettings,
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
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            termination_delay: Duration::ZERO,
            handle_signals: true,
            requests: rx,
            handle: RunHandle {
                requests: tx,
                shutting_down: StopSignal::new(),
                running: StopSignal::new(),
                health_addr: Arc::new(Mutex::new(None)),
                scope: None,
            },
            checker: None,
            endpoint: None,
            #[cfg(feature = "metrics")]
            metrics: None,
            budget: Window::default(),
            refused: Vec::new(),
            upgrade: upgrade::UpgradeSettings::default(),
        }
    }

    /// Adds a service that needs the ones added before it (started after them, closed before
    /// them; see [Dependencies](#dependencies)): a
    /// [`Worker`](crate::Worker), your own [`Service`], or a shared one (`Arc<MyService>`, kept
    /// to be used by other services; `Arc<dyn Service>`).
    ///
    /// Names are checked when the run begins: an empty name, one with control characters, two
    /// services of one name, or, with health on, a service called `runner` or `health checker`
    /// (the names of the runner's own checks), and nothing starts (see [`run`](Runner::run)).
    pub fn service(self, service: impl Service + 'static) -> Runner {
        self.service_with(service, ServiceOptions::new())
    }

    /// Adds a service with timeouts of its own, or needs of its own (see
    /// [Dependencies](#dependencies)).
    pub fn service_with(
        mut self,
        service: impl Service + 'static,
        options: ServiceOptions,
    ) -> Runner {
        self.entries.push(Entry {
            service: share(service),
            options,
            factory: None,
        });
        self
    }

    /// Adds several services, in order.
    pub fn services<S: Service + 'static>(
        mut self,
        services: impl IntoIterator<Item = S>,
    ) -> Runner {
        for service in services {
            self = self.service(service);
        }
        self
    }

    /// Adds a cleanup function, run once after every service has closed (the last added runs
    /// first), within the shutdown timeout, on a thread `cleanup NAME`. It runs whether the run
    /// succeeded or not, as long as the start phase was reached. Its name follows the rule of
    /// service names (not empty, no control characters), checked when the run begins.
    pub fn cleanup(
        mut self,
        name: impl Into<String>,
        cleanup: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Runner {
        self.cleanups.push((name.into(), Box::new(cleanup)));
        self
    }

    /// How long each service may take to start and become ready (default 60 s). A start that
    /// has not returned one second after it is abandoned (see [Hung starts](#hung-starts)).
    pub fn start_timeout(mut self, timeout: Duration) -> Runner {
        self.start_timeout = timeout;
        self
    }

    /// How long each service may take to close (default 10 s), within the shutdown's budget:
    /// when the close timeouts of the services (and the runner's own steps) add up to more than
    /// the shutdown timeout, a close that runs long may be cut short at what is left once the
    /// later steps have their guaranteed share, which can be as little as an equal share of the
    /// shutdown timeout (see [How the shutdown timeout is
    /// shared](#how-the-shutdown-timeout-is-shared)).
    pub fn close_timeout(mut self, timeout: Duration) -> Runner {
        self.close_timeout = timeout;
        self
    }

    /// The bound on the whole shutdown, from the moment it is asked for until `run` returns: the
    /// termination delay, every close and every cleanup (default 25 s: under Kubernetes' default
    /// grace period of 30 s, so the runner is done before the kubelet's SIGKILL).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Runner {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long to keep serving after a shutdown is asked for, with readiness already failing,
    /// before closing anything (default zero). At most half the [shutdown
    /// timeout](Runner::shutdown_timeout), so that the closes have the rest: a longer delay is
    /// refused when the run begins, with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) naming both, and nothing starts.
    ///
    /// Under Kubernetes the pod is removed from the service's endpoints at the same time as it is
    /// sent SIGTERM, and load balancers take a few seconds to notice; a delay of about 5 s keeps
    /// in-flight and late requests served.
    pub fn termination_delay(mut self, delay: Duration) -> Runner {
        self.termination_delay = delay;
        self
    }

    /// Whether `run` handles SIGINT and SIGTERM (default `true`; see [Signals](#signals)). Turn
    /// it off in tests, and where the program handles signals itself (then call
    /// [`RunHandle::shutdown`] from its handler).
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
    /// start and close durations, and the health checker's metrics (see the
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

    /// The exit code of a process that receives a second SIGINT or SIGTERM while a runner
    /// runs (the first began the shutdown): 130, the shell's code for "terminated by SIGINT"
    /// (128 + 2). SIGINT and SIGTERM are not told apart, so the code is the same for both.
    /// With no runner running, the signals do what they would without a handler.
    pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

    /// Runs the program: starts every service, waits for the end, shuts down. Blocks until done.
    ///
    /// Never panics because of a service: panics in services become errors in the report.
    /// Names are checked before anything starts (and before signals are claimed): an empty name
    /// or one with control characters, a service's or a cleanup's, is refused with an error of
    /// kind [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), two services of one
    /// name (or one named after the runner's own checks, see [`service`](Runner::service)) with
    /// [`ErrorKind::DuplicateName`](crate::ErrorKind::DuplicateName), in the report's start
    /// phase. So are a name that a service [needs](ServiceOptions::needs) that is not one of
    /// the runner's, and needs that form a cycle (see [Dependencies](#dependencies)), with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
    pub fn run(self) -> RunReport {
        run::Run::new(self).execute()
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
            .field("close_timeout", &self.close_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("termination_delay", &self.termination_delay)
            .field("handle_signals", &self.handle_signals)
            .field("health", &self.checker.is_some())
            .field("endpoint", &self.endpoint.as_ref().map(|(addr, _)| addr))
            .finish_non_exhaustive()
    }
}

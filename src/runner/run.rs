//! One run of a [`Runner`]: start, wait, shutdown (`run/shutdown.rs`). Every start and close of
//! a service is a named call on a thread of the run's [pool](crate::pool), so that the runner
//! thread waits for it with a bound and gives up on it (naming it in the report) when it hangs,
//! without spawning a thread per call.

mod close;
mod in_flight;
mod restart;
mod shutdown;
mod start;
#[cfg(target_os = "linux")]
mod upgrade;
#[cfg(target_os = "linux")]
mod upgraded;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::checker::CHECKER_NAME;
use crate::error::{check_name, Error, ErrorKind, Result};
use crate::multi::check_names;
use crate::pool::CallPool;
use crate::relay;
use crate::state::State;
use crate::supervise::{Jitter, Supervisor};
use crate::thread::Abandoned;

use super::graph::{critical_path, Graph};
use super::health::{Instance, RunnerHealth, RUNNER_CHECK, RUN_PHASE_POLL};
use super::notify::Notes;
use super::report::PathStep;
use super::signals::{signal_name, SignalRoute};
use super::table::ServiceTable;
use super::watchdog::Watchdog;
use super::{Request, RunReport, Runner, ServiceReport, ShutdownCause};

/// The state of one call to [`Runner::run`].
pub(super) struct Run {
    runner: Runner,
    signals: Receiver<i32>,
    /// SIGHUP's upgrade requests (never, with upgrades off).
    hangups: Receiver<()>,
    /// The upgrade in progress.
    #[cfg(target_os = "linux")]
    upgrading: Option<upgrade::Upgrading>,
    /// In a process that an upgrade started, until when its run phase waits for readiness to
    /// tell the old process, while it has not yet.
    #[cfg(target_os = "linux")]
    telling: Option<Instant>,
    route: Option<SignalRoute>,
    setup_error: Option<Error>,
    health: Option<RunnerHealth>,
    reports: Vec<ServiceReport>,
    /// Who needs whom (empty when the run could not begin).
    graph: Graph,
    /// For each service, the one it needed that became ready last, so that it could start.
    unblocked_by: Vec<Option<usize>>,
    /// When each service's start began and when it was ready, if it became ready.
    start_spans: Vec<Option<(Instant, Instant)>>,
    /// The critical paths of the start and of the shutdown (see [`RunReport::critical_path`]).
    start_path: Vec<PathStep>,
    shutdown_path: Vec<PathStep>,
    /// The services whose start returned, in the order they did.
    started: Vec<usize>,
    abandoned: Vec<Abandoned>,
    /// The threads the services' starts and closes run on.
    calls: CallPool,
    start_errors: Vec<Error>,
    run_errors: Vec<Error>,
    shutdown_errors: Vec<Error>,
    /// The shutdown's deadline, once it has begun.
    deadline: Option<Instant>,
    /// When readiness was failed for the shutdown before the shutdown itself began (while the
    /// restarts in progress were waited for): that time counts toward the drain.
    drain_began: Option<Instant>,
    /// Each service's state and durations, for the services' checks and the metrics.
    table: Arc<ServiceTable>,
    /// The restartable services' supervision.
    supervisor: Supervisor,
    /// Each service's current instance, as its check asks it.
    instances: Vec<Arc<Instance>>,
    /// The reports of restartable services' instances taken during the start phase, for the
    /// run phase.
    early: Vec<Request>,
    /// For each service restarted on failed health polls, when its latest fresh instance was
    /// ready: a health event from before that is about the instance it replaced.
    ready_again_at: Vec<Option<std::time::SystemTime>>,
    /// The outcomes of the restarts' calls.
    restart_calls: restart::Outcomes,
    /// What the run tells systemd (nothing, when not under it).
    notes: Notes,
    /// The systemd watchdog's thread, while the run has one.
    watchdog: Option<Watchdog>,
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

/// The restart options a runner refuses before anything starts: a policy on a service that is
/// not restartable, a zero backoff, a zero budget window, a liveness restart without health.
fn check_restart_options(runner: &Runner) -> Result<()> {
    let health = runner.checker.is_some() || runner.endpoint.is_some();
    if let Some(e) = runner.refused.first() {
        return Err(e.clone());
    }
    for entry in &runner.entries {
        let name = entry.service.name();
        let restart = &entry.options.restart;
        if entry.factory.is_none() && *restart != Default::default() {
            return Err(Error::invalid_input(
                name,
                "restart options on a service that cannot restart (a closed service never \
                 starts again): add it with Runner::restartable and a factory",
            ));
        }
        if let Err(why) = restart.backoff.check() {
            return Err(Error::invalid_input(name, why));
        }
        if restart.unhealthy_polls.is_some() && (!health || restart.policy == Default::default()) {
            return Err(Error::invalid_input(
                name,
                "restart_on_unhealthy needs a restart policy (restart_on_failure or \
                 restart_always) and the runner's health (Runner::health or \
                 Runner::health_endpoint), whose polls it counts",
            ));
        }
    }
    if runner.entries.iter().any(|e| e.factory.is_some()) {
        if let Err(why) = runner.budget.check() {
            return Err(Error::invalid_input(RUNNER_CHECK, why));
        }
    }
    Ok(())
}

/// The services' needs, checked: a name that is not a service, or a cycle, is refused.
fn service_graph(runner: &Runner) -> Result<Graph> {
    let names: Vec<&str> = runner.entries.iter().map(|e| e.service.name()).collect();
    let declared: Vec<Option<&[String]>> = (runner.entries.iter())
        .map(|e| e.options.needs.as_deref())
        .collect();
    Graph::new(&names, &declared)
}

/// The runner's table of its services, each with the services it needs: as it declared them,
/// or, when it declared nothing, in the order they were added (none when the run could not
/// begin).
fn service_table(runner: &Runner, graph: &Graph) -> ServiceTable {
    ServiceTable::new(runner.entries.iter().enumerate().map(|(i, e)| {
        let mut needs = if i < graph.len() {
            graph.needs(i).to_vec()
        } else {
            Vec::new()
        };
        if e.options.needs.is_none() {
            needs.sort_unstable();
        }
        (e.service.name().to_owned(), needs)
    }))
}

impl Run {
    pub(super) fn new(runner: Runner) -> Run {
        // An invalid name, or two services of one name, would make the report, the health
        // checks and the metrics ambiguous: refuse to run them, before any signal route is
        // claimed.
        let graph = check_restart_options(&runner)
            .and_then(|()| check_runner_names(&runner))
            .and_then(|()| check_runner_timeouts(&runner))
            .and_then(|()| service_graph(&runner));
        let (graph, names) = match graph {
            Ok(graph) => (graph, None),
            Err(e) => (Graph::default(), Some(e)),
        };
        let (route, setup_error) = match names {
            Some(e) => (None, Some(e)),
            None if runner.handle_signals => match SignalRoute::claim(runner.upgrade.on_sighup) {
                Ok(route) => (Some(route), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        let signals = route
            .as_ref()
            .map_or_else(crossbeam_channel::never, |r| r.events().clone());
        let hangups = route
            .as_ref()
            .map_or_else(crossbeam_channel::never, |r| r.upgrades().clone());
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
                skipped_because: None,
                restarts: Vec::new(),
                restart_count: 0,
            })
            .collect();
        let unblocked_by = vec![None; graph.len()];
        let start_spans = vec![None; graph.len()];
        let ready_again_at = vec![None; graph.len()];
        let health = RunnerHealth::new(&runner);
        let table = Arc::new(service_table(&runner, &graph));
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &runner.metrics {
            metrics.watch_services(table.clone());
        }
        let supervisor = Supervisor::new(
            runner.budget.clone(),
            Jitter::random(),
            (runner.entries.iter()).map(|e| {
                let restart = e.factory.as_ref().map(|_| e.options.restart);
                (e.service.name().to_owned(), restart)
            }),
        );
        let instances = (runner.entries.iter())
            .map(|e| Instance::new(e.service.clone()))
            .collect();
        Run {
            runner,
            signals,
            hangups,
            #[cfg(target_os = "linux")]
            upgrading: None,
            #[cfg(target_os = "linux")]
            telling: None,
            route,
            setup_error,
            health,
            reports,
            graph,
            unblocked_by,
            start_spans,
            start_path: Vec::new(),
            shutdown_path: Vec::new(),
            started: Vec::new(),
            abandoned: Vec::new(),
            calls: CallPool::new("lifecycle calls"),
            start_errors: Vec::new(),
            run_errors: Vec::new(),
            shutdown_errors: Vec::new(),
            deadline: None,
            drain_began: None,
            table,
            supervisor,
            instances,
            early: Vec::new(),
            ready_again_at,
            restart_calls: restart::Outcomes::new(),
            notes: Notes::new(),
            watchdog: None,
        }
    }

    /// Records that service `index` is now in `state`, and how long the step that got it there
    /// took, for the services' checks and the metrics.
    fn mark(&mut self, index: usize, state: State, took: Option<Duration>) {
        self.reports[index].state = state;
        let table = &self.table;
        // The duration first: a reader that sees the state sees it too.
        match (state, took) {
            (State::Started, Some(took)) => table.started_in(index, took),
            (State::Closed | State::CloseFailed, Some(took)) => table.closed_in(index, took),
            _ => {}
        }
        table.set_state(index, state);
    }

    /// Writes into the table the services the start phase skipped, and because of whom, for
    /// their checks.
    fn publish_skipped(&self) {
        for (index, report) in self.reports.iter().enumerate() {
            if let Some(cause) = &report.skipped_because {
                self.table.skipped(index, cause);
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
        self.watchdog = Watchdog::start(self.health.as_ref().map(RunnerHealth::checker));
        #[cfg(target_os = "linux")]
        self.prepare_upgrades();

        let start_outcome = match self.start_health() {
            Ok(()) => {
                if let Some(watchdog) = &self.watchdog {
                    watchdog.judge_checker(true);
                }
                let outcome = self.start_all();
                self.publish_skipped();
                if outcome.is_none() {
                    let spans = std::mem::take(&mut self.start_spans);
                    let unblocked_by = std::mem::take(&mut self.unblocked_by);
                    self.start_path = self.critical_path("start", &spans, &unblocked_by);
                }
                outcome.or_else(|| self.write_pid_file())
            }
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
                self.run_phase()
            }
        };
        let run_duration = run_began.elapsed();

        let shutdown_began = Instant::now();
        self.shutdown(&cause, drain);
        let shutdown_duration = shutdown_began.elapsed();
        self.finish(cause, [start_duration, run_duration, shutdown_duration])
    }

    /// The critical path of a phase whose steps ran over `spans`, each begun once
    /// `unblocked_by` ended (see [`critical_path`]), logged at info level as `what`.
    fn critical_path(
        &self,
        what: &str,
        spans: &[Option<(Instant, Instant)>],
        unblocked_by: &[Option<usize>],
    ) -> Vec<PathStep> {
        let chain = critical_path(spans, unblocked_by);
        let origin = spans.iter().flatten().map(|(began, _)| *began).min();
        let (Some(origin), false) = (origin, chain.is_empty()) else {
            return Vec::new();
        };
        let path: Vec<PathStep> = (chain.iter())
            .filter_map(|&i| {
                let (began, ended) = spans[i]?;
                Some(PathStep {
                    name: self.reports[i].name.clone(),
                    began: began.saturating_duration_since(origin),
                    took: ended.saturating_duration_since(began),
                })
            })
            .collect();
        let steps: Vec<String> = path.iter().map(PathStep::to_string).collect();
        relay::info!("critical path of the {what}: {}", steps.join(" -> "));
        path
    }

    /// Takes a pending shutdown request or signal without blocking.
    fn poll_request(&mut self) -> Option<ShutdownCause> {
        if let Ok(signal) = self.signals.try_recv() {
            return Some(self.on_signal(signal));
        }
        while let Ok(r) = self.runner.requests.try_recv() {
            if let Some(cause) = self.take(r) {
                return Some(cause);
            }
        }
        None
    }

    fn on_signal(&self, signal: i32) -> ShutdownCause {
        relay::info!("{}: shutting down gracefully", signal_name(signal));
        ShutdownCause::Signal
    }

    /// A request taken in the start phase: the cause that ends it, if it does. The reports of
    /// restartable services' instances are kept for the run phase, which restarts them (an
    /// instance that fails before it is ready has its start cancelled, and counts as up).
    fn take(&mut self, request: Request) -> Option<ShutdownCause> {
        match request {
            Request::Shutdown => Some(ShutdownCause::Requested),
            Request::Fatal(e) => Some(self.fatal(e)),
            Request::Upgrade => {
                relay::warn!(
                    "RunHandle::upgrade: upgrade refused: the program is starting (an upgrade \
                     begins only in the run phase)"
                );
                None
            }
            early @ (Request::Failed { .. } | Request::Finished { .. }) => {
                self.early.push(early);
                None
            }
        }
    }

    /// Every service is ready: the run phase, until its end (the cause, and whether it was
    /// entered, so that the shutdown drains). With health, the checker polls every check once
    /// first; a signal or a shutdown request that came meanwhile ends the start there, and the
    /// run phase never begins (in the new process of an upgrade given up on, that is the old
    /// one's SIGTERM: it must never accept, nor tell the old one it serves).
    fn run_phase(&mut self) -> (ShutdownCause, bool) {
        if let Some(h) = &self.health {
            // The wait for every check's poll is part of the start, for systemd too.
            let n = self.started.len();
            (self.notes).status(format!("starting: polling health ({n}/{n} ready)"));
            (self.notes).extend_until(crate::thread::later(Instant::now(), RUN_PHASE_POLL));
            h.set_running(true);
            if let Some(cause) = self.poll_request() {
                return (cause, false);
            }
        }
        // Upgrades are taken before anyone is told the run phase begins: a SIGHUP sent once it
        // shows waits for the run phase's loop, never refused.
        if let Some(route) = &self.route {
            route.open_upgrades(true);
        }
        // Before the handle says so: whoever sees the run phase begin knows systemd was told.
        self.notes.ready();
        self.runner.handle.running.stop();
        #[cfg(target_os = "linux")]
        self.begin_telling();
        #[cfg(target_os = "linux")]
        let told = crate::upgrade::parent().is_none();
        #[cfg(not(target_os = "linux"))]
        let told = true;
        if told {
            self.say_upgrades_open();
        }
        (self.wait_for_end(), true)
    }

    /// Writes the PID file, if the runner has one, as the run phase is about to begin: the
    /// cause that ends the start if it cannot.
    fn write_pid_file(&mut self) -> Option<ShutdownCause> {
        // A process that an upgrade started writes it once it has told the old one.
        #[cfg(target_os = "linux")]
        if crate::upgrade::parent().is_some() {
            return None;
        }
        let path = self.runner.upgrade.pid_file.as_ref()?;
        match super::pid_file::write(path) {
            Ok(()) => None,
            Err(e) => {
                relay::error!("{e}");
                self.start_errors.push(e);
                Some(ShutdownCause::StartFailed)
            }
        }
    }

    /// Says, once the run phase takes upgrades and serves (in a process that an upgrade
    /// started, once it has told the old one), that SIGHUP upgrades from now on.
    fn say_upgrades_open(&self) {
        if self.runner.upgrade.on_sighup && self.route.is_some() {
            relay::info!("from now on SIGHUP upgrades the program in place");
        }
    }

    /// An upgrade asked for in the run phase, `by` SIGHUP or the handle: begun (Linux only).
    fn upgrade_asked(&mut self, by: &str) {
        #[cfg(target_os = "linux")]
        self.begin_upgrade(by);
        #[cfg(not(target_os = "linux"))]
        relay::warn!("{by}: upgrade refused: upgrades need Linux");
    }

    /// A fatal error: the program shuts down with it.
    fn fatal(&mut self, e: Error) -> ShutdownCause {
        relay::error!("fatal: {e}");
        self.run_errors.push(e);
        ShutdownCause::Fatal
    }

    /// The handle service `index`'s start gets: its instance's, for a restartable service.
    fn handle_for(&self, index: usize) -> super::RunHandle {
        if self.supervisor.is_restartable(index) {
            let generation = self.supervisor.generation(index);
            self.runner.handle.scoped(index, generation)
        } else {
            self.runner.handle()
        }
    }

    /// Starts the health checker and endpoint, and registers every service, before any service
    /// starts: probes get answers (not ready) from the start.
    fn start_health(&mut self) -> Result<()> {
        let Some(health) = &mut self.health else {
            return Ok(());
        };
        let services: Vec<_> = (self.instances.iter().zip(&self.runner.entries))
            .map(|(instance, e)| (instance.clone(), e.options.restart.unhealthy_polls))
            .collect();
        let shutting_down = self.runner.handle.shutting_down.clone();
        health.start(services, &self.table, shutting_down)?;
        *self.runner.handle.health_addr.lock() = health.local_addr();
        Ok(())
    }
}

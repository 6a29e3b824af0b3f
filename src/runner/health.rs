//! The runner's health: its checker, its endpoint, the `runner` check that is ready only in
//! the run phase, and each service's check, which says what a service not started yet waits
//! for.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::checker::{CheckOptions, HealthChecker, Probe, Reporter};
use crate::endpoint::HealthEndpoint;
use crate::error::{Error, ErrorKind, Phase, Result};
use crate::service::{start_guarded, HealthReport, HealthReporter, Service};
use crate::stop::{StartContext, StopSignal};

use super::table::ServiceTable;
use super::Runner;

/// How long the start of the run phase waits for every check's first poll with every service
/// started (twice the checker's default poll timeout).
pub(super) const RUN_PHASE_POLL: Duration = Duration::from_secs(2);

/// The name of the check that says whether the runner is in its run phase.
pub(crate) const RUNNER_CHECK: &str = "runner";

/// Ready only while the runner is in its run phase; always healthy (a shutdown is not a fault, so
/// liveness is not affected).
struct PhaseCheck {
    running: AtomicBool,
}

impl HealthReporter for PhaseCheck {
    fn name(&self) -> &str {
        RUNNER_CHECK
    }
    fn ready(&self) -> Result<()> {
        if self.running.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::msg(
                "not in the run phase (starting or shutting down)",
            ))
        }
    }
    fn health_report(&self) -> crate::HealthReport {
        crate::HealthReport::single(RUNNER_CHECK, Ok(()))
    }
}

/// The instance of a service that its check asks, shared by the runner (which replaces it when
/// the service restarts) and the check. The lock is held only to clone the `Arc`, never across
/// a call into the service.
pub(super) struct Instance(Mutex<Arc<dyn Service>>);

impl Instance {
    pub(super) fn new(service: Arc<dyn Service>) -> Arc<Instance> {
        Arc::new(Instance(Mutex::new(service)))
    }

    /// The current instance.
    pub(super) fn get(&self) -> Arc<dyn Service> {
        self.0.lock().clone()
    }

    /// From now on, `service` is the one asked.
    pub(super) fn set(&self, service: Arc<dyn Service>) {
        // The old instance is dropped after the lock is released.
        let _old = std::mem::replace(&mut *self.0.lock(), service);
    }
}

/// A service's check, as the runner registers it (under the service's name, with the default
/// options): until the service has started, the runner's [`ServiceTable`] answers, not ready,
/// with why (`waiting for db`, `starting`, `not started: it needs db, which failed to start`);
/// from its start on, the check is the service's own, except while it restarts (`restarting
/// (attempt 3, next in 2.1s)`) or a service it needs does (not ready: `waiting for db
/// (restarting)`). Reading the table takes no lock and calls no user code.
struct ServiceCheck {
    /// The service's current instance, whose own check this is from its start on.
    service: Arc<Instance>,
    /// The runner's table, which answers until then.
    table: Arc<ServiceTable>,
    /// The service's row in `table`.
    index: usize,
    /// Fired once a shutdown is asked for or begins: then nothing more starts.
    shutting_down: StopSignal,
}

impl ServiceCheck {
    /// Why the service is not started, as the error of `phase`'s probe, while the table
    /// answers for it.
    fn not_started(&self, phase: Phase) -> Option<Error> {
        let why = (self.table.restart_status(self.index, Instant::now()))
            .or_else(|| (self.table).not_started(self.index, self.shutting_down.is_stopped()))?;
        let state = self.table.state(self.index);
        let cause = Error::state(ErrorKind::NotStarted, self.name(), phase, state);
        Some(Error::other(NotStarted { why, cause }))
    }
}

/// Why a service is not started, as its check's error: it reads as the reason alone, and its
/// source is an error of kind [`ErrorKind::NotStarted`], so that the checker takes it as a
/// service that has not started (which it does not warn about), as it takes a
/// [`StateMachine`](crate::StateMachine)'s `not started`.
#[derive(Debug)]
struct NotStarted {
    /// The reason, as [`ServiceTable::not_started`] says it.
    why: String,
    /// The service not started, in its state.
    cause: Error,
}

impl fmt::Display for NotStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for NotStarted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

impl HealthReporter for ServiceCheck {
    fn name(&self) -> &str {
        self.table.name(self.index)
    }
    fn ready(&self) -> Result<()> {
        if let Some(e) = self.not_started(Phase::Ready) {
            return Err(e);
        }
        if let Some(need) = self.table.restarting_need(self.index) {
            let why = format!("waiting for {} (restarting)", self.table.name(need));
            let state = self.table.state(self.index);
            let cause = Error::state(ErrorKind::NotStarted, self.name(), Phase::Ready, state);
            return Err(Error::other(NotStarted { why, cause }));
        }
        self.service.get().ready()
    }
    fn health_report(&self) -> HealthReport {
        match self.not_started(Phase::Health) {
            Some(e) => HealthReport::single(self.name(), Err(e)),
            None => self.service.get().health_report(),
        }
    }
}

pub(super) struct RunnerHealth {
    checker: Arc<HealthChecker>,
    endpoint: Option<Arc<HealthEndpoint>>,
    phase: Arc<PhaseCheck>,
    reporter: Option<Reporter>,
    /// The reporters of the services restarted on failed health polls, by index.
    liveness: Vec<Option<Reporter>>,
    started: Vec<Arc<dyn Service>>,
}

impl RunnerHealth {
    /// The runner's health parts, if it was configured with a checker or an endpoint.
    pub(super) fn new(runner: &Runner) -> Option<RunnerHealth> {
        if runner.checker.is_none() && runner.endpoint.is_none() {
            return None;
        }
        let checker = runner
            .checker
            .clone()
            .unwrap_or_else(|| Arc::new(HealthChecker::new("unknown", "unknown")));
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &runner.metrics {
            metrics.watch_checker(checker.clone());
        }
        let endpoint = runner.endpoint.as_ref().map(|(addr, options)| {
            #[allow(unused_mut)]
            let mut options = options.clone();
            #[cfg(feature = "metrics")]
            if let Some(metrics) = &runner.metrics {
                options = options.metrics(metrics.clone());
            }
            Arc::new(HealthEndpoint::with_options(
                *addr,
                checker.clone(),
                options,
            ))
        });
        Some(RunnerHealth {
            checker,
            endpoint,
            phase: Arc::new(PhaseCheck {
                running: AtomicBool::new(false),
            }),
            reporter: None,
            liveness: Vec::new(),
            started: Vec::new(),
        })
    }

    /// Starts the checker, registers the runner's check and every service (each a
    /// [`ServiceCheck`] reading its row of `table`, failing only after its threshold of failed
    /// polls in a row when it has one), then starts the endpoint.
    pub(super) fn start(
        &mut self,
        services: Vec<(Arc<Instance>, Option<u32>)>,
        table: &Arc<ServiceTable>,
        shutting_down: StopSignal,
    ) -> Result<()> {
        let ctx = StartContext::background();
        start_guarded(&*self.checker, &ctx)?;
        self.started.push(self.checker.clone());
        // The runner logs its own phases; the check's changes are logged at debug level.
        let options = CheckOptions::new().quiet().traffic_gate(true);
        self.reporter = Some(self.checker.register_with(self.phase.clone(), options)?);
        for (index, (service, threshold)) in services.into_iter().enumerate() {
            let name = table.name(index).to_owned();
            let check = ServiceCheck {
                service,
                table: table.clone(),
                index,
                shutting_down: shutting_down.clone(),
            };
            let options = match threshold {
                Some(k) => CheckOptions::new().failure_threshold(k),
                None => CheckOptions::new(),
            };
            let reporter = (self.checker)
                .register_with(check, options)
                .map_err(|e| e.in_service(&name, Phase::Start))?;
            self.liveness.push(threshold.map(|_| reporter));
        }
        if let Some(endpoint) = &self.endpoint {
            start_guarded(&**endpoint, &ctx)?;
            self.started.push(endpoint.clone());
        }
        Ok(())
    }

    /// Service `index`'s fresh instance is ready: for a service restarted on failed health
    /// polls, its health is pushed passing, so that its own polls count from there (its check
    /// failed while it restarted, and a check that stays failing sends no event).
    pub(super) fn restarted(&self, index: usize) {
        if let Some(Some(reporter)) = self.liveness.get(index) {
            if let Err(e) = reporter.report(Probe::Health, Ok(())) {
                crate::relay::debug!("cannot report {}'s health: {e}", reporter.name());
            }
        }
    }

    /// The run's health checker.
    pub(super) fn checker(&self) -> Arc<HealthChecker> {
        self.checker.clone()
    }

    /// The runner's health endpoint, if it has one.
    pub(super) fn endpoint(&self) -> Option<&HealthEndpoint> {
        self.endpoint.as_deref()
    }

    /// In a process that an upgrade started: the endpoint starts with accepting paused, so
    /// that the old process alone answers the shared socket until this one is ready.
    pub(super) fn pause_accepting(&self) {
        if let Some(endpoint) = &self.endpoint {
            endpoint.pause_accepting();
        }
    }

    /// The endpoint begins accepting (it was paused).
    pub(super) fn start_accepting(&self) {
        if let Some(endpoint) = &self.endpoint {
            endpoint.start_accepting();
        }
    }

    /// The endpoint stops accepting for good (the new process of an upgrade accepts from its
    /// socket now), and answers the requests of its open connections with `Connection:
    /// close`; then waits, until `deadline` at most, for those connections to close. Whether
    /// they all did.
    pub(super) fn hand_over(&self, deadline: Instant) -> bool {
        let Some(endpoint) = &self.endpoint else {
            return true;
        };
        endpoint.hand_over();
        endpoint.wait_drained(deadline)
    }

    /// Where the endpoint listens, once started.
    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().and_then(|e| e.local_addr())
    }

    /// Marks the runner as in its run phase or not, pushing the change to the checker at once.
    pub(super) fn set_running(&self, running: bool) {
        self.phase.running.store(running, Ordering::SeqCst);
        if let Some(reporter) = &self.reporter {
            if let Err(e) = reporter.report(Probe::Ready, self.phase.ready()) {
                crate::relay::warn!("cannot report the runner's phase: {e}");
            }
        }
        if running {
            // Every service has just been seen ready by the runner: poll them now rather than
            // at the next interval, and wait (bounded) for that poll, so that once the run
            // phase begins (`RunHandle::wait_running` returns) the endpoint's readiness passes.
            // A check that does not answer within the bound is waited for no longer.
            if let Err(e) = self.checker.wait_for_poll(RUN_PHASE_POLL) {
                crate::relay::debug!("the run phase begins before every check's poll: {e}");
            }
        }
    }

    /// What the runner closes last, in order: the endpoint, then the checker.
    pub(super) fn into_services_to_close(mut self) -> Vec<Arc<dyn Service>> {
        self.started.reverse();
        std::mem::take(&mut self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::worker::Worker;

    /// db, then api, which needs db; api's check.
    fn api_check() -> (Arc<ServiceTable>, ServiceCheck) {
        let table = Arc::new(ServiceTable::new([
            ("db".to_owned(), vec![]),
            ("api".to_owned(), vec![0]),
        ]));
        let api = Worker::new("api", |stop| {
            stop.wait();
            Ok(())
        });
        let check = ServiceCheck {
            service: Instance::new(Arc::new(api)),
            table: table.clone(),
            index: 1,
            shutting_down: StopSignal::new(),
        };
        (table, check)
    }

    #[test]
    fn a_check_not_started_reads_as_its_reason_and_is_of_a_service_not_started() {
        let (table, check) = api_check();
        assert_eq!(check.name(), "api");
        let e = check.ready().unwrap_err();
        assert_eq!(e.to_string(), "waiting for db");
        // The checker takes it as a service not started yet, which it does not warn about.
        assert!(e.has_kind(ErrorKind::NotStarted), "{e:?}");
        let report = check.health_report();
        let health = report.get("api").unwrap().as_ref().unwrap_err();
        assert_eq!(health.to_string(), "waiting for db");
        // Started: the service's own answers (this worker was never started by anyone).
        table.set_state(1, State::Started);
        let own = check.ready().unwrap_err();
        assert!(
            own.to_string().contains("not started (state: Unstarted)"),
            "{own}"
        );
    }
}

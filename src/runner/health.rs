//! The runner's health: its checker, its endpoint, and the `runner` check that is ready only in
//! the run phase.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::checker::{CheckOptions, HealthChecker, Probe, Reporter};
use crate::endpoint::HealthEndpoint;
use crate::error::{Error, Phase, Result};
use crate::service::{start_guarded, HealthReporter, Service};
use crate::stop::StartContext;

use super::Runner;

/// How long the start of the run phase waits for every check's first poll with every service
/// started (twice the checker's default poll timeout).
const RUN_PHASE_POLL: Duration = Duration::from_secs(2);

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

pub(super) struct RunnerHealth {
    checker: Arc<HealthChecker>,
    endpoint: Option<Arc<HealthEndpoint>>,
    phase: Arc<PhaseCheck>,
    reporter: Option<Reporter>,
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
            started: Vec::new(),
        })
    }

    /// Starts the checker, registers the runner's check and every service, then starts the
    /// endpoint.
    pub(super) fn start(&mut self, services: Vec<Arc<dyn Service>>) -> Result<()> {
        let ctx = StartContext::background();
        start_guarded(&*self.checker, &ctx)?;
        self.started.push(self.checker.clone());
        // The runner logs its own phases; the check's changes are logged at debug level.
        let options = CheckOptions::new().quiet().traffic_gate(true);
        self.reporter = Some(self.checker.register_with(self.phase.clone(), options)?);
        for service in services {
            let name = service.name().to_owned();
            self.checker
                .register(service)
                .map_err(|e| e.in_service(&name, Phase::Start))?;
        }
        if let Some(endpoint) = &self.endpoint {
            start_guarded(&**endpoint, &ctx)?;
            self.started.push(endpoint.clone());
        }
        Ok(())
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

//! What a run did: [`RunReport`], per phase and per service.

use std::fmt;
use std::io::Write;
use std::process::{ExitCode, Termination};
use std::time::Duration;

use crate::error::{Error, Phase};
use crate::state::State;
use crate::thread::call_within;

/// How long [`RunReport`]'s [`Termination`] waits for its errors to be written.
const STDERR_WRITE: Duration = Duration::from_secs(1);

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownCause {
    /// SIGINT or SIGTERM.
    Signal,
    /// [`RunHandle::shutdown`](crate::RunHandle::shutdown) was called.
    Requested,
    /// A service reported a fatal error through [`RunHandle::fatal`](crate::RunHandle::fatal).
    Fatal,
    /// A service failed to start, timed out starting or panicked; the started ones were rolled
    /// back.
    StartFailed,
    /// A restartable service failed once more than the restart budget allows (see
    /// [`Runner::restart_budget`](crate::Runner::restart_budget)); the run's exit code is
    /// [`RESTART_BUDGET_EXIT_CODE`](crate::Runner::RESTART_BUDGET_EXIT_CODE).
    RestartBudgetSpent,
    /// The program was upgraded in place: the new process `pid`, started with the listening
    /// sockets, was ready, and this one drained and closed (see
    /// [Upgrades](crate::Runner#upgrades)). A success: exit code 0.
    Upgraded {
        /// The new process.
        pid: u32,
    },
}

impl fmt::Display for ShutdownCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownCause::Signal => "signal",
            ShutdownCause::Requested => "shutdown requested",
            ShutdownCause::Fatal => "fatal error",
            ShutdownCause::StartFailed => "start failed",
            ShutdownCause::RestartBudgetSpent => "restart budget spent",
            ShutdownCause::Upgraded { pid } => return write!(f, "upgraded: pid {pid} serves"),
        })
    }
}

/// The three phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunPhase {
    /// Starting the services, each once those it needs are ready, until it is ready.
    Start,
    /// Every service ready, waiting for a signal, a shutdown request or a fatal error.
    Run,
    /// Draining, closing the services (each after those that need it), running cleanups.
    Shutdown,
}

/// What happened to one service during a run.
#[derive(Debug, Clone)]
pub struct ServiceReport {
    pub(crate) name: String,
    pub(crate) state: State,
    pub(crate) ready_in: Option<Duration>,
    pub(crate) closed_in: Option<Duration>,
    pub(crate) started: bool,
    pub(crate) closed: bool,
    pub(crate) skipped_because: Option<String>,
    pub(crate) restarts: Vec<Error>,
    /// How many times it was restarted (all of them, where `restarts` keeps the latest).
    pub(crate) restart_count: u64,
}

impl ServiceReport {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state when the run ended: [`State::Closed`] after a clean close,
    /// [`State::CloseFailed`] when its close failed or did not return in time,
    /// [`State::StartFailed`], or [`State::Unstarted`] for a service the run never started.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether its start returned successfully (it may still have failed to become ready).
    pub fn started(&self) -> bool {
        self.started
    }

    /// How long it took from the call to start until it was ready, if it became ready.
    pub fn ready_in(&self) -> Option<Duration> {
        self.ready_in
    }

    /// Whether its close returned (successfully or not) within its timeout.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// How long its close took, if it returned within its timeout.
    pub fn closed_in(&self) -> Option<Duration> {
        self.closed_in
    }

    /// The service whose failed start kept this one from starting: one it needs, directly or
    /// through others (see [Dependencies](crate::Runner#dependencies)). `None` for a service
    /// that was started, or that was not started for another reason (a shutdown asked for
    /// during the start, or a failure of a service it does not need).
    pub fn skipped_because(&self) -> Option<&str> {
        self.skipped_because.as_deref()
    }

    /// Each restart of a [restartable](crate::Runner::restartable) service, in order, by its
    /// cause: the error its instance failed with (or, restarted always, that it ended); the
    /// latest 256 when there were more (`lifecycle_service_restarts_total` counts them all).
    /// Empty for a service that was never restarted. A restart that recovered is no error of the
    /// run.
    pub fn restarts(&self) -> &[Error] {
        &self.restarts
    }
}

/// One step of a critical path (see [`RunReport::critical_path`]): a service's start (until
/// it was ready) or its close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStep {
    pub(crate) name: String,
    pub(crate) began: Duration,
    pub(crate) took: Duration,
}

impl PathStep {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When its step began, since the first start (or close) of the phase began.
    pub fn began(&self) -> Duration {
        self.began
    }

    /// How long its step took: from the call to start until it was ready, or its close (until
    /// it returned, or was abandoned).
    pub fn took(&self) -> Duration {
        self.took
    }
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} (at {:?})", self.name, self.took, self.began)
    }
}

/// The outcome of [`Runner::run`](crate::Runner::run): why it ended, every error by phase, and
/// what happened to each service.
///
/// It is also what `main` can return: as a [`Termination`] it prints the errors to standard error
/// and exits with [`exit_code`](RunReport::exit_code).
#[derive(Debug)]
pub struct RunReport {
    pub(crate) cause: ShutdownCause,
    pub(crate) services: Vec<ServiceReport>,
    pub(crate) start_errors: Vec<Error>,
    pub(crate) run_errors: Vec<Error>,
    pub(crate) shutdown_errors: Vec<Error>,
    pub(crate) abandoned: Vec<String>,
    pub(crate) start_duration: Duration,
    pub(crate) run_duration: Duration,
    pub(crate) shutdown_duration: Duration,
    pub(crate) start_path: Vec<PathStep>,
    pub(crate) shutdown_path: Vec<PathStep>,
}

impl RunReport {
    /// Why the run ended.
    pub fn cause(&self) -> &ShutdownCause {
        &self.cause
    }

    /// Whether the run ended without any error: a graceful shutdown after a signal or a request,
    /// including a signal during start that rolled back cleanly.
    pub fn is_success(&self) -> bool {
        self.start_errors.is_empty()
            && self.run_errors.is_empty()
            && self.shutdown_errors.is_empty()
    }

    /// The errors of one phase, in the order they happened.
    pub fn errors(&self, phase: RunPhase) -> &[Error] {
        match phase {
            RunPhase::Start => &self.start_errors,
            RunPhase::Run => &self.run_errors,
            RunPhase::Shutdown => &self.shutdown_errors,
        }
    }

    /// Every error of the run joined into one (start, then run, then shutdown), or `None`.
    pub fn error(&self) -> Option<Error> {
        Error::join(
            self.start_errors
                .iter()
                .chain(&self.run_errors)
                .chain(&self.shutdown_errors)
                .cloned(),
        )
    }

    /// Every error of the run as a `Result`.
    ///
    /// # Errors
    ///
    /// [`error`](RunReport::error), when there is one.
    pub fn result(&self) -> Result<(), Error> {
        self.error().map_or(Ok(()), Err)
    }

    /// Each service in the order it was added, with what happened to it.
    pub fn services(&self) -> &[ServiceReport] {
        &self.services
    }

    /// The names of the threads left running user code that never returned (a start or close that
    /// hung past its timeout). They could not be joined; they end with the process.
    pub fn abandoned_threads(&self) -> &[String] {
        &self.abandoned
    }

    /// How long each phase took.
    pub fn duration(&self, phase: RunPhase) -> Duration {
        match phase {
            RunPhase::Start => self.start_duration,
            RunPhase::Run => self.run_duration,
            RunPhase::Shutdown => self.shutdown_duration,
        }
    }

    /// The critical path of a phase: the chain of services that decided when it ended, first
    /// step first. For [`RunPhase::Start`], when every service became ready: the service that
    /// was ready last, after the one it needed that was ready last before it, and so on back to
    /// one that needed nothing still starting (empty when the start did not complete). For
    /// [`RunPhase::Shutdown`]: the service whose close ended last, after the one that needed it
    /// and closed last, and so on (the cleanups and the runner's own steps, which follow, are
    /// not in it). Empty for [`RunPhase::Run`]. The runner logs both at info level.
    ///
    /// Shortening a step of the path is what makes the phase shorter; with nothing declared
    /// (see [Dependencies](crate::Runner#dependencies)) the path is every service.
    pub fn critical_path(&self, phase: RunPhase) -> &[PathStep] {
        match phase {
            RunPhase::Start => &self.start_path,
            RunPhase::Run => &[],
            RunPhase::Shutdown => &self.shutdown_path,
        }
    }

    /// The process exit code for this outcome: 0 after a clean shutdown, 1 if anything failed,
    /// [`RESTART_BUDGET_EXIT_CODE`](crate::Runner::RESTART_BUDGET_EXIT_CODE) (75) when the
    /// restart budget was spent.
    ///
    /// (A second signal during shutdown exits the process at once with
    /// [`SECOND_SIGNAL_EXIT_CODE`](crate::Runner::SECOND_SIGNAL_EXIT_CODE), without returning here.)
    pub fn exit_code(&self) -> ExitCode {
        if self.cause == ShutdownCause::RestartBudgetSpent {
            // 75 fits in a u8.
            ExitCode::from(crate::Runner::RESTART_BUDGET_EXIT_CODE as u8)
        } else if self.is_success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

impl RunReport {
    /// The summary the runner logs at the end of a run: a first line for the run, then one line
    /// per service in the order it was added, with its final state, how long its close took, and its
    /// errors.
    pub(crate) fn summary(&self) -> Vec<String> {
        let errors: Vec<&Error> = (self.start_errors.iter())
            .chain(&self.run_errors)
            .chain(&self.shutdown_errors)
            .flat_map(Error::errors)
            .collect();
        let mut lines = Vec::with_capacity(self.services.len() + 1);
        lines.push(format!(
            "summary: {} service(s), {} error(s), {} abandoned thread(s); shut down in {:?} \
             ({})",
            self.services.len(),
            errors.len(),
            self.abandoned.len(),
            self.shutdown_duration,
            self.cause,
        ));
        for service in &self.services {
            let mut line = format!("summary: {}: {}", service.name, in_words(service.state));
            if let Some(cause) = &service.skipped_because {
                line.push_str(&format!(
                    " (skipped: it needs {cause}, which failed to start)"
                ));
            }
            if service.restart_count > 0 {
                line.push_str(&format!(" (restarted {} time(s))", service.restart_count));
            }
            if let Some(took) = service.closed_in {
                line.push_str(&format!(" in {took:?}"));
            }
            let own = errors.iter().filter(|e| e.service() == Some(&service.name));
            for (i, e) in own.enumerate() {
                line.push_str(if i == 0 { ": " } else { "; " });
                line.push_str(&e.to_string());
            }
            lines.push(line);
        }
        lines
    }
}

/// A final state as the summary says it.
fn in_words(state: State) -> &'static str {
    match state {
        State::Unstarted => "not started",
        State::Starting => "starting",
        State::Started => "started",
        State::StartFailed => "start failed",
        State::Closing => "closing",
        State::Closed => "closed",
        State::CloseFailed => "close failed",
    }
}

impl Termination for RunReport {
    /// Writes the errors, if any, to standard error, and returns
    /// [`exit_code`](RunReport::exit_code). The text is written on a thread of its own, waited
    /// for at most a second: a standard error stuck on a full pipe (a log shipper that
    /// stopped reading) never keeps the process from exiting.
    fn report(self) -> ExitCode {
        if let Some(e) = self.error() {
            let mut text = format!(
                "error: {} failure(s), cause: {}\n",
                e.errors().len(),
                self.cause
            );
            for part in e.errors() {
                text.push_str(&format!("  {part}\n"));
            }
            let write = move || {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            };
            // Stuck: the thread is left to end with the process.
            let _ = call_within("standard error", Phase::Shutdown, STDERR_WRITE, write);
        }
        self.exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, state: State, skipped_because: Option<&str>) -> ServiceReport {
        ServiceReport {
            name: name.to_owned(),
            state,
            ready_in: None,
            closed_in: None,
            started: false,
            closed: false,
            skipped_because: skipped_because.map(str::to_owned),
            restarts: Vec::new(),
            restart_count: 0,
        }
    }

    #[test]
    fn the_summary_says_which_failed_start_a_service_was_skipped_because_of() {
        let report = RunReport {
            cause: ShutdownCause::StartFailed,
            services: vec![
                service("db", State::StartFailed, None),
                service("api", State::Unstarted, Some("db")),
                service("other", State::Unstarted, None),
            ],
            start_errors: vec![Error::msg("no connection").in_service("db", Phase::Start)],
            run_errors: Vec::new(),
            shutdown_errors: Vec::new(),
            abandoned: Vec::new(),
            start_duration: Duration::ZERO,
            run_duration: Duration::ZERO,
            shutdown_duration: Duration::ZERO,
            start_path: Vec::new(),
            shutdown_path: Vec::new(),
        };
        let lines = report.summary();
        assert_eq!(
            lines[2],
            "summary: api: not started (skipped: it needs db, which failed to start)"
        );
        assert_eq!(lines[3], "summary: other: not started");
    }
}

//! [`ServiceOptions`]: what the runner is told about one service: its timeouts, its needs, and,
//! for a restartable one, when and how it is restarted; and the [`Runner`]'s builder methods
//! of the restartable services.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Phase};
use crate::service::{share, Service};
use crate::supervise::{Backoff, Policy, RestartOptions, Window};

use super::{Entry, Factory, Runner};

#[cfg(doc)]
use super::{RunHandle, ShutdownCause};

/// Per-service timeouts, needs and, for a [restartable](Runner::restartable) service, its
/// restart policy, for [`Runner::service_with`] and [`Runner::restartable`].
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    pub(super) start_timeout: Option<Duration>,
    pub(super) close_timeout: Option<Duration>,
    /// `None`: every service added before it (see [Dependencies](Runner#dependencies)).
    pub(super) needs: Option<Vec<String>>,
    /// Its supervision (the default: never restarted).
    pub(super) restart: RestartOptions,
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
    /// [`close_timeout`](Runner::close_timeout)).
    pub fn close_timeout(mut self, timeout: Duration) -> ServiceOptions {
        self.close_timeout = Some(timeout);
        self
    }

    /// The services this one needs, by name: it starts once every one of them is ready, and
    /// closes before any of them closes (see [Dependencies](Runner#dependencies)). Without
    /// this, a service needs every service added before it. Called again, it adds to the list;
    /// an empty list means it needs nothing, like [`independent`](ServiceOptions::independent).
    ///
    /// The names are checked when the run begins: a name that is not a service of the runner,
    /// or needs that form a cycle, are refused with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) naming it (every service of the cycle),
    /// and nothing starts.
    pub fn needs<N: Into<String>>(mut self, names: impl IntoIterator<Item = N>) -> ServiceOptions {
        (self.needs.get_or_insert_with(Vec::new)).extend(names.into_iter().map(Into::into));
        self
    }

    /// This service needs no other: it starts at once, concurrently with the others that need
    /// nothing, and closes once every service that needs it has closed. Replaces any
    /// [`needs`](ServiceOptions::needs) given before.
    pub fn independent(mut self) -> ServiceOptions {
        self.needs = Some(Vec::new());
        self
    }

    /// Restarts the service when an instance fails while the program runs (OTP's *transient*):
    /// it reported a failure through the [`RunHandle`] in its start's context (a
    /// [`Worker`](crate::Worker) whose closure fails or panics does), its start failed on a
    /// restart, or its health failed (see [`restart_on_unhealthy`](Self::restart_on_unhealthy)).
    /// An instance that finishes its work cleanly (a worker's closure returning `Ok` before it
    /// is stopped) stays finished. Only for a service added with [`Runner::restartable`]; see
    /// [Restarts](Runner#restarts).
    ///
    /// # Errors
    ///
    /// Set on a service added any other way, it is refused when the run begins (a closed
    /// service cannot start again), with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput), and nothing starts.
    pub fn restart_on_failure(mut self) -> ServiceOptions {
        self.restart.policy = Policy::OnFailure;
        self
    }

    /// Restarts the service whenever an instance ends while the program runs, cleanly or not
    /// (OTP's *permanent*). Otherwise as [`restart_on_failure`](Self::restart_on_failure).
    ///
    /// # Errors
    ///
    /// As [`restart_on_failure`](Self::restart_on_failure).
    pub fn restart_always(mut self) -> ServiceOptions {
        self.restart.policy = Policy::Always;
        self
    }

    /// The backoff between a failure and the restart: `initial` before the first restart (default
    /// 100 ms), twice the last delay before each next one, at most `cap` (default 5 s; a cap
    /// under `initial` is raised to it), each delay taking off up to a fifth at random (jitter),
    /// so the delay of attempt *n* is in `[b × 0.8, b]` for `b = min(initial × 2^(n-1), cap)`.
    /// The cap in force is also at most the [restart budget](Runner::restart_budget)'s window
    /// divided by its restarts plus one, so that a crash loop at the cap still spends the
    /// budget. The count starts over once an instance has stayed ready for the cap in force.
    ///
    /// # Errors
    ///
    /// A zero `initial` would spend the budget in microseconds: it is refused when the run
    /// begins, with an error of kind [`InvalidInput`](crate::ErrorKind::InvalidInput). Any
    /// other `Duration` is taken (`Duration::MAX` waits about a century, or until a shutdown).
    pub fn restart_backoff(mut self, initial: Duration, cap: Duration) -> ServiceOptions {
        self.restart.backoff = Backoff::new(initial, cap);
        self
    }

    /// Also restarts the service when its health (its
    /// [`health_report`](crate::HealthReporter::health_report), polled by the runner's health
    /// checker) fails `polls` polls in a row, as the kubelet does with a liveness probe. `0`
    /// counts as 1. Its check is registered with that
    /// [failure threshold](crate::health::CheckOptions::failure_threshold), and its health is
    /// taken as passing again once a fresh instance is ready. It is not a
    /// [liveness check](crate::health::CheckOptions::liveness): `/livez` and the systemd
    /// watchdog, which would restart the whole process, do not count it.
    ///
    /// # Errors
    ///
    /// It needs a restart policy and the runner's health ([`Runner::health`] or
    /// [`Runner::health_endpoint`]); without them it is refused when the run begins, with an
    /// error of kind [`InvalidInput`](crate::ErrorKind::InvalidInput).
    pub fn restart_on_unhealthy(mut self, polls: u32) -> ServiceOptions {
        self.restart.unhealthy_polls = Some(polls.max(1));
        self
    }

    /// Restarts along with this service the restartable services that need it, directly or
    /// through others, and are up (OTP's *rest_for_one*): they are closed before it, each once
    /// those that need it have closed, and started after it is ready, each once those it needs
    /// are up, as in a run's shutdown and start. The restart counts once in the budget; each
    /// of them lists `restarted with db` among its [restarts](crate::ServiceReport::restarts).
    /// Services that need it and cannot restart stay up (not ready meanwhile).
    ///
    /// # Errors
    ///
    /// As [`restart_on_failure`](Self::restart_on_failure): only for a service added with
    /// [`Runner::restartable`].
    pub fn restart_dependants(mut self) -> ServiceOptions {
        self.restart.dependants = true;
        self
    }
}

/// The restartable services (see [Restarts](Runner#restarts)).
impl Runner {
    /// Adds a service that can be restarted: `factory` builds a fresh instance for each start
    /// (a closed service never starts again). The first instance is built at once, here, and
    /// names the service; every later one is built on a thread of the run's pool as part of its
    /// start, within its start timeout, and must bear the same name. `options` say when it is
    /// restarted ([`restart_on_failure`](ServiceOptions::restart_on_failure),
    /// [`restart_always`](ServiceOptions::restart_always); with neither, never: it behaves as
    /// a service added with [`service_with`](Runner::service_with)) and with which backoff; see
    /// [Restarts](#restarts).
    ///
    /// Each instance's start gets a [`RunHandle`] of its own: its
    /// [`fatal`](RunHandle::fatal) reports that this instance failed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lifecycle::{Runner, ServiceOptions, Worker};
    ///
    /// // A poller whose closure fails now and then: a fresh worker replaces it each time.
    /// let poller = || {
    ///     Worker::new("poller", |stop| {
    ///         while !stop.wait_timeout(Duration::from_millis(10)) {
    ///             // poll; an `Err` returned here restarts the poller
    ///         }
    ///         Ok(())
    ///     })
    /// };
    /// let runner = Runner::new()
    ///     .handle_signals(false)
    ///     .restart_budget(10, Duration::from_secs(60))
    ///     .restartable(poller, ServiceOptions::new().restart_on_failure());
    /// let handle = runner.handle();
    /// handle.shutdown(); // a signal, in a real program
    /// let report = runner.run();
    /// assert!(report.is_success());
    /// assert!(report.services()[0].restarts().is_empty());
    /// ```
    ///
    /// # Errors
    ///
    /// A factory that panics building the first instance is refused when the run begins (an
    /// error of kind [`Panicked`](crate::ErrorKind::Panicked), nothing starts); a later
    /// instance of another name shuts the program down with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) naming both (restarting it again
    /// would not help); a later factory panic is a failed restart.
    pub fn restartable<S, F>(mut self, factory: F, options: ServiceOptions) -> Runner
    where
        S: Service + 'static,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || share(factory()));
        let first = catch_unwind(AssertUnwindSafe(|| factory()));
        match first {
            Ok(service) => self.entries.push(Entry {
                service,
                options,
                factory: Some(factory),
            }),
            Err(panic) => {
                let e = Error::panicked("restartable service", Phase::Start, &*panic);
                self.refused.push(e);
            }
        }
        self
    }

    /// The restart budget of every restartable service together: at most `max_restarts`
    /// restarts in any span of `within` (a sliding window, as an OTP supervisor's intensity and
    /// period). The restart past it is refused: the program shuts down gracefully, the run's
    /// cause is [`ShutdownCause::RestartBudgetSpent`] and its exit code
    /// [`RESTART_BUDGET_EXIT_CODE`](Runner::RESTART_BUDGET_EXIT_CODE), so that the supervisor
    /// above (systemd's `Restart=`, Kubernetes) takes over. Default: 10 restarts in 60 s (see
    /// [Restarts](#restarts)).
    ///
    /// `max_restarts` 0 allows none: the first failure spends the budget.
    ///
    /// # Errors
    ///
    /// A zero `within` would never hold two restarts, so no crash loop would ever spend it: it
    /// is refused when the run begins, with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput). `Duration::MAX` counts every restart
    /// of the run.
    pub fn restart_budget(mut self, max_restarts: u32, within: Duration) -> Runner {
        self.budget = Window::new(max_restarts, within);
        self
    }

    /// The exit code of a run whose restart budget was spent (see
    /// [`restart_budget`](Runner::restart_budget)): 75, `EX_TEMPFAIL` of `sysexits.h`, "a
    /// temporary failure; the caller should try again", so that the supervisor above restarts
    /// the whole program (systemd's `Restart=on-failure` does; `RestartPreventExitStatus=` and
    /// `SuccessExitStatus=` can tell it apart).
    pub const RESTART_BUDGET_EXIT_CODE: i32 = 75;
}

//! Settings: [`HealthCheckerBuilder`] for the checker, [`CheckOptions`] for each check.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::registry::Registry;
use super::{HealthChecker, Shared, POOL_NAME};
use crate::pool::CallPool;
use crate::state::StateMachine;
use crate::stop::StopSignal;

/// Default time between two polls of a check.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a poll may take before the check counts as failing and stuck.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time [`HealthChecker::close`](crate::Service::close) waits for its threads.
pub(crate) const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default capacity of each subscriber's event channel.
pub(crate) const DEFAULT_EVENT_CAPACITY: usize = 256;

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) stale_after: Option<Duration>,
    pub(super) close_timeout: Duration,
    pub(super) event_capacity: usize,
}

/// Builds a [`HealthChecker`]; every setting has a default.
///
/// ```
/// use std::time::Duration;
/// use lifecycle::HealthChecker;
///
/// let checker = HealthChecker::builder("1.4.2", "3f9c2e1")
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_secs(2))
///     .build();
/// assert_eq!(checker.snapshot().version(), "1.4.2");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct HealthCheckerBuilder {
    pub(super) version: String,
    pub(super) sha: String,
    pub(super) config: Config,
}

impl HealthCheckerBuilder {
    /// Time between two polls of each check. Default 1 s; at least 1 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one poll of a check (its `ready()` and `health_report()` together) may take
    /// before the check counts as failing ("timed out after ...") and stuck. Default 1 s; a
    /// check can set its own with [`CheckOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// How old a check's last poll may be before it reads as failing ("stale: ..."), whatever it
    /// said. Default: 3 × interval + the check's timeout, which a working poller never reaches
    /// (it records a result, or a failure for a stuck call, at least once per interval).
    pub fn stale_after(mut self, bound: Duration) -> Self {
        self.config.stale_after = Some(bound);
        self
    }

    /// How long [`close`](crate::Service::close) waits for the checker's threads to end. Default
    /// 2 s.
    pub fn close_timeout(mut self, bound: Duration) -> Self {
        self.config.close_timeout = bound;
        self
    }

    /// Capacity of each subscriber's channel ([`HealthChecker::subscribe`]). Default 256; at
    /// least 1.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity.max(1);
        self
    }

    /// Builds the checker. It polls nothing until it is started.
    pub fn build(self) -> HealthChecker {
        let (results_tx, results) = crossbeam_channel::unbounded();
        let (wake_tx, wake) = crossbeam_channel::bounded(1);
        let version: Arc<str> = self.version.into();
        let sha: Arc<str> = self.sha.into();
        let registry = Registry::default();
        let published = Arc::new(registry.published(&version, &sha));
        HealthChecker {
            shared: Arc::new(Shared {
                config: self.config,
                version,
                sha,
                registry: Mutex::new(registry),
                published: RwLock::new(published),
                results: results_tx,
                wake: wake_tx,
                next_id: AtomicU64::new(1),
            }),
            sm: StateMachine::new(),
            stop: StopSignal::new(),
            results,
            wake,
            poller: Mutex::new(None),
            pool: Mutex::new(Some(Arc::new(CallPool::new(POOL_NAME)))),
        }
    }
}

/// How one check is counted and polled; given to [`HealthChecker::register_with`].
///
/// ```
/// use std::time::Duration;
/// use lifecycle::health::CheckOptions;
///
/// let flaky_cache = CheckOptions::new()
///     .group("cache")
///     .failure_threshold(3)
///     .timeout(Duration::from_millis(200));
/// let metrics = CheckOptions::new().informational(true);
/// let maintenance = CheckOptions::new().traffic_gate(true);
/// let worker_ticks = CheckOptions::new().liveness(true).failure_threshold(3);
/// # let _ = (flaky_cache, metrics, maintenance, worker_ticks);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CheckOptions {
    pub(super) informational: bool,
    pub(super) traffic_gate: bool,
    pub(super) liveness: bool,
    pub(super) group: Option<String>,
    pub(super) failure_threshold: u32,
    pub(super) timeout: Option<Duration>,
    pub(super) quiet: bool,
}

impl CheckOptions {
    /// The defaults: counted by readiness and health (not informational, not a traffic gate),
    /// not by liveness, in no group, failing on the first failure, with the checker's timeout.
    pub fn new() -> CheckOptions {
        CheckOptions::default()
    }

    /// An informational check is polled and reported but never counted by
    /// [`Snapshot::is_ready`](super::Snapshot::is_ready),
    /// [`Snapshot::is_healthy`](super::Snapshot::is_healthy) or their per-group forms. Default `false`.
    pub fn informational(mut self, informational: bool) -> Self {
        self.informational = informational;
        self
    }

    /// A traffic gate's readiness says only whether the program should take traffic now, not
    /// whether anything is wrong: the [`Runner`](crate::Runner)'s own `runner` check is one
    /// (not ready before every service is, nor once the shutdown begins), as kube-apiserver's
    /// `shutdown` check is; a maintenance switch is another. Default `false`.
    ///
    /// A traffic gate counts toward readiness only: [`Snapshot::is_ready`](super::Snapshot::is_ready)
    /// and `/readyz` count it, [`Snapshot::is_healthy`](super::Snapshot::is_healthy) and
    /// `/healthz` leave it out (its health too). So `/healthz` keeps passing while a gate
    /// closes `/readyz`: during a shutdown's termination delay, a liveness probe pointed at
    /// `/healthz` does not kill a program that is draining. See the table in the
    /// [`health`](crate::health#probes) module.
    pub fn traffic_gate(mut self, gate: bool) -> Self {
        self.traffic_gate = gate;
        self
    }

    /// A liveness check says whether the process is wedged and only a restart would help: a
    /// worker loop that stopped ticking, a deadlock detector, an event loop that no longer
    /// turns. Default `false`: no check counts toward liveness.
    ///
    /// [`Snapshot::is_live`](super::Snapshot::is_live), `/livez` and the systemd watchdog
    /// (`WATCHDOG=1` is sent only while liveness passes) count the *health* of every liveness
    /// check that is not informational, after its [failure threshold](Self::failure_threshold)
    /// as for the other probes: `/livez` fails while one fails, and passes again once it passes.
    /// A liveness check that has not been polled yet does not fail liveness (no result is no
    /// sign of a wedge, and a liveness probe must never kill a slow start); one whose poll
    /// times out or goes stale does.
    ///
    /// **Never make a dependency a liveness check** (a database, a remote service, a disk):
    /// restarting this process does not bring the database back, and while it is down every
    /// copy of the program would fail its liveness and be restarted, again and again, all at
    /// once: a database outage would become a restart storm. A liveness check asks about this
    /// process's own state only, cheaply, and fails only when a restart is the cure.
    ///
    /// A liveness check is otherwise a normal check: its readiness counts toward `/readyz` and
    /// its readiness and health toward `/healthz` (a wedged process should get no traffic while
    /// it waits to be restarted, and something is wrong). It can also be in a group. See the
    /// table in the [`health`](crate::health#probes) module.
    pub fn liveness(mut self, liveness: bool) -> Self {
        self.liveness = liveness;
        self
    }

    /// Puts the check in `group`, so that a probe can ask about that group alone
    /// ([`Snapshot::is_ready_in`](super::Snapshot::is_ready_in)). Default: no group (counted only by the
    /// overall aggregates).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The check flips from passing to failing only after `k` failed polls in a row (a value of 0
    /// counts as 1). Default 1. It does not delay a check that has never passed, nor active
    /// reports, which take effect at once.
    pub fn failure_threshold(mut self, k: u32) -> Self {
        self.failure_threshold = k;
        self
    }

    /// This check's poll timeout, instead of the checker's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Logs this check's changes at debug level (the runner's own check, whose changes the
    /// runner logs in its own words).
    pub(crate) fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }
}

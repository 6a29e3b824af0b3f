//! The read side of the checker: the immutable [`Snapshot`] readers get, its [`Verdict`]s, the
//! per-check [`Check`] and [`ProbeStatus`] views.
//!
//! Staleness is decided here, at read time, never by the poller: a result older than its check's
//! bound reads as failing, so a poller that stalls cannot leave a healthy-looking cache behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, ErrorKind, Phase};
use crate::service::HealthReport;
use crate::state::State;

use super::{CheckOptions, CHECKER_NAME};

/// One of the two questions a check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Readiness: [`HealthReporter::ready`](crate::HealthReporter::ready), Kubernetes' *ready*.
    Ready,
    /// Health: [`HealthReporter::health_report`](crate::HealthReporter::health_report),
    /// Kubernetes' *live*.
    Health,
}

impl Probe {
    /// The probe's name in lower case: `"ready"` or `"health"`.
    pub fn as_str(self) -> &'static str {
        self.phase().as_str()
    }

    /// The [`Phase`] errors of this probe name: [`Phase::Ready`] or [`Phase::Health`].
    pub fn phase(self) -> Phase {
        match self {
            Probe::Ready => Phase::Ready,
            Probe::Health => Phase::Health,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one probe of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// No result yet: the check has not been polled since it was registered. Counts as failing.
    Unknown,
    /// The last result passed (or failed fewer times in a row than the check's failure threshold).
    Passing,
    /// The check is failing; the [`ProbeStatus::error`] says why.
    Failing,
}

impl Status {
    /// The status in lower case: `"unknown"`, `"passing"` or `"failing"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Passing => "passing",
            Status::Failing => "failing",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is recorded about one probe of one check.
#[derive(Debug, Clone)]
pub(super) struct ProbeState {
    pub(super) status: Status,
    pub(super) error: Option<Error>,
    pub(super) consecutive_failures: u32,
    pub(super) last_change: Option<SystemTime>,
}

impl ProbeState {
    fn unknown(name: &str, probe: Probe) -> ProbeState {
        ProbeState {
            status: Status::Unknown,
            error: Some(Error::msg("not checked yet").in_service(name, probe.phase())),
            consecutive_failures: 0,
            last_change: None,
        }
    }
}

/// Everything recorded about one check. Readers share it immutably; writers copy on write.
#[derive(Debug, Clone)]
pub(super) struct CheckData {
    pub(super) name: Arc<str>,
    pub(super) informational: bool,
    pub(super) traffic_gate: bool,
    pub(super) liveness: bool,
    pub(super) group: Option<Arc<str>>,
    pub(super) stale_after: Duration,
    pub(super) ready: ProbeState,
    pub(super) health: ProbeState,
    pub(super) report: Option<HealthReport>,
    pub(super) last_polled: Option<(Instant, SystemTime)>,
    /// When the call of the last recorded poll began (for a call that timed out: when the
    /// timeout was recorded).
    pub(super) last_poll_began: Option<Instant>,
    pub(super) last_poll_duration: Option<Duration>,
    pub(super) stuck: bool,
}

impl CheckData {
    /// A check called `name`, not polled yet, counted and grouped as `options` say.
    pub(super) fn new(name: Arc<str>, options: &CheckOptions, stale_after: Duration) -> CheckData {
        CheckData {
            ready: ProbeState::unknown(&name, Probe::Ready),
            health: ProbeState::unknown(&name, Probe::Health),
            name,
            informational: options.informational,
            traffic_gate: options.traffic_gate,
            liveness: options.liveness,
            group: options.group.as_deref().map(Arc::from),
            stale_after,
            report: None,
            last_polled: None,
            last_poll_began: None,
            last_poll_duration: None,
            stuck: false,
        }
    }

    pub(super) fn probe(&self, probe: Probe) -> &ProbeState {
        match probe {
            Probe::Ready => &self.ready,
            Probe::Health => &self.health,
        }
    }

    pub(super) fn probe_mut(&mut self, probe: Probe) -> &mut ProbeState {
        match probe {
            Probe::Ready => &mut self.ready,
            Probe::Health => &mut self.health,
        }
    }
}

/// What the checker publishes after every change: swapped in whole, never modified.
#[derive(Debug)]
pub(super) struct Published {
    pub(super) version: Arc<str>,
    pub(super) sha: Arc<str>,
    /// In name order.
    pub(super) checks: Vec<Arc<CheckData>>,
    pub(super) stuck_calls: usize,
    pub(super) paused: bool,
    pub(super) dropped_events: u64,
}

/// A consistent, immutable view of every check, taken by
/// [`HealthChecker::snapshot`](crate::HealthChecker::snapshot).
///
/// Taking one never waits for a poll or for user code. Staleness is judged as of the moment the
/// snapshot was taken: a check whose last poll is older than its bound reads as
/// [`Status::Failing`] with an error like `"db: ready failed: stale: last polled 12.5s ago"`.
///
/// The aggregates ([`is_ready`](Snapshot::is_ready), [`is_healthy`](Snapshot::is_healthy) and
/// their per-group forms) count every check that is not informational, except that the health
/// aggregates leave [traffic gates](CheckOptions::traffic_gate) out, and they fail while the
/// checker itself is not started (under the name `"health checker"`): a checker that does not
/// poll cannot vouch for anything. [`is_live`](Snapshot::is_live) counts only the
/// [liveness checks](CheckOptions::liveness), and the checker itself.
#[derive(Clone)]
pub struct Snapshot {
    published: Arc<Published>,
    state: State,
    at: Instant,
    taken_at: SystemTime,
}

/// Whether the checks an aggregate counts pass, and why each one that does not fails: what
/// [`Snapshot::is_ready`], [`Snapshot::is_healthy`] and their per-group forms answer.
#[derive(Debug, Clone)]
pub struct Verdict {
    failing: BTreeMap<String, Error>,
}

impl Verdict {
    /// Whether every check counted passes.
    pub fn is_passing(&self) -> bool {
        self.failing.is_empty()
    }

    /// Each failing check's name and error, in name order (the checker itself, `"health
    /// checker"`, when it is not running).
    pub fn failures(&self) -> impl ExactSizeIterator<Item = (&str, &Error)> + '_ {
        self.failing.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// Why the check `name` fails, if it is counted and fails.
    pub fn failure(&self, name: &str) -> Option<&Error> {
        self.failing.get(name)
    }

    /// `Ok` when passing, otherwise every failure joined into one error.
    ///
    /// # Errors
    ///
    /// The failures, each naming its check and probe.
    pub fn into_result(self) -> Result<(), Error> {
        Error::join(self.failing.into_values()).map_or(Ok(()), Err)
    }
}

impl Snapshot {
    pub(super) fn new(published: Arc<Published>, state: State) -> Snapshot {
        Snapshot {
            published,
            state,
            at: Instant::now(),
            taken_at: SystemTime::now(),
        }
    }

    /// Whether `later` (a snapshot taken after this one) shows exactly what this one shows, so
    /// that a rendering of this one can be reused for it: both come from the same publication,
    /// with the checker in the same state, and no check is stale at `later`'s time (nor, then,
    /// at this one's). Conservative: `false` as soon as any check is stale, since a stale
    /// check's error names its age, which changes with time.
    pub(crate) fn shows_the_same_as(&self, later: &Snapshot) -> bool {
        Arc::ptr_eq(&self.published, &later.published)
            && self.state == later.state
            && self.published.checks.iter().all(|c| {
                c.last_polled.is_none_or(|(polled, _)| {
                    // Stale once the age exceeds the bound (see `Check::probe`).
                    later.at.saturating_duration_since(polled) <= c.stale_after
                })
            })
    }

    /// The program version given to the checker.
    pub fn version(&self) -> &str {
        &self.published.version
    }

    /// The program's git sha given to the checker.
    pub fn sha(&self) -> &str {
        &self.published.sha
    }

    /// When the snapshot was taken (the time staleness is judged at).
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// The state of the checker itself when the snapshot was taken.
    pub fn checker_state(&self) -> State {
        self.state
    }

    /// How many calls to `ready()` / `health_report()` have overrun their timeout and not yet
    /// returned, including those of checks unregistered while stuck.
    pub fn stuck_calls(&self) -> usize {
        self.published.stuck_calls
    }

    /// Whether polling was paused ([`HealthChecker::pause`](crate::HealthChecker::pause)).
    pub fn is_paused(&self) -> bool {
        self.published.paused
    }

    /// How many events were dropped because a subscriber's channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.published.dropped_events
    }

    /// Every check, in name order.
    pub fn checks(&self) -> impl ExactSizeIterator<Item = Check<'_>> + '_ {
        self.published
            .checks
            .iter()
            .map(|data| Check { data, at: self.at })
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<Check<'_>> {
        let checks = &self.published.checks;
        let i = checks.binary_search_by(|c| (*c.name).cmp(name)).ok()?;
        Some(Check {
            data: &checks[i],
            at: self.at,
        })
    }

    /// The names of the groups checks belong to, in order.
    pub fn groups(&self) -> BTreeSet<&str> {
        self.checks().filter_map(|c| c.group()).collect()
    }

    /// Whether every check that counts is ready, and why each one that is not is not.
    pub fn is_ready(&self) -> Verdict {
        self.verdict(Probe::Ready, None)
    }

    /// Whether every check that counts is healthy, and why each one that is not is not.
    /// [Traffic gates](CheckOptions::traffic_gate) do not count here: they count toward
    /// readiness only.
    pub fn is_healthy(&self) -> Verdict {
        self.verdict(Probe::Health, None)
    }

    /// Whether the process is alive, and why not when it is not: what `/livez` answers and what
    /// the [`Runner`](crate::Runner)'s systemd watchdog follows (`WATCHDOG=1` only while it
    /// passes).
    ///
    /// It fails while the checker itself is not started (under the name `"health checker"`),
    /// and while the health of a [liveness check](CheckOptions::liveness) that is not
    /// informational fails (after its failure threshold; stale counts as failing; not polled
    /// yet does not). No other check counts, readiness never does: with no liveness check,
    /// liveness is only "the checker polls", so that a failing dependency never gets the
    /// process restarted.
    pub fn is_live(&self) -> Verdict {
        let mut failing = BTreeMap::new();
        if self.state != State::Started {
            let e = Error::state(
                ErrorKind::NotStarted,
                CHECKER_NAME,
                Phase::Health,
                self.state,
            );
            failing.insert(CHECKER_NAME.to_owned(), e);
        }
        for check in self.checks().filter(|c| c.counts_toward_liveness()) {
            if let Some(error) = check.liveness_failure() {
                failing.insert(check.name().to_owned(), error);
            }
        }
        Verdict { failing }
    }

    /// Like [`is_ready`](Snapshot::is_ready), counting only the checks of `group`.
    pub fn is_ready_in(&self, group: &str) -> Verdict {
        self.verdict(Probe::Ready, Some(group))
    }

    /// Like [`is_healthy`](Snapshot::is_healthy), counting only the checks of `group`.
    pub fn is_healthy_in(&self, group: &str) -> Verdict {
        self.verdict(Probe::Health, Some(group))
    }

    fn verdict(&self, probe: Probe, group: Option<&str>) -> Verdict {
        let mut failing = BTreeMap::new();
        if self.state != State::Started {
            let e = Error::state(
                ErrorKind::NotStarted,
                CHECKER_NAME,
                probe.phase(),
                self.state,
            );
            failing.insert(CHECKER_NAME.to_owned(), e);
        }
        let counted = self
            .checks()
            .filter(|c| c.counts_toward(probe) && (group.is_none() || c.group() == group));
        for check in counted {
            let status = check.probe(probe);
            if status.status != Status::Passing {
                let error = status.error.unwrap_or_else(|| {
                    Error::msg("failing").in_service(check.name(), probe.phase())
                });
                failing.insert(check.name().to_owned(), error);
            }
        }
        Verdict { failing }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version())
            .field("sha", &self.sha())
            .field("checker_state", &self.state)
            .field("stuck_calls", &self.stuck_calls())
            .field("paused", &self.is_paused())
            .field("checks", &self.checks().collect::<Vec<_>>())
            .finish()
    }
}

/// One check, as a [`Snapshot`] saw it.
#[derive(Clone, Copy)]
pub struct Check<'a> {
    data: &'a CheckData,
    at: Instant,
}

impl<'a> Check<'a> {
    /// The check's name (its reporter's [`name`](crate::HealthReporter::name)).
    pub fn name(&self) -> &'a str {
        &self.data.name
    }

    /// Whether the check is informational: reported, but not counted toward the aggregates.
    pub fn is_informational(&self) -> bool {
        self.data.informational
    }

    /// Whether the check is a [traffic gate](CheckOptions::traffic_gate): counted toward
    /// readiness only (`/readyz`), left out of health (`/healthz`).
    pub fn is_traffic_gate(&self) -> bool {
        self.data.traffic_gate
    }

    /// Whether the check is a [liveness check](CheckOptions::liveness): its health counts
    /// toward [`Snapshot::is_live`] and `/livez` (unless it is informational), and it counts
    /// toward readiness and health as any other check does.
    pub fn is_liveness(&self) -> bool {
        self.data.liveness
    }

    /// Whether [`Snapshot::is_live`] counts the check: a liveness check, not informational.
    pub(crate) fn counts_toward_liveness(&self) -> bool {
        self.is_liveness() && !self.is_informational()
    }

    /// Why the check fails liveness, judged at the snapshot's time, if it does: its health
    /// fails (a health never polled yet, [`Status::Unknown`], is no sign of a wedge and does
    /// not). The one per-check rule of liveness, whether or not the check counts toward it.
    pub(crate) fn liveness_failure(&self) -> Option<Error> {
        let health = self.health();
        (health.status == Status::Failing).then(|| {
            health
                .error
                .unwrap_or_else(|| Error::msg("failing").in_service(self.name(), Phase::Health))
        })
    }

    /// Whether the aggregates of `probe` count the check: not informational, and, for
    /// [`Probe::Health`], not a traffic gate.
    pub(crate) fn counts_toward(&self, probe: Probe) -> bool {
        let gated = probe == Probe::Health && self.is_traffic_gate();
        !self.is_informational() && !gated
    }

    /// The group the check belongs to, if any.
    pub fn group(&self) -> Option<&'a str> {
        self.data.group.as_deref()
    }

    /// The readiness probe, judged at the snapshot's time.
    pub fn ready(&self) -> ProbeStatus {
        self.probe(Probe::Ready)
    }

    /// The health probe, judged at the snapshot's time.
    pub fn health(&self) -> ProbeStatus {
        self.probe(Probe::Health)
    }

    /// One probe, judged at the snapshot's time: a check polled longer ago than its staleness
    /// bound reads as [`Status::Failing`] with a `"stale: ..."` error, whatever its last result.
    pub fn probe(&self, probe: Probe) -> ProbeStatus {
        let state = self.data.probe(probe);
        let mut status = ProbeStatus {
            status: state.status,
            error: state.error.clone(),
            consecutive_failures: state.consecutive_failures,
            last_change: state.last_change,
        };
        if let Some(age) = self.age().filter(|age| *age > self.data.stale_after) {
            let age = Duration::from_millis(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            let e = Error::msg(format!(
                "stale: last polled {age:?} ago (bound {:?})",
                self.data.stale_after
            ));
            status.status = Status::Failing;
            status.error = Some(e.in_service(self.name(), probe.phase()));
        }
        status
    }

    /// The last report from [`health_report`](crate::HealthReporter::health_report), with its
    /// sub-components; `None` before the first poll and after a poll that timed out or panicked
    /// in `health_report`.
    pub fn report(&self) -> Option<&'a HealthReport> {
        self.data.report.as_ref()
    }

    /// When the check was last polled: its last result, or the poller finding its call still
    /// stuck. Active reports do not count, so that a stalled poller cannot be hidden by them.
    pub fn last_polled(&self) -> Option<SystemTime> {
        self.data.last_polled.map(|(_, system)| system)
    }

    /// How long before the snapshot the check was last polled.
    pub fn age(&self) -> Option<Duration> {
        self.data
            .last_polled
            .map(|(instant, _)| self.at.saturating_duration_since(instant))
    }

    /// Whether the check's last poll is older than its staleness bound.
    pub fn is_stale(&self) -> bool {
        self.age().is_some_and(|age| age > self.data.stale_after)
    }

    /// The staleness bound of this check.
    pub fn stale_after(&self) -> Duration {
        self.data.stale_after
    }

    /// How long the last completed poll (`ready()` and `health_report()` together) took.
    pub fn last_poll_duration(&self) -> Option<Duration> {
        self.data.last_poll_duration
    }

    /// When the call of the last recorded poll began.
    pub(crate) fn polled_since(&self) -> Option<Instant> {
        self.data.last_poll_began
    }

    /// Whether a call to this check's reporter has overrun its timeout and not returned yet.
    /// While it is stuck the check is not polled again and reads as failing.
    pub fn is_stuck(&self) -> bool {
        self.data.stuck
    }
}

impl fmt::Debug for Check<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name())
            .field("informational", &self.is_informational())
            .field("traffic_gate", &self.is_traffic_gate())
            .field("liveness", &self.is_liveness())
            .field("group", &self.group())
            .field("ready", &self.ready())
            .field("health", &self.health())
            .field("stuck", &self.is_stuck())
            .finish()
    }
}

/// One probe of one check: its status, why it fails, and its history.
#[derive(Debug, Clone)]
pub struct ProbeStatus {
    status: Status,
    error: Option<Error>,
    consecutive_failures: u32,
    last_change: Option<SystemTime>,
}

impl ProbeStatus {
    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the status is [`Status::Passing`].
    pub fn is_passing(&self) -> bool {
        self.status == Status::Passing
    }

    /// Why the probe fails. Also set while it still passes but has failed fewer times in a row
    /// than its failure threshold: then it is the latest failure.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// How many polls in a row have failed (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the status last changed; `None` if it never has.
    pub fn last_change(&self) -> Option<SystemTime> {
        self.last_change
    }
}

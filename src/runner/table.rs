//! [`ServiceTable`]: what the runner knows of each of its services as the run goes, in
//! atomics: its lifecycle state, how long its start and close took, which services it needs,
//! and which failed start kept it from starting. The runner thread writes it as states change;
//! each service's check (see `health.rs`) and, with feature `metrics`, each scrape read it
//! without a lock, so the two can never disagree.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::state::State;

/// An unset duration.
const NONE: u64 = u64::MAX;
/// An unset index.
const NO_INDEX: usize = usize::MAX;
/// The most needs a not-started service's check names; more are counted.
const MAX_NAMED: usize = 8;

/// One row per service, in the order they were added to the runner.
#[derive(Debug)]
pub(crate) struct ServiceTable {
    rows: Vec<Row>,
    /// What the rows' instants count from.
    origin: Instant,
    /// The run's upgrades that handed over to their new process, and those that failed.
    upgrades: [AtomicU64; 2],
}

/// Where a restart is (see [`ServiceTable::restarting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RestartStage {
    /// The failed instance is closing.
    Closing = 1,
    /// The backoff runs.
    Waiting = 2,
    /// The fresh instance is starting.
    Starting = 3,
}

/// One service's row of a [`ServiceTable`].
#[derive(Debug)]
pub(crate) struct Row {
    /// The service's name.
    name: String,
    /// The services it needs, directly: in the order it declared them, or, when it declared
    /// nothing, in the order they were added.
    needs: Vec<usize>,
    /// Its [`State`], as a `u8`.
    state: AtomicU8,
    /// How long its start took until it was ready, in nanoseconds; [`NONE`] until it was.
    start_nanos: AtomicU64,
    /// How long its close took, in nanoseconds; [`NONE`] until it returned.
    close_nanos: AtomicU64,
    /// The service whose failed start kept this one from starting (its
    /// [`ServiceReport::skipped_because`](crate::ServiceReport::skipped_because)), by index;
    /// [`NO_INDEX`] for none.
    skipped_because: AtomicUsize,
    /// How many times it was restarted.
    restarts: AtomicU64,
    /// The attempt of the restart in progress; 0 when none is.
    restart_attempt: AtomicU32,
    /// The [`RestartStage`] of the restart in progress, as a `u8`.
    restart_stage: AtomicU8,
    /// When its backoff ends, in nanoseconds from the table's origin.
    restart_at: AtomicU64,
}

impl Row {
    /// The service's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its lifecycle state, as the runner last wrote it.
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How long it took from the call to its start until it was ready, once it was.
    pub(crate) fn start_duration(&self) -> Option<Duration> {
        load(&self.start_nanos)
    }

    /// How long its close took, once it returned (read by the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) fn close_duration(&self) -> Option<Duration> {
        load(&self.close_nanos)
    }

    /// How many times it was restarted (read by the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    /// Whether a restart of it is in progress.
    fn is_restarting(&self) -> bool {
        self.restart_attempt.load(Ordering::Acquire) != 0
    }

    /// Whether the runner saw it ready in the start phase (a start cut short by a shutdown is
    /// started, but never seen ready).
    fn was_ready(&self) -> bool {
        self.start_duration().is_some()
    }
}

fn load(nanos: &AtomicU64) -> Option<Duration> {
    match nanos.load(Ordering::Acquire) {
        NONE => None,
        n => Some(Duration::from_nanos(n)),
    }
}

fn store(nanos: &AtomicU64, d: Duration) {
    let n = u64::try_from(d.as_nanos()).unwrap_or(NONE - 1);
    nanos.store(n, Ordering::Release);
}

impl ServiceTable {
    /// A table of `services`, each a name and the indices of the services it needs, every
    /// service [`State::Unstarted`].
    pub(crate) fn new(services: impl IntoIterator<Item = (String, Vec<usize>)>) -> ServiceTable {
        ServiceTable {
            rows: services
                .into_iter()
                .map(|(name, needs)| Row {
                    name,
                    needs,
                    state: AtomicU8::new(State::Unstarted as u8),
                    start_nanos: AtomicU64::new(NONE),
                    close_nanos: AtomicU64::new(NONE),
                    skipped_because: AtomicUsize::new(NO_INDEX),
                    restarts: AtomicU64::new(0),
                    restart_attempt: AtomicU32::new(0),
                    restart_stage: AtomicU8::new(0),
                    restart_at: AtomicU64::new(NONE),
                })
                .collect(),
            origin: Instant::now(),
            upgrades: Default::default(),
        }
    }

    /// Every row, in the order the services were added (read by the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The name of service `index`.
    pub(crate) fn name(&self, index: usize) -> &str {
        self.rows.get(index).map_or("", Row::name)
    }

    /// The state of service `index`, as the runner last wrote it.
    pub(crate) fn state(&self, index: usize) -> State {
        self.rows.get(index).map_or(State::Unstarted, Row::state)
    }

    /// Service `index` is now in `state`.
    pub(crate) fn set_state(&self, index: usize, state: State) {
        if let Some(row) = self.rows.get(index) {
            row.state.store(state as u8, Ordering::Release);
        }
    }

    /// Service `index` became ready `took` after its start was called.
    pub(crate) fn started_in(&self, index: usize, took: Duration) {
        if let Some(row) = self.rows.get(index) {
            store(&row.start_nanos, took);
        }
    }

    /// Service `index`'s close returned `took` after it was called.
    pub(crate) fn closed_in(&self, index: usize, took: Duration) {
        if let Some(row) = self.rows.get(index) {
            store(&row.close_nanos, took);
        }
    }

    /// Service `index` will not start: it needs the service named `cause`, which failed to
    /// start.
    pub(crate) fn skipped(&self, index: usize, cause: &str) {
        let cause = self.rows.iter().position(|r| r.name == cause);
        if let (Some(row), Some(cause)) = (self.rows.get(index), cause) {
            row.skipped_because.store(cause, Ordering::Release);
        }
    }

    /// Service `index` is being restarted, attempt `attempt` (from 1), now at `stage`; its
    /// backoff ends at `at` (for [`RestartStage::Waiting`]).
    pub(crate) fn restarting(&self, index: usize, attempt: u32, stage: RestartStage, at: Instant) {
        let Some(row) = self.rows.get(index) else {
            return;
        };
        let at = at.saturating_duration_since(self.origin);
        store(&row.restart_at, at);
        row.restart_stage.store(stage as u8, Ordering::Release);
        // Last: a reader that sees the attempt sees the rest.
        row.restart_attempt.store(attempt.max(1), Ordering::Release);
    }

    /// Counts an upgrade that handed over (`true`) or failed.
    pub(crate) fn count_upgrade(&self, handed_over: bool) {
        self.upgrades[usize::from(!handed_over)].fetch_add(1, Ordering::Relaxed);
    }

    /// The run's upgrades: how many handed over, and how many failed.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn upgrades(&self) -> (u64, u64) {
        let [over, failed] = &self.upgrades;
        (over.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// Service `index`'s restart has begun: counted.
    pub(crate) fn count_restart(&self, index: usize) {
        if let Some(row) = self.rows.get(index) {
            row.restarts.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Service `index`'s restart is over (its instance is ready, or the shutdown ended it).
    pub(crate) fn restarted(&self, index: usize) {
        if let Some(row) = self.rows.get(index) {
            row.restart_attempt.store(0, Ordering::Release);
        }
    }

    /// How many times service `index` was restarted.
    pub(crate) fn restarts(&self, index: usize) -> u64 {
        (self.rows.get(index)).map_or(0, |r| r.restarts.load(Ordering::Acquire))
    }

    /// What service `index`'s restart in progress is doing, as its check says it at `now`:
    /// `restarting (attempt 3, next in 2.1s)`, `restarting (attempt 3, closing)`,
    /// `restarting (attempt 3, starting)`; `None` when no restart is in progress.
    pub(crate) fn restart_status(&self, index: usize, now: Instant) -> Option<String> {
        let row = self.rows.get(index)?;
        let attempt = row.restart_attempt.load(Ordering::Acquire);
        if attempt == 0 {
            return None;
        }
        let stage = row.restart_stage.load(Ordering::Acquire);
        let what = if stage == RestartStage::Closing as u8 {
            "closing".to_owned()
        } else if stage == RestartStage::Starting as u8 {
            "starting".to_owned()
        } else {
            let at = load(&row.restart_at).unwrap_or(Duration::MAX);
            let left = at.saturating_sub(now.saturating_duration_since(self.origin));
            format!("next in {left:.1?}")
        };
        Some(format!("restarting (attempt {attempt}, {what})"))
    }

    /// A service that service `index` needs, directly or through others, whose restart is in
    /// progress (the first found, nearest first, in the order declared).
    pub(crate) fn restarting_need(&self, index: usize) -> Option<usize> {
        let mut seen = vec![false; self.rows.len()];
        let mut next: std::collections::VecDeque<usize> =
            self.rows.get(index)?.needs.iter().copied().collect();
        while let Some(n) = next.pop_front() {
            if std::mem::replace(seen.get_mut(n)?, true) {
                continue;
            }
            let row = &self.rows[n];
            if row.is_restarting() {
                return Some(n);
            }
            next.extend(row.needs.iter().copied());
        }
        None
    }

    /// Why service `index` is not started, as its check says it: `None` once it has started
    /// (or closed, or its start was cut short after it began), when its check is its own.
    /// `shutting_down`: a shutdown was asked for or has begun, so nothing more will start.
    ///
    /// In order: `starting` while its start is in progress; `not started: its start failed`;
    /// `not started: it needs db, which failed to start` (the words of the run's log);
    /// `not started: shutting down`; `waiting for db, cache` (the services it needs that are
    /// not ready yet, as it declared them); `starting` once they all are.
    pub(crate) fn not_started(&self, index: usize, shutting_down: bool) -> Option<String> {
        let row = self.rows.get(index)?;
        match row.state() {
            State::Unstarted => {}
            State::Starting => return Some("starting".to_owned()),
            State::StartFailed => return Some("not started: its start failed".to_owned()),
            State::Started | State::Closing | State::Closed | State::CloseFailed => return None,
        }
        let skipped = row.skipped_because.load(Ordering::Acquire);
        let failed = (skipped != NO_INDEX).then_some(skipped).or_else(|| {
            (row.needs.iter().copied()).find(|&n| self.rows[n].state() == State::StartFailed)
        });
        if let Some(failed) = failed {
            return Some(format!(
                "not started: it needs {}, which failed to start",
                self.name(failed)
            ));
        }
        if shutting_down {
            return Some("not started: shutting down".to_owned());
        }
        let waiting: Vec<&str> = (row.needs.iter())
            .filter(|&&n| !self.rows[n].was_ready())
            .map(|&n| self.name(n))
            .collect();
        Some(match waiting.len() {
            0 => "starting".to_owned(),
            n if n <= MAX_NAMED => format!("waiting for {}", waiting.join(", ")),
            n => format!(
                "waiting for {} and {} more",
                waiting[..MAX_NAMED].join(", "),
                n - MAX_NAMED
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// db and cache need nothing; api needs db then cache; web needs api.
    fn table() -> ServiceTable {
        ServiceTable::new([
            ("db".to_owned(), vec![]),
            ("cache".to_owned(), vec![]),
            ("api".to_owned(), vec![0, 1]),
            ("web".to_owned(), vec![2]),
        ])
    }

    #[test]
    fn a_service_waits_for_the_needs_not_ready_in_the_order_declared() {
        let t = table();
        assert_eq!(t.not_started(2, false).unwrap(), "waiting for db, cache");
        t.set_state(0, State::Starting);
        assert_eq!(t.not_started(0, false).unwrap(), "starting");
        t.set_state(1, State::Started);
        t.started_in(1, Duration::from_millis(1));
        assert_eq!(t.not_started(2, false).unwrap(), "waiting for db");
        t.set_state(0, State::Started);
        t.started_in(0, Duration::from_millis(2));
        // Its needs are ready: it is about to start, then starting.
        assert_eq!(t.not_started(2, false).unwrap(), "starting");
        t.set_state(2, State::Starting);
        assert_eq!(t.not_started(2, false).unwrap(), "starting");
        assert_eq!(t.not_started(3, false).unwrap(), "waiting for api");
        // Started: the check is the service's own, and stays so once it closes.
        t.set_state(2, State::Started);
        assert_eq!(t.not_started(2, false), None);
        t.set_state(2, State::Closed);
        assert_eq!(t.not_started(2, true), None);
    }

    #[test]
    fn a_failed_start_and_a_shutdown_say_it_will_not_start() {
        let t = table();
        t.set_state(0, State::StartFailed);
        assert_eq!(
            t.not_started(0, false).unwrap(),
            "not started: its start failed"
        );
        let skipped = "not started: it needs db, which failed to start";
        assert_eq!(t.not_started(2, false).unwrap(), skipped);
        // Further down, once the runner has said who was skipped because of it.
        assert_eq!(t.not_started(3, false).unwrap(), "waiting for api");
        t.skipped(3, "db");
        assert_eq!(t.not_started(3, true).unwrap(), skipped);
        // A start cut short by a shutdown is started (so closed later) but never was ready.
        let t = table();
        t.set_state(0, State::Started);
        assert_eq!(t.not_started(2, false).unwrap(), "waiting for db, cache");
        assert_eq!(
            t.not_started(2, true).unwrap(),
            "not started: shutting down"
        );
    }

    #[test]
    fn a_restart_says_where_it_is_and_its_dependants_wait_for_it() {
        let t = table();
        let now = Instant::now();
        assert_eq!(t.restart_status(0, now), None);
        assert_eq!(t.restarting_need(3), None);
        t.count_restart(0);
        t.restarting(0, 3, RestartStage::Closing, now);
        assert_eq!(
            t.restart_status(0, now).unwrap(),
            "restarting (attempt 3, closing)"
        );
        let at = now + Duration::from_millis(2100);
        t.restarting(0, 3, RestartStage::Waiting, at);
        assert_eq!(
            t.restart_status(0, now).unwrap(),
            "restarting (attempt 3, next in 2.1s)"
        );
        // Past its end, and at an instant before the table's origin: no panic.
        let later = at + Duration::from_secs(5);
        assert_eq!(
            t.restart_status(0, later).unwrap(),
            "restarting (attempt 3, next in 0.0ns)"
        );
        t.restarting(0, 3, RestartStage::Starting, now);
        assert_eq!(
            t.restart_status(0, now).unwrap(),
            "restarting (attempt 3, starting)"
        );
        // api needs db directly, web through api; cache needs nothing.
        assert_eq!(t.restarting_need(2), Some(0));
        assert_eq!(t.restarting_need(3), Some(0));
        assert_eq!(t.restarting_need(1), None);
        assert_eq!(t.restarting_need(0), None);
        assert_eq!(t.restarting_need(9), None);
        t.restarted(0);
        assert_eq!(t.restart_status(0, now), None);
        assert_eq!(t.restarting_need(3), None);
        assert_eq!(t.restarts(0), 1);
        assert_eq!(t.restarts(9), 0);
    }

    #[test]
    fn a_long_wait_names_the_first_needs_and_counts_the_others() {
        let t = ServiceTable::new(
            (0..10)
                .map(|i| (format!("s{i}"), vec![]))
                .chain([("all".to_owned(), (0..10).collect())]),
        );
        assert_eq!(
            t.not_started(10, false).unwrap(),
            "waiting for s0, s1, s2, s3, s4, s5, s6, s7 and 2 more"
        );
        assert_eq!(t.name(11), "");
        assert_eq!(t.not_started(11, false), None);
    }
}

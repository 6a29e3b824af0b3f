//! The write side: the [`Registry`] of checks and what the poller, the active reports and
//! registration do to it. Everything here runs under the registry's lock, so nothing here calls
//! user code, blocks, or logs (log lines are collected and written after the lock is released).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Sender, TrySendError};

use crate::error::{Error, ErrorKind::NotStarted, Phase, Result};
use crate::service::HealthReport;
use crate::thread::later;

use super::event::HealthEvent;
use super::snapshot::{CheckData, Probe, Published, Status};
use super::worker::{PollResult, Worker};

/// A log line to write once the lock is released.
pub(super) type LogLine = (log::Level, String);

/// A call that was sent to a worker and has not come back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    pub(super) deadline: Instant,
    pub(super) stuck: bool,
}

/// A registered check.
pub(super) struct Entry {
    pub(super) id: u64,
    pub(super) data: Arc<CheckData>,
    pub(super) threshold: u32,
    pub(super) timeout: Duration,
    pub(super) worker: Worker,
    pub(super) call: Option<Call>,
    pub(super) next_due: Instant,
    /// A poll was asked for ([`poll_now`](super::HealthChecker::poll_now)) while a call was in
    /// progress: poll again as soon as it returns, not an interval later.
    pub(super) poll_again: bool,
    /// When each probe ([ready, health]) was last pushed: a poll whose call began before that
    /// read the service's state before the push, so its result must not override the push.
    pub(super) pushed_at: [Option<Instant>; 2],
    /// Its events are logged at debug level (the runner's own check).
    pub(super) quiet: bool,
}

fn probe_index(probe: Probe) -> usize {
    match probe {
        Probe::Ready => 0,
        Probe::Health => 1,
    }
}

impl Entry {
    pub(super) fn is_stuck(&self) -> bool {
        self.call.is_some_and(|c| c.stuck)
    }
}

/// The worker of a check unregistered while its call was still running: kept until its thread
/// ends (which it does when the call returns), and counted as a stuck call meanwhile.
pub(super) struct Orphan {
    pub(super) name: Arc<str>,
    pub(super) worker: Worker,
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) checks: BTreeMap<Arc<str>, Entry>,
    pub(super) orphans: Vec<Orphan>,
    pub(super) subscribers: Vec<Sender<HealthEvent>>,
    /// Woken (never waited on) after every publication, for
    /// [`wait_for_poll`](super::HealthChecker::wait_for_poll).
    pub(super) watchers: Vec<Sender<()>>,
    pub(super) paused: bool,
    pub(super) closed: bool,
    dropped_events: u64,
    /// Events recorded but not yet sent: they go out after the snapshot that shows them is
    /// published, so a subscriber that reads the snapshot on an event sees the change.
    pending: Vec<HealthEvent>,
    log: Vec<LogLine>,
}

/// Records one outcome of `probe` on `data`; returns the event if its status changed.
///
/// A success passes at once. A failure fails at once if the probe was not passing, if it was
/// pushed, or once it is the `threshold`-th in a row; until then the probe keeps passing and only
/// its error and failure count show it.
fn apply(
    data: &mut CheckData,
    probe: Probe,
    outcome: Result<()>,
    threshold: u32,
    pushed: bool,
    now: SystemTime,
) -> Option<HealthEvent> {
    let check = Arc::clone(&data.name);
    let state = data.probe_mut(probe);
    let old = state.status;
    let not_started = |e: &Option<Error>| e.as_ref().is_some_and(|e| e.has_kind(NotStarted));
    // What the probe said before: a first result, or a service not started, is no news.
    let was_expected = old == Status::Unknown || not_started(&state.error);
    match outcome {
        Ok(()) => {
            state.status = Status::Passing;
            state.error = None;
            state.consecutive_failures = 0;
        }
        Err(e) => {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            if pushed || old != Status::Passing || state.consecutive_failures >= threshold {
                state.status = Status::Failing;
            }
            state.error = Some(e);
        }
    }
    if state.status == old {
        return None;
    }
    state.last_change = Some(now);
    let reason = state
        .error
        .clone()
        .filter(|_| state.status == Status::Failing);
    let expected = match state.status {
        Status::Passing => was_expected,
        _ => not_started(&reason),
    };
    Some(HealthEvent {
        check,
        probe,
        old,
        new: state.status,
        reason,
        at: now,
        pushed,
        expected,
    })
}

/// The level an event is logged at: a failure at warn, the recovery from one at info, and at
/// debug what is expected: a check's first result, a service that is not started (yet, or any
/// more) not being ready or healthy, its passing once started, and a quiet check's changes.
fn event_level(event: &HealthEvent, quiet: bool) -> log::Level {
    match event.new {
        _ if quiet || event.expected => log::Level::Debug,
        Status::Failing => log::Level::Warn,
        _ => log::Level::Info,
    }
}

/// The health status a report amounts to: its failures joined, each naming its component.
fn report_status(report: &HealthReport) -> Result<()> {
    let failures = report
        .failures()
        .map(|(name, e)| e.clone().in_service(name, Phase::Health));
    Error::join(failures).map_or(Ok(()), Err)
}

impl Registry {
    pub(super) fn take_log(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.log)
    }

    fn info(&mut self, line: String) {
        self.log.push((log::Level::Info, line));
    }

    fn warn(&mut self, line: String) {
        self.log.push((log::Level::Warn, line));
    }

    /// Records a failure of both probes of `entry` (a timeout, or a worker gone).
    fn fail_both(
        entry: &mut Entry,
        e: &Error,
        now: (Instant, SystemTime),
        out: &mut Vec<HealthEvent>,
    ) {
        let data = Arc::make_mut(&mut entry.data);
        data.last_polled = Some(now);
        data.last_poll_began = Some(now.0);
        for probe in [Probe::Ready, Probe::Health] {
            let outcome = Err(e.clone().in_service(&data.name, probe.phase()));
            out.extend(apply(data, probe, outcome, entry.threshold, false, now.1));
        }
    }

    /// Expires calls past their deadline and sends the polls that are due; returns when the
    /// poller should look again (at the latest one `interval` from now).
    pub(super) fn tick(&mut self, now: Instant, interval: Duration) -> Instant {
        let stamp = (now, SystemTime::now());
        let mut next = later(now, interval);
        let mut events = Vec::new();
        let mut warnings = Vec::new();
        for entry in self.checks.values_mut() {
            let name = Arc::clone(&entry.data.name);
            if let Some(call) = entry
                .call
                .as_mut()
                .filter(|c| !c.stuck && now >= c.deadline)
            {
                call.stuck = true;
                let phase = entry.worker.phase();
                warnings.push(format!(
                    "{name}: {phase}() has not returned after {:?}; not polling it again until it does",
                    entry.timeout
                ));
                let e = Error::timed_out(&name, phase, entry.timeout);
                Arc::make_mut(&mut entry.data).stuck = true;
                Registry::fail_both(entry, &e, stamp, &mut events);
                entry.next_due = later(now, interval);
            }
            if !self.paused && now >= entry.next_due {
                match entry.call {
                    None => match entry.worker.request() {
                        Ok(()) => {
                            entry.call = Some(Call {
                                deadline: later(now, entry.timeout),
                                stuck: false,
                            });
                        }
                        // Asked again at the next interval.
                        Err(e) => Registry::fail_both(entry, &e, stamp, &mut events),
                    },
                    Some(call) if call.stuck => {
                        // Still stuck: the poller is alive and the check is still failing.
                        let e = Error::timed_out(&name, entry.worker.phase(), entry.timeout);
                        Registry::fail_both(entry, &e, stamp, &mut events);
                    }
                    Some(_) => {}
                }
                entry.next_due = later(now, interval);
            }
            if !self.paused {
                next = next.min(entry.next_due);
            }
            if let Some(call) = entry.call.filter(|c| !c.stuck) {
                next = next.min(call.deadline);
            }
        }
        for w in warnings {
            self.warn(w);
        }
        self.pending.extend(events);
        next
    }

    /// Records what a worker found.
    pub(super) fn record_poll(&mut self, result: PollResult, now: Instant) {
        let stamp = (now, SystemTime::now());
        let Some(entry) = self.checks.values_mut().find(|e| e.id == result.id) else {
            // From a check unregistered since: its thread ends now, and the poller joins it.
            return;
        };
        let was_stuck = entry.call.take().is_some_and(|c| c.stuck);
        if std::mem::take(&mut entry.poll_again) {
            entry.next_due = now;
        }
        let data = Arc::make_mut(&mut entry.data);
        data.stuck = false;
        data.last_polled = Some(stamp);
        data.last_poll_began = Some(result.began);
        data.last_poll_duration = Some(result.duration);
        let (health, report) = match result.health {
            Ok(report) => (report_status(&report), Some(report)),
            Err(e) => (Err(e), None),
        };
        data.report = report;
        let mut events = Vec::new();
        for (probe, outcome) in [(Probe::Ready, result.ready), (Probe::Health, health)] {
            let superseded = entry.pushed_at[probe_index(probe)].is_some_and(|p| result.began < p);
            if superseded {
                continue;
            }
            events.extend(apply(data, probe, outcome, entry.threshold, false, stamp.1));
        }
        if was_stuck {
            let line = format!(
                "{}: stuck call returned after {:?}",
                data.name, result.duration
            );
            self.info(line);
        }
        self.pending.extend(events);
    }

    /// Records an active report on the check `name` (registered as `id`, if given).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRegistered`](crate::ErrorKind::NotRegistered) if there is no such check.
    pub(super) fn push(
        &mut self,
        name: &str,
        id: Option<u64>,
        probe: Probe,
        status: Result<()>,
    ) -> Result<()> {
        let entry = self
            .checks
            .get_mut(name)
            .filter(|e| id.is_none_or(|id| id == e.id))
            .ok_or_else(|| super::not_registered(name))?;
        let status = status.map_err(|e| e.in_service(name, probe.phase()));
        entry.pushed_at[probe_index(probe)] = Some(Instant::now());
        let data = Arc::make_mut(&mut entry.data);
        let event = apply(
            data,
            probe,
            status,
            entry.threshold,
            true,
            SystemTime::now(),
        );
        self.pending.extend(event);
        Ok(())
    }

    /// Takes the orphans whose threads have ended, to join them once the lock is released.
    pub(super) fn ended_orphans(&mut self) -> Vec<Orphan> {
        let (ended, running) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|o| o.worker.has_ended());
        self.orphans = running;
        ended
    }

    pub(super) fn stuck_calls(&self) -> usize {
        let registered = self.checks.values().filter(|e| e.is_stuck()).count();
        registered + self.orphans.len()
    }

    pub(super) fn published(&self, version: &Arc<str>, sha: &Arc<str>) -> Published {
        Published {
            version: Arc::clone(version),
            sha: Arc::clone(sha),
            checks: self.checks.values().map(|e| Arc::clone(&e.data)).collect(),
            stuck_calls: self.stuck_calls(),
            paused: self.paused,
            dropped_events: self.dropped_events,
        }
    }

    /// Wakes every [`wait_for_poll`](super::HealthChecker::wait_for_poll) without waiting; a
    /// waiter gone is forgotten.
    pub(super) fn wake_watchers(&mut self) {
        self.watchers
            .retain(|tx| !matches!(tx.try_send(()), Err(TrySendError::Disconnected(_))));
    }

    /// Sends the pending events to every subscriber without ever waiting: a full channel loses
    /// the event (counted), a dropped receiver loses its subscription.
    pub(super) fn send_pending(&mut self) {
        let events = std::mem::take(&mut self.pending);
        for event in events {
            let quiet = self.checks.get(&*event.check).is_some_and(|e| e.quiet);
            let level = event_level(&event, quiet);
            self.log.push((level, event.to_string()));
            self.subscribers
                .retain(|tx| match tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        self.dropped_events += 1;
                        true
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> CheckData {
        CheckData::new(
            "db".into(),
            &crate::checker::CheckOptions::new(),
            Duration::from_secs(1),
        )
    }

    fn fail() -> Result<()> {
        Err(Error::msg("down"))
    }

    #[test]
    fn first_result_decides_whatever_the_threshold() {
        let now = SystemTime::now();
        let mut d = data();
        let e = apply(&mut d, Probe::Ready, fail(), 3, false, now).expect("changed");
        assert_eq!((e.old, e.new), (Status::Unknown, Status::Failing));
        let mut d = data();
        let e = apply(&mut d, Probe::Ready, Ok(()), 3, false, now).expect("changed");
        assert_eq!((e.old, e.new), (Status::Unknown, Status::Passing));
        assert!(e.reason.is_none());
        assert_eq!(d.health.status, Status::Unknown, "probes are independent");
    }

    #[test]
    fn threshold_counts_failures_in_a_row() {
        let now = SystemTime::now();
        let mut d = data();
        apply(&mut d, Probe::Health, Ok(()), 3, false, now);
        assert!(apply(&mut d, Probe::Health, fail(), 3, false, now).is_none());
        assert!(apply(&mut d, Probe::Health, fail(), 3, false, now).is_none());
        assert_eq!(d.health.status, Status::Passing);
        assert_eq!(d.health.consecutive_failures, 2);
        assert!(d.health.error.is_some(), "the latest failure shows");
        let e = apply(&mut d, Probe::Health, fail(), 3, false, now).expect("third flips");
        assert_eq!(e.reason.unwrap().to_string(), "down");
        apply(&mut d, Probe::Health, Ok(()), 3, false, now);
        assert_eq!(d.health.consecutive_failures, 0);
        assert!(d.health.error.is_none());
    }

    #[test]
    fn what_is_no_news_is_logged_at_debug() {
        let now = SystemTime::now();
        let not_started = || {
            let e = Error::state(NotStarted, "db", Phase::Ready, crate::State::Unstarted);
            Err(e)
        };
        let level = |e: Option<HealthEvent>| event_level(&e.expect("a change"), false);
        let mut d = data();
        assert_eq!(
            level(apply(&mut d, Probe::Ready, not_started(), 1, false, now)),
            log::Level::Debug
        );
        assert_eq!(
            level(apply(&mut d, Probe::Ready, Ok(()), 1, false, now)),
            log::Level::Debug
        );
        assert_eq!(
            level(apply(&mut d, Probe::Ready, fail(), 1, false, now)),
            log::Level::Warn
        );
        let recovered = apply(&mut d, Probe::Ready, Ok(()), 1, false, now).unwrap();
        assert_eq!(recovered.to_string(), "db: ready passes again");
        assert_eq!(event_level(&recovered, false), log::Level::Info);
        assert_eq!(
            event_level(&recovered, true),
            log::Level::Debug,
            "a quiet check"
        );
        let mut d = data();
        assert_eq!(
            level(apply(&mut d, Probe::Ready, fail(), 1, false, now)),
            log::Level::Warn
        );
    }

    #[test]
    fn pushed_failures_skip_the_threshold() {
        let now = SystemTime::now();
        let mut d = data();
        apply(&mut d, Probe::Ready, Ok(()), 5, false, now);
        let e = apply(&mut d, Probe::Ready, fail(), 5, true, now).expect("flips at once");
        assert!(e.pushed);
        assert_eq!(e.new, Status::Failing);
    }

    #[test]
    fn report_status_names_each_failing_component() {
        let mut report = HealthReport::single("app", Ok(()));
        assert!(report_status(&report).is_ok());
        report.insert("app.db", Err(Error::msg("gone")));
        report.insert("app.mq", Err(Error::msg("slow")));
        let e = report_status(&report).unwrap_err();
        assert_eq!(
            e.to_string(),
            "app.db: health failed: gone; app.mq: health failed: slow"
        );
    }
}

//! The [`HealthEvent`]s subscribers receive: one per change of status of one probe of one check.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Error;

use super::snapshot::{Probe, Status};

/// A change of status of one probe of one check, sent to every
/// [`subscriber`](crate::HealthChecker::subscribe).
#[derive(Debug, Clone)]
pub struct HealthEvent {
    pub(super) check: Arc<str>,
    pub(super) probe: Probe,
    pub(super) old: Status,
    pub(super) new: Status,
    pub(super) reason: Option<Error>,
    pub(super) at: SystemTime,
    pub(super) pushed: bool,
    /// Whether the change is no news (logged at debug level): see `registry::event_level`.
    pub(super) expected: bool,
}

impl HealthEvent {
    /// The name of the check that changed.
    pub fn check(&self) -> &str {
        &self.check
    }

    /// Which of its probes changed.
    pub fn probe(&self) -> Probe {
        self.probe
    }

    /// The status before the change.
    pub fn old_status(&self) -> Status {
        self.old
    }

    /// The status after the change.
    pub fn new_status(&self) -> Status {
        self.new
    }

    /// Why the probe now fails; `None` when it now passes.
    pub fn reason(&self) -> Option<&Error> {
        self.reason.as_ref()
    }

    /// When the change was recorded.
    pub fn at(&self) -> SystemTime {
        self.at
    }

    /// Whether the change came from an active report
    /// ([`Reporter::report`](super::Reporter::report)) rather than a poll.
    pub fn is_pushed(&self) -> bool {
        self.pushed
    }
}

impl fmt::Display for HealthEvent {
    /// The reason, when it names the check (`"db: ready failed: connection refused"`), else
    /// `"app: health is failing: app.db: health failed: gone"`; `"db: ready passes"` (a first
    /// result), `"db: ready passes again"` (after failing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (check, probe) = (&self.check, self.probe);
        match (self.new, self.old, &self.reason) {
            (Status::Passing, Status::Failing, _) => write!(f, "{check}: {probe} passes again"),
            (Status::Passing, _, _) => write!(f, "{check}: {probe} passes"),
            (_, _, Some(reason)) if reason.service() == Some(check) => write!(f, "{reason}"),
            (new, _, Some(reason)) => write!(f, "{check}: {probe} is {new}: {reason}"),
            (new, _, None) => write!(f, "{check}: {probe} is {new}"),
        }
    }
}

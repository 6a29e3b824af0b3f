//! What the runner tells systemd (see [systemd](super::Runner#systemd)): its phase as
//! `STATUS=`, `READY=1` and `STOPPING=1`, and `EXTEND_TIMEOUT_USEC=` while a start or a close
//! is still within its bound. Not under systemd, nothing here sends anything, nor wakes the
//! runner thread.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::systemd::Notifier;
use crate::thread::later;

/// How often the runner thread wakes during its start and its shutdown, under systemd only, to
/// send `EXTEND_TIMEOUT_USEC` again.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// What an extension asks for beyond the latest bound of the calls in progress: the time the
/// runner has, once that bound has passed, to begin its next step (which sends an extension of
/// its own). Never less than [`REFRESH`], so that an extension always lasts until the next one.
pub(super) const HANDOVER: Duration = Duration::from_secs(1);

/// The most service names a status lists; the others are counted (`and 3 more`).
const NAMES: usize = 3;

/// The runner's notifications, each sent at once and never waited for (see
/// [`Notifier`]); every method does nothing when the process is not under systemd.
pub(super) struct Notes {
    /// The process's notifier, when it is under systemd.
    notifier: Option<&'static Notifier>,
    /// The last status sent, so that a status is sent only when it changes.
    status: String,
    /// When the last extension of the current phase was sent, and until when it asked.
    extended: Option<(Instant, Instant)>,
    /// Whether `STOPPING=1` has been sent.
    stopping: bool,
}

impl Notes {
    /// The notes of a run: on when the process is under systemd (`NOTIFY_SOCKET` is usable).
    pub(super) fn new() -> Notes {
        let notifier = Notifier::get();
        Notes {
            notifier: notifier.is_enabled().then_some(notifier),
            status: String::new(),
            extended: None,
            stopping: false,
        }
    }

    /// Whether the process is under systemd: the runner then wakes at least every
    /// [`REFRESH`] during its start and its shutdown.
    pub(super) fn is_enabled(&self) -> bool {
        self.notifier.is_some()
    }

    /// When the runner thread, about to wait until `deadline`, must wake at the latest: at
    /// `deadline`, or sooner under systemd, when the last extension is due to be sent again.
    pub(super) fn wake_by(&self, deadline: Instant) -> Instant {
        match (self.notifier, self.extended) {
            (None, _) => deadline,
            (Some(_), Some((sent, _))) => deadline.min(later(sent, REFRESH)),
            (Some(_), None) => deadline.min(later(Instant::now(), REFRESH)),
        }
    }

    /// `STATUS=status`, unless it is the status sent last.
    pub(super) fn status(&mut self, status: String) {
        let Some(notifier) = self.notifier else {
            return;
        };
        if status != self.status {
            notifier.status(&status);
            self.status = status;
        }
    }

    /// `EXTEND_TIMEOUT_USEC=` for the time from now until `bound` (the latest bound of the
    /// calls in progress) and the [`HANDOVER`], when it is due: the first of the phase, once
    /// [`REFRESH`] has passed since the last one, or when the last one would run out before the
    /// next refresh while `bound` is later than what it asked for.
    pub(super) fn extend_until(&mut self, bound: Instant) {
        let Some(notifier) = self.notifier else {
            return;
        };
        let now = Instant::now();
        let until = later(bound, HANDOVER);
        if until > now && extension_due(self.extended, now, until) {
            notifier.extend_timeout(until - now);
            self.extended = Some((now, until));
        }
    }

    /// `READY=1` and `STATUS=running`, in one datagram: the run phase begins.
    pub(super) fn ready(&mut self) {
        let Some(notifier) = self.notifier else {
            return;
        };
        let status = "running".to_owned();
        notifier.send_with_status("READY=1", &status);
        self.status = status;
        // The start is over: systemd's start timeout no longer runs.
        self.extended = None;
    }

    /// `STOPPING=1` with `STATUS=status`, in one datagram, the first time (the shutdown
    /// begins); the status alone after that.
    pub(super) fn stopping(&mut self, status: String) {
        let Some(notifier) = self.notifier else {
            return;
        };
        if self.stopping {
            return self.status(status);
        }
        notifier.send_with_status("STOPPING=1", &status);
        self.stopping = true;
        self.status = status;
        // The stop timeout begins: the start's extensions count no more.
        self.extended = None;
    }
}

impl Notes {
    /// `MAINPID=pid` with `STATUS=status`, in one datagram (tried again as `READY=1` is): the
    /// new process of an upgrade is the service's main process from now on. Nothing more is
    /// sent after it: this process is no longer the one systemd watches, and a `STOPPING=1`
    /// or a status of its own would be taken as the service's.
    pub(super) fn handed_over(&mut self, pid: u32, status: String) {
        let Some(notifier) = self.notifier.take() else {
            return;
        };
        notifier.send_with_status(&format!("MAINPID={pid}"), &status);
    }
}

/// Whether an extension until `until` is due at `now`, the last one (when it was sent, until
/// when it asked) being `last`.
fn extension_due(last: Option<(Instant, Instant)>, now: Instant, until: Instant) -> bool {
    match last {
        None => true,
        Some((sent, asked)) => {
            now >= later(sent, REFRESH) || (asked < until && asked < later(now, REFRESH))
        }
    }
}

/// A status of steps in progress: `starting db, cache (2/5 ready)`, `closing api and 2 more
/// (0/5 done)`: `verb`, at most three `names` (the others counted), then `done` of `of` steps
/// `what`.
pub(super) fn doing<'a>(
    verb: &str,
    names: impl IntoIterator<Item = &'a str>,
    done: usize,
    of: usize,
    what: &str,
) -> String {
    let mut out = String::from(verb);
    let mut more = 0_usize;
    for (k, name) in names.into_iter().enumerate() {
        if k >= NAMES {
            more += 1;
            continue;
        }
        out.push_str(if k == 0 { " " } else { ", " });
        out.push_str(name);
    }
    if more > 0 {
        let _ = write!(out, " and {more} more");
    }
    let _ = write!(out, " ({done}/{of} {what})");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_names_three_steps_at_most() {
        assert_eq!(
            doing("starting", ["db"], 0, 5, "ready"),
            "starting db (0/5 ready)"
        );
        assert_eq!(
            doing("starting", ["db", "cache"], 2, 5, "ready"),
            "starting db, cache (2/5 ready)"
        );
        assert_eq!(
            doing("closing", ["a", "b", "c", "d", "e"], 1, 9, "done"),
            "closing a, b, c and 2 more (1/9 done)"
        );
    }

    #[test]
    fn an_extension_is_sent_again_once_refresh_has_passed_or_before_it_runs_out() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        assert!(extension_due(None, t, t + 60 * s));
        // Sent at t until t + 62 s: not again before the refresh, for a bound no later...
        let last = Some((t, t + 62 * s));
        assert!(!extension_due(last, t + s / 2, t + 62 * s));
        // ... nor for a later one the last still covers past the next refresh...
        assert!(!extension_due(last, t + s / 2, t + 90 * s));
        // ... but once the refresh has passed.
        assert!(extension_due(last, t + REFRESH, t + 61 * s));
        // One that runs out before the next refresh (it was sent for a bound 200 ms after it),
        // while a later bound needs more: at once; for a bound it covers: not before.
        let short = Some((t, t + HANDOVER + s / 5));
        assert!(extension_due(short, t + s / 2, t + 60 * s));
        assert!(!extension_due(short, t + s / 2, t + HANDOVER + s / 5));
    }
}

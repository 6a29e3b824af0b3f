//! [`StateMachine`]: start once, stop once, and run work only while started.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::RwLock;

use crate::error::{flatten_call, BoxError, Error, ErrorKind, Phase, Result};
use crate::error_buffer::ErrorBuffer;

/// Where a [`StateMachine`] is in its life.
///
/// ```text
/// Unstarted ─start─▶ Starting ─ok──▶ Started ─close─▶ Stopping ─ok──▶ Stopped
///                        └─err/panic─▶ StartFailed        └─err/panic─▶ StopFailed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Not started yet.
    Unstarted,
    /// Its start function is running.
    Starting,
    /// Started successfully and not yet asked to stop.
    Started,
    /// Its start function failed or panicked. It will not start again.
    StartFailed,
    /// Its stop function is running.
    Stopping,
    /// Stopped successfully.
    Stopped,
    /// Its stop function failed or panicked. It counts as stopped.
    StopFailed,
}

impl State {
    pub(crate) const ALL: [State; 7] = [
        State::Unstarted,
        State::Starting,
        State::Started,
        State::StartFailed,
        State::Stopping,
        State::Stopped,
        State::StopFailed,
    ];

    /// The state's name: `"Unstarted"`, `"Started"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unstarted => "Unstarted",
            State::Starting => "Starting",
            State::Started => "Started",
            State::StartFailed => "StartFailed",
            State::Stopping => "Stopping",
            State::Stopped => "Stopped",
            State::StopFailed => "StopFailed",
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        State::ALL[usize::from(v)]
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes a service start once, stop once, and run work only while started.
///
/// Embed one in a service and route its `start` and `close` through
/// [`start_once`](StateMachine::start_once) and [`stop_once`](StateMachine::stop_once); guard work
/// that needs the service running with [`if_started`](StateMachine::if_started).
///
/// # Locking contract
///
/// `start_once` and `stop_once` hold the machine's write lock while their function runs, and
/// `if_started` / `if_not_stopped` hold its read lock while theirs runs. So a close waits for a
/// start in progress and for running guarded work, and guarded work never overlaps a start or a
/// stop. Consequently, calling any of these four methods from inside a function passed to one of
/// them, on the same machine, deadlocks. [`state`](StateMachine::state),
/// [`ready`](StateMachine::ready) and [`healthy`](StateMachine::healthy) never block.
///
/// A panic inside the start or stop function is caught: the machine moves to
/// [`State::StartFailed`] or [`State::StopFailed`] and the call returns an error of kind
/// [`ErrorKind::Panicked`]. Nothing is poisoned.
///
/// ```
/// use lifecycle::{ErrorKind, State, StateMachine};
///
/// let sm = StateMachine::new();
/// assert!(!sm.if_started(|| unreachable!()));
/// sm.start_once("svc", || Ok(()))?;
/// assert_eq!(sm.state(), State::Started);
/// assert!(sm.if_started(|| { /* work that needs the service running */ }));
///
/// let again = sm.start_once("svc", || Ok(())).unwrap_err();
/// assert_eq!(again.kind(), ErrorKind::AlreadyStarted);
///
/// sm.stop_once("svc", || Ok(()))?;
/// assert_eq!(sm.state(), State::Stopped);
/// assert_eq!(sm.stop_once("svc", || Ok(())).unwrap_err().kind(), ErrorKind::AlreadyStopped);
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct StateMachine {
    // Write-held across start and stop functions, read-held across guarded work.
    gate: RwLock<()>,
    // Readable without the gate, so state(), ready() and healthy() never block.
    state: AtomicU8,
    errors: ErrorBuffer,
}

impl StateMachine {
    /// A machine in [`State::Unstarted`], with an empty [`ErrorBuffer`] of default capacity.
    pub fn new() -> StateMachine {
        StateMachine {
            gate: RwLock::new(()),
            state: AtomicU8::new(State::Unstarted as u8),
            errors: ErrorBuffer::new(),
        }
    }

    /// The current state. Never blocks.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Runs `start` if the machine is [`State::Unstarted`], moving it to `Started` or, if `start`
    /// fails or panics, to `StartFailed`. `name` names the service in errors.
    ///
    /// Holds the write lock while `start` runs (see the locking contract above).
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::AlreadyStarted`] if the machine is not `Unstarted`; `start` does not run.
    /// - The error `start` returns, naming `name` and [`Phase::Start`].
    /// - [`ErrorKind::Panicked`] if `start` panics.
    pub fn start_once<F>(&self, name: &str, start: F) -> Result<()>
    where
        F: FnOnce() -> std::result::Result<(), BoxError>,
    {
        let _gate = self.gate.write();
        let state = self.state();
        if state != State::Unstarted {
            return Err(Error::state(
                ErrorKind::AlreadyStarted,
                name,
                Phase::Start,
                state,
            ));
        }
        self.set(State::Starting);
        let outcome = catch_unwind(AssertUnwindSafe(|| start().map_err(Error::other)));
        let result = flatten_call(name, Phase::Start, outcome);
        self.set(if result.is_ok() {
            State::Started
        } else {
            State::StartFailed
        });
        result
    }

    /// Runs `stop` if the machine is [`State::Started`], moving it to `Stopped` or, if `stop`
    /// fails or panics, to `StopFailed`. `name` names the service in errors.
    ///
    /// Holds the write lock while `stop` runs, so it waits for a start in progress and for guarded
    /// work to finish first (see the locking contract above).
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::NotStarted`] if the machine was never started ("cannot stop unstarted
    ///   service"), [`ErrorKind::AlreadyStopped`] if it is stopped already, and
    ///   [`ErrorKind::InvalidState`] if its start failed; `stop` does not run.
    /// - The error `stop` returns, naming `name` and [`Phase::Close`].
    /// - [`ErrorKind::Panicked`] if `stop` panics.
    pub fn stop_once<F>(&self, name: &str, stop: F) -> Result<()>
    where
        F: FnOnce() -> std::result::Result<(), BoxError>,
    {
        let _gate = self.gate.write();
        let state = self.state();
        let refuse = |kind| Err(Error::state(kind, name, Phase::Close, state));
        match state {
            State::Started => {}
            State::Unstarted => return refuse(ErrorKind::NotStarted),
            State::Stopping | State::Stopped | State::StopFailed => {
                return refuse(ErrorKind::AlreadyStopped)
            }
            State::Starting | State::StartFailed => return refuse(ErrorKind::InvalidState),
        }
        self.set(State::Stopping);
        let outcome = catch_unwind(AssertUnwindSafe(|| stop().map_err(Error::other)));
        let result = flatten_call(name, Phase::Close, outcome);
        self.set(if result.is_ok() {
            State::Stopped
        } else {
            State::StopFailed
        });
        result
    }

    /// Runs `f` only if the machine is started, holding the read lock meanwhile so that the
    /// service cannot stop under it; returns whether `f` ran.
    ///
    /// Waits while a start or stop function is running. A panic in `f` propagates to the caller
    /// and leaves the machine as it was.
    pub fn if_started(&self, f: impl FnOnce()) -> bool {
        if self.state() != State::Started {
            return false;
        }
        let _gate = self.gate.read();
        if self.state() != State::Started {
            return false;
        }
        f();
        true
    }

    /// Runs `f` unless the machine is stopped (successfully or not), holding the read lock
    /// meanwhile; returns whether `f` ran.
    ///
    /// Waits while a start or stop function is running.
    pub fn if_not_stopped(&self, f: impl FnOnce()) -> bool {
        let stopped = |s| matches!(s, State::Stopped | State::StopFailed);
        if stopped(self.state()) {
            return false;
        }
        let _gate = self.gate.read();
        if stopped(self.state()) {
            return false;
        }
        f();
        true
    }

    /// `Ok` if started, otherwise an error of kind [`ErrorKind::NotStarted`] naming the state.
    /// Never blocks.
    ///
    /// Services override health with their own conditions; this is the baseline.
    ///
    /// # Errors
    ///
    /// When the machine is in any state but `Started`.
    pub fn healthy(&self) -> Result<()> {
        self.started_or(Phase::Health)
    }

    fn started_or(&self, phase: Phase) -> Result<()> {
        match self.state() {
            State::Started => Ok(()),
            state => Err(Error::unnamed_state(ErrorKind::NotStarted, phase, state)),
        }
    }

    /// `Ok` if started, otherwise an error of kind [`ErrorKind::NotStarted`] naming the state.
    /// Never blocks.
    ///
    /// # Errors
    ///
    /// When the machine is in any state but `Started`.
    pub fn ready(&self) -> Result<()> {
        self.started_or(Phase::Ready)
    }

    /// The buffer in which the service keeps its recent non-fatal errors, to report through its
    /// health.
    pub fn errors(&self) -> &ErrorBuffer {
        &self.errors
    }
}

impl Default for StateMachine {
    fn default() -> StateMachine {
        StateMachine::new()
    }
}

impl fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachine")
            .field("state", &self.state())
            .field("errors", &self.errors)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_start_cannot_be_stopped_or_restarted() {
        let sm = StateMachine::new();
        let e = sm.start_once("s", || Err("nope".into())).unwrap_err();
        assert_eq!(e.to_string(), "s: start failed: nope");
        assert_eq!(sm.state(), State::StartFailed);
        assert_eq!(
            sm.start_once("s", || Ok(())).unwrap_err().kind(),
            ErrorKind::AlreadyStarted
        );
        let stop = sm.stop_once("s", || Ok(())).unwrap_err();
        assert_eq!(stop.kind(), ErrorKind::InvalidState);
        assert_eq!(stop.to_string(), "s: cannot close in state StartFailed");
    }

    #[test]
    fn stop_unstarted_is_refused() {
        let sm = StateMachine::new();
        let e = sm.stop_once("s", || unreachable!()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotStarted);
        assert_eq!(
            e.to_string(),
            "s: cannot stop unstarted service (state: Unstarted)"
        );
        assert_eq!(sm.state(), State::Unstarted);
    }

    #[test]
    fn panics_become_errors_and_states() {
        let sm = StateMachine::new();
        let e = sm.start_once("p", || panic!("in start")).unwrap_err();
        assert!(e.is_panic());
        assert_eq!(sm.state(), State::StartFailed);

        let sm = StateMachine::new();
        sm.start_once("p", || Ok(())).unwrap();
        let e = sm.stop_once("p", || panic!("in stop")).unwrap_err();
        assert_eq!(e.to_string(), "p: panicked in close: in stop");
        assert_eq!(sm.state(), State::StopFailed);
        // The lock is not poisoned or held: further calls answer at once.
        assert!(!sm.if_not_stopped(|| ()));
        assert_eq!(
            sm.stop_once("p", || Ok(())).unwrap_err().kind(),
            ErrorKind::AlreadyStopped
        );
    }

    #[test]
    fn failed_stop_counts_as_stopped() {
        let sm = StateMachine::new();
        sm.start_once("s", || Ok(())).unwrap();
        assert!(sm.stop_once("s", || Err("leak".into())).is_err());
        assert_eq!(sm.state(), State::StopFailed);
        assert!(!sm.if_started(|| ()));
    }

    #[test]
    fn guards_follow_state() {
        let sm = StateMachine::new();
        assert!(sm.if_not_stopped(|| ()));
        assert!(!sm.if_started(|| ()));
        assert_eq!(sm.ready().unwrap_err().kind(), ErrorKind::NotStarted);
        sm.start_once("s", || Ok(())).unwrap();
        assert!(sm.healthy().is_ok());
        assert!(sm.if_not_stopped(|| ()));
        sm.stop_once("s", || Ok(())).unwrap();
        assert!(!sm.if_not_stopped(|| ()));
        assert_eq!(
            sm.healthy().unwrap_err().to_string(),
            "not started (state: Stopped)"
        );
    }

    #[test]
    fn state_is_visible_while_starting() {
        let sm = StateMachine::new();
        let (tx, rx) = crossbeam_channel::bounded(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                sm.start_once("s", || {
                    tx.send(()).unwrap();
                    done_rx.recv().unwrap();
                    Ok(())
                })
            });
            rx.recv().unwrap();
            // state() and ready() do not wait for the start to finish.
            assert_eq!(sm.state(), State::Starting);
            assert!(sm.ready().is_err());
            done_tx.send(()).unwrap();
        });
        assert_eq!(sm.state(), State::Started);
    }
}

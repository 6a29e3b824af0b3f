//! [`StateMachine`]: start once, close once, and run work only while started.

use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::error::{BoxError, Error, ErrorKind, Phase, Result};
use crate::error_buffer::ErrorBuffer;

/// Where a [`StateMachine`] is in its life.
///
/// ```text
/// Unstarted ─start─▶ Starting ─ok──▶ Started ─close─▶ Closing ─ok──▶ Closed
///                        └─err/panic─▶ StartFailed        └─err/panic─▶ CloseFailed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Not started yet.
    Unstarted,
    /// Its start function is running.
    Starting,
    /// Started successfully and not yet asked to close.
    Started,
    /// Its start function failed or panicked. It will not start again.
    StartFailed,
    /// Its close function is running.
    Closing,
    /// Closed successfully.
    Closed,
    /// Its close function failed or panicked. It counts as closed.
    CloseFailed,
}

impl State {
    pub(crate) const ALL: [State; 7] = [
        State::Unstarted,
        State::Starting,
        State::Started,
        State::StartFailed,
        State::Closing,
        State::Closed,
        State::CloseFailed,
    ];

    /// The state's name: `"Unstarted"`, `"Started"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unstarted => "Unstarted",
            State::Starting => "Starting",
            State::Started => "Started",
            State::StartFailed => "StartFailed",
            State::Closing => "Closing",
            State::Closed => "Closed",
            State::CloseFailed => "CloseFailed",
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        State::ALL[usize::from(v)]
    }

    fn is_closed(self) -> bool {
        matches!(self, State::Closed | State::CloseFailed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes a service start once, close once, and run work only while started.
///
/// Embed one in a service and route its `start` and `close` through
/// [`start_once`](StateMachine::start_once) and [`close_once`](StateMachine::close_once); guard
/// work that needs the service running with [`if_started`](StateMachine::if_started).
///
/// Its errors name the phase but not the service: the runner, [`MultiStart`](crate::MultiStart)
/// and the health checker add the service's name (or call [`Error::in_service`] yourself).
///
/// # Locking contract
///
/// `start_once` and `close_once` hold the machine's write lock while their function runs, and
/// `if_started` / `if_not_closed` hold its read lock while theirs runs. So a close waits for a
/// start in progress and for running guarded work, and guarded work never overlaps a start or a
/// close. Calling these methods from inside a function passed to one of them, on the same
/// machine and the same thread, never deadlocks: a start or close is refused at once with an
/// error of kind [`ErrorKind::InvalidState`], and guarded work inside a start or close is
/// refused the same way, while guarded work inside guarded work simply runs (the read lock is
/// already held). (A thread's record holds 16 nested calls; re-entry deeper than that, across
/// as many machines, is not caught.) [`state`](StateMachine::state), [`ready`](StateMachine::ready) and
/// [`healthy`](StateMachine::healthy) never block.
///
/// A panic inside the start or close function is caught: the machine moves to
/// [`State::StartFailed`] or [`State::CloseFailed`] and the call returns an error of kind
/// [`ErrorKind::Panicked`]. Nothing is poisoned.
///
/// ```
/// use lifecycle::{ErrorKind, State, StateMachine};
///
/// let sm = StateMachine::new();
/// assert_eq!(sm.if_started(|| 1).unwrap_err().kind(), ErrorKind::NotStarted);
/// sm.start_once(|| Ok(()))?;
/// assert_eq!(sm.state(), State::Started);
/// assert_eq!(sm.if_started(|| 1)?, 1); // work that needs the service running
///
/// let again = sm.start_once(|| Ok(())).unwrap_err();
/// assert_eq!(again.kind(), ErrorKind::AlreadyStarted);
///
/// sm.close_once(|| Ok(()))?;
/// assert_eq!(sm.state(), State::Closed);
/// assert_eq!(sm.close_once(|| Ok(())).unwrap_err().kind(), ErrorKind::AlreadyClosed);
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct StateMachine {
    // Write-held across start and close functions, read-held across guarded work.
    gate: RwLock<()>,
    // Readable without the gate, so state(), ready() and healthy() never block.
    state: AtomicU8,
    errors: ErrorBuffer,
}

/// How this thread holds a machine's gate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    Read,
    Write,
}

// The low bit of a machine's address is free to tag a write hold.
const _: () = assert!(std::mem::align_of::<StateMachine>() > 1);

/// How long guarded work waits for the gate between two looks at the state.
const GATE_SLICE: Duration = Duration::from_millis(1);

/// How many gates one thread's record holds; deeper nesting (guarded work inside guarded work
/// inside ..., on as many machines) is not recorded, so re-entry past it is not caught.
const RECORDED: usize = 16;

/// The gates this thread holds, innermost last: each machine's address, with its low bit set
/// for a write hold (a `StateMachine` is aligned to more than one byte). Plain cells, so that
/// recording a hold on the hot path of guarded work costs two stores.
struct Holds {
    depth: Cell<usize>,
    gates: [Cell<usize>; RECORDED],
}

thread_local! {
    static HOLDS: Holds = const {
        Holds {
            depth: Cell::new(0),
            gates: [const { Cell::new(0) }; RECORDED],
        }
    };
}

impl Holds {
    /// How this thread holds the gate of the machine `id`, if it does (as far as recorded).
    fn find(&self, id: usize) -> Option<Hold> {
        let depth = self.depth.get().min(RECORDED);
        self.gates[..depth].iter().rev().find_map(|gate| {
            let tag = gate.get();
            (tag & !1 == id).then_some(if tag & 1 == 1 {
                Hold::Write
            } else {
                Hold::Read
            })
        })
    }

    /// Records that this thread holds the gate of machine `id`, until the guard is dropped
    /// (also when the body panics).
    fn enter(&self, id: usize, hold: Hold) -> Entered<'_> {
        let depth = self.depth.get();
        if let Some(gate) = self.gates.get(depth) {
            gate.set(id | usize::from(hold == Hold::Write));
        }
        self.depth.set(depth + 1);
        Entered(self)
    }
}

/// A hold recorded in this thread's [`Holds`], until dropped.
struct Entered<'a>(&'a Holds);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

/// The error of a call from inside the machine's own start, close or guarded work.
fn reentry(phase: Phase) -> Error {
    Error::invalid_state(
        phase,
        "called from inside this service's own start, close or guarded work, \
         which would wait for itself",
    )
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

    /// The machine's identity while it is borrowed (it cannot move meanwhile).
    fn id(&self) -> usize {
        self as *const StateMachine as usize
    }

    /// Runs `start` if the machine is [`State::Unstarted`], moving it to `Started` or, if `start`
    /// fails or panics, to `StartFailed`.
    ///
    /// Holds the write lock while `start` runs (see the locking contract above).
    ///
    /// # Errors
    ///
    /// Each of [`Phase::Start`], for the caller to name the service:
    /// - [`ErrorKind::AlreadyStarted`] if the machine is not `Unstarted`; `start` does not run.
    /// - [`ErrorKind::InvalidState`] if called from inside this machine's own start, close or
    ///   guarded work; `start` does not run.
    /// - The error `start` returns; [`ErrorKind::Panicked`] if it panics.
    pub fn start_once<F>(&self, start: F) -> Result<()>
    where
        F: FnOnce() -> std::result::Result<(), BoxError>,
    {
        let refuse = |state| (state != State::Unstarted).then_some(ErrorKind::AlreadyStarted);
        let states = [State::Starting, State::Started, State::StartFailed];
        self.transition(Phase::Start, refuse, states, start)
    }

    /// Runs `close` if the machine is [`State::Started`], moving it to `Closed` or, if `close`
    /// fails or panics, to `CloseFailed`.
    ///
    /// Holds the write lock while `close` runs, so it waits for a start in progress and for
    /// guarded work to finish first (see the locking contract above).
    ///
    /// # Errors
    ///
    /// Each of [`Phase::Close`], for the caller to name the service:
    /// - [`ErrorKind::NotStarted`] if the machine was never started, [`ErrorKind::AlreadyClosed`]
    ///   if it is closing or closed already, and [`ErrorKind::InvalidState`] if its start failed
    ///   or if called from inside this machine's own start, close or guarded work; `close` does
    ///   not run.
    /// - The error `close` returns; [`ErrorKind::Panicked`] if it panics.
    pub fn close_once<F>(&self, close: F) -> Result<()>
    where
        F: FnOnce() -> std::result::Result<(), BoxError>,
    {
        let refuse = |state| match state {
            State::Started => None,
            State::Unstarted => Some(ErrorKind::NotStarted),
            State::Closing | State::Closed | State::CloseFailed => Some(ErrorKind::AlreadyClosed),
            State::Starting | State::StartFailed => Some(ErrorKind::InvalidState),
        };
        let states = [State::Closing, State::Closed, State::CloseFailed];
        self.transition(Phase::Close, refuse, states, close)
    }

    /// Runs `f` under the write lock unless `refuse` names a reason in the current state, in
    /// `[during, after success, after failure]` states.
    fn transition<F>(
        &self,
        phase: Phase,
        refuse: impl FnOnce(State) -> Option<ErrorKind>,
        [during, succeeded, failed]: [State; 3],
        f: F,
    ) -> Result<()>
    where
        F: FnOnce() -> std::result::Result<(), BoxError>,
    {
        HOLDS.with(|holds| {
            if holds.find(self.id()).is_some() {
                return Err(reentry(phase));
            }
            let _gate = self.gate.write();
            let state = self.state();
            if let Some(kind) = refuse(state) {
                return Err(Error::unnamed_state(kind, phase, state));
            }
            self.set(during);
            let _held = holds.enter(self.id(), Hold::Write);
            let outcome = catch_unwind(AssertUnwindSafe(|| f().map_err(Error::other)));
            let result = unnamed(phase, outcome);
            self.set(if result.is_ok() { succeeded } else { failed });
            result
        })
    }

    /// Runs `f` only if the machine is started, holding the read lock meanwhile so that the
    /// service cannot close under it, and returns what `f` returns.
    ///
    /// A close that has begun makes it return its error at once, even when it was waiting for
    /// the lock: a close that waits for this thread (joins it) is never waited on in return. A
    /// panic in `f` propagates to the caller and leaves the machine as it was.
    ///
    /// # Errors
    ///
    /// Of [`Phase::Run`], with the state, and `f` does not run: [`ErrorKind::NotStarted`] when
    /// the machine is not started (yet), [`ErrorKind::AlreadyClosed`] when it is closing or
    /// closed, and [`ErrorKind::InvalidState`] when called from inside this machine's own start
    /// or close.
    pub fn if_started<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        self.guarded(|s| s == State::Started, f)
    }

    /// Runs `f` unless the machine is closing or closed (successfully or not), holding the read
    /// lock meanwhile, and returns what `f` returns.
    ///
    /// Waits while a start function is running (on another thread); a close that begins makes
    /// it return its error at once, as [`if_started`](StateMachine::if_started).
    ///
    /// # Errors
    ///
    /// Of [`Phase::Run`], with the state, and `f` does not run: [`ErrorKind::AlreadyClosed`]
    /// when the machine is closing or closed, and [`ErrorKind::InvalidState`] when called from
    /// inside this machine's own start or close.
    pub fn if_not_closed<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        self.guarded(|s| !s.is_closed() && s != State::Closing, f)
    }

    fn guarded<R>(&self, allowed: impl Fn(State) -> bool, f: impl FnOnce() -> R) -> Result<R> {
        let refused = |state: State| {
            let kind = if state.is_closed() || state == State::Closing {
                ErrorKind::AlreadyClosed
            } else {
                ErrorKind::NotStarted
            };
            Err(Error::unnamed_state(kind, Phase::Run, state))
        };
        HOLDS.with(|holds| {
            match holds.find(self.id()) {
                // Guarded work inside guarded work: the read lock is held already.
                Some(Hold::Read) => {
                    let state = self.state();
                    return if allowed(state) {
                        Ok(f())
                    } else {
                        refused(state)
                    };
                }
                Some(Hold::Write) => return Err(reentry(Phase::Run)),
                None => {}
            }
            if !allowed(self.state()) {
                return refused(self.state());
            }
            // A start or close may hold the gate, and wait for this very thread (a close that
            // joins it): the wait is sliced, and given up once the state refuses the work.
            let _gate = match self.gate.try_read() {
                Some(gate) => gate,
                None => loop {
                    if let Some(gate) = self.gate.try_read_for(GATE_SLICE) {
                        break gate;
                    }
                    if !allowed(self.state()) {
                        return refused(self.state());
                    }
                },
            };
            let state = self.state();
            if !allowed(state) {
                return refused(state);
            }
            let _held = holds.enter(self.id(), Hold::Read);
            Ok(f())
        })
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

/// Like `flatten_call`, for a caller that does not know the service's name.
fn unnamed(phase: Phase, outcome: std::thread::Result<Result<()>>) -> Result<()> {
    match outcome {
        Ok(result) => result.map_err(|e| e.in_phase(phase)),
        Err(payload) => Err(Error::panicked_in(phase, &*payload)),
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
    fn failed_start_cannot_be_closed_or_restarted() {
        let sm = StateMachine::new();
        let e = sm.start_once(|| Err("nope".into())).unwrap_err();
        assert_eq!(e.to_string(), "start failed: nope");
        assert_eq!(
            e.in_service("s", Phase::Start).to_string(),
            "s: start failed: nope"
        );
        assert_eq!(sm.state(), State::StartFailed);
        assert_eq!(
            sm.start_once(|| Ok(())).unwrap_err().kind(),
            ErrorKind::AlreadyStarted
        );
        let close = sm.close_once(|| Ok(())).unwrap_err();
        assert_eq!(close.kind(), ErrorKind::InvalidState);
        assert_eq!(close.to_string(), "cannot close in state StartFailed");
    }

    #[test]
    fn closing_an_unstarted_machine_is_refused() {
        let sm = StateMachine::new();
        let e = sm.close_once(|| unreachable!()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotStarted);
        assert_eq!(
            e.to_string(),
            "cannot close a service that was never started (state: Unstarted)"
        );
        assert_eq!(sm.state(), State::Unstarted);
    }

    #[test]
    fn panics_become_errors_and_states() {
        let sm = StateMachine::new();
        let e = sm.start_once(|| panic!("in start")).unwrap_err();
        assert!(e.is_panic());
        assert_eq!(sm.state(), State::StartFailed);

        let sm = StateMachine::new();
        sm.start_once(|| Ok(())).unwrap();
        let e = sm.close_once(|| panic!("in close")).unwrap_err();
        assert_eq!(
            e.in_service("p", Phase::Close).to_string(),
            "p: panicked in close: in close"
        );
        assert_eq!(sm.state(), State::CloseFailed);
        // The lock is not poisoned or held: further calls answer at once.
        assert!(sm.if_not_closed(|| ()).is_err());
        assert_eq!(
            sm.close_once(|| Ok(())).unwrap_err().kind(),
            ErrorKind::AlreadyClosed
        );
    }

    #[test]
    fn failed_close_counts_as_closed() {
        let sm = StateMachine::new();
        sm.start_once(|| Ok(())).unwrap();
        assert!(sm.close_once(|| Err("leak".into())).is_err());
        assert_eq!(sm.state(), State::CloseFailed);
        assert_eq!(
            sm.if_started(|| ()).unwrap_err().kind(),
            ErrorKind::AlreadyClosed
        );
    }

    #[test]
    fn guards_follow_state() {
        let sm = StateMachine::new();
        assert!(sm.if_not_closed(|| ()).is_ok());
        assert_eq!(
            sm.if_started(|| ()).unwrap_err().kind(),
            ErrorKind::NotStarted
        );
        assert_eq!(sm.ready().unwrap_err().kind(), ErrorKind::NotStarted);
        sm.start_once(|| Ok(())).unwrap();
        assert!(sm.healthy().is_ok());
        assert_eq!(sm.if_not_closed(|| 5).unwrap(), 5);
        sm.close_once(|| Ok(())).unwrap();
        assert!(sm.if_not_closed(|| ()).is_err());
        assert_eq!(
            sm.healthy().unwrap_err().to_string(),
            "not started (state: Closed)"
        );
    }

    #[test]
    fn state_is_visible_while_starting() {
        let sm = StateMachine::new();
        let (tx, rx) = crossbeam_channel::bounded(0);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                sm.start_once(|| {
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

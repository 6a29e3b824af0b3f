//! The threads: [`Joinable`] (a named thread that can be joined with a deadline) and the per-check
//! [`Worker`] that makes the calls into user code, so that the poller never does.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use crate::error::{flatten_call, Error, Phase, Result};
use crate::service::{HealthReport, HealthReporter};

/// A named thread whose end can be awaited with a deadline.
///
/// `std` offers no `join_timeout`: the thread holds the sending side of a channel and drops it as
/// the very last thing it does, so a receiver that sees the channel disconnected knows the join
/// will not block (beyond the thread's exit itself).
pub(super) struct Joinable {
    name: String,
    handle: Option<JoinHandle<()>>,
    exited: Receiver<()>,
}

impl Joinable {
    pub(super) fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<Joinable> {
        let (guard, exited) = crossbeam_channel::bounded::<()>(0);
        let handle = thread::Builder::new().name(name.clone()).spawn(move || {
            // Declared first, dropped last: after `f` and everything it captured.
            let _guard = guard;
            f();
        })?;
        Ok(Joinable {
            name,
            handle: Some(handle),
            exited,
        })
    }

    /// Joins the thread if it ends before `deadline`; returns whether it has been joined.
    pub(super) fn join_until(&mut self, deadline: Instant) -> bool {
        match self.exited.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => self.join(),
            Err(RecvTimeoutError::Timeout) | Ok(()) => false,
        }
    }

    /// Whether the thread has ended (or is ending, past everything it was given to run), so that
    /// joining it will not wait. Never blocks.
    pub(super) fn has_ended(&self) -> bool {
        matches!(self.exited.try_recv(), Err(TryRecvError::Disconnected))
    }

    fn join(&mut self) -> bool {
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::warn!("thread \"{}\" panicked", self.name);
            }
        }
        true
    }
}

/// What the worker found in one poll.
#[derive(Debug)]
pub(super) struct PollResult {
    /// The registration the worker belongs to.
    pub(super) id: u64,
    pub(super) ready: Result<()>,
    pub(super) health: Result<HealthReport>,
    /// When the call to `ready()` began.
    pub(super) began: Instant,
    pub(super) duration: Duration,
}

const IDLE: u8 = 0;
const IN_READY: u8 = 1;
const IN_HEALTH: u8 = 2;

/// The thread `"health <name>"` of one registered check.
///
/// It waits for a request, calls `ready()` then `health_report()` (catching panics), sends the
/// result to the poller and waits again. It holds at most one request: the poller only sends one
/// when the previous result has come back, so a call stuck in user code never piles up threads or
/// requests. It ends when its request channel is dropped, after the call in progress returns.
pub(super) struct Worker {
    thread: Joinable,
    requests: Option<Sender<()>>,
    phase: Arc<AtomicU8>,
}

impl Worker {
    pub(super) fn spawn(
        id: u64,
        name: Arc<str>,
        reporter: Arc<dyn HealthReporter>,
        results: Sender<PollResult>,
    ) -> io::Result<Worker> {
        let (requests, incoming) = crossbeam_channel::bounded::<()>(1);
        let phase = Arc::new(AtomicU8::new(IDLE));
        let in_call = Arc::clone(&phase);
        let thread = Joinable::spawn(format!("health {name}"), move || {
            for () in incoming.iter() {
                let began = Instant::now();
                in_call.store(IN_READY, Ordering::Relaxed);
                let ready = catch_unwind(AssertUnwindSafe(|| reporter.ready()));
                let ready = flatten_call(&name, Phase::Ready, ready);
                in_call.store(IN_HEALTH, Ordering::Relaxed);
                let health = catch_unwind(AssertUnwindSafe(|| reporter.health_report()))
                    .map_err(|payload| Error::panicked(&name, Phase::Health, &*payload));
                in_call.store(IDLE, Ordering::Relaxed);
                let duration = began.elapsed();
                let result = PollResult {
                    id,
                    ready,
                    health,
                    began,
                    duration,
                };
                if results.send(result).is_err() {
                    break;
                }
            }
        })?;
        Ok(Worker {
            thread,
            requests: Some(requests),
            phase,
        })
    }

    /// Asks for a poll without waiting; returns whether the request was handed over (`false`
    /// only if the thread has ended, which the catch-all in its loop makes a bug).
    pub(super) fn request(&self) -> bool {
        match &self.requests {
            Some(requests) => !matches!(requests.try_send(()), Err(TrySendError::Disconnected(_))),
            None => false,
        }
    }

    /// The call the worker is in: [`Phase::Health`] while in `health_report()`, [`Phase::Ready`]
    /// otherwise (including before it has picked up a request).
    pub(super) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            IN_HEALTH => Phase::Health,
            _ => Phase::Ready,
        }
    }

    /// Tells the thread to end once its current call, if any, returns.
    pub(super) fn disconnect(&mut self) {
        self.requests = None;
    }

    /// [`disconnect`](Worker::disconnect)s and joins the thread if it ends before `deadline`.
    pub(super) fn join_until(&mut self, deadline: Instant) -> bool {
        self.disconnect();
        self.thread.join_until(deadline)
    }

    /// Whether the thread has ended; see [`Joinable::has_ended`].
    pub(super) fn has_ended(&self) -> bool {
        self.thread.has_ended()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_until_is_bounded_and_joins_once_ended() {
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let mut t = Joinable::spawn("joinable test".into(), move || {
            let _ = wait.recv();
        })
        .unwrap();
        assert!(!t.has_ended());
        assert!(!t.join_until(Instant::now() + Duration::from_millis(10)));
        drop(release);
        assert!(t.join_until(Instant::now() + Duration::from_secs(10)));
        assert!(t.has_ended());
    }

    struct Flaky;
    impl HealthReporter for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn ready(&self) -> Result<()> {
            panic!("boom")
        }
    }

    #[test]
    fn worker_turns_panics_into_errors_and_ends_when_disconnected() {
        let (results, rx) = crossbeam_channel::unbounded();
        let mut w = Worker::spawn(7, "flaky".into(), Arc::new(Flaky), results).unwrap();
        assert!(w.request());
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(
            r.ready.unwrap_err().to_string(),
            "flaky: panicked in ready: boom"
        );
        // The default health_report calls ready() too, and panics with it.
        assert!(r.health.unwrap_err().is_panic());
        assert!(w.join_until(Instant::now() + Duration::from_secs(10)));
        assert!(!w.request(), "ended");
    }
}

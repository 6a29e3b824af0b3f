//! The per-check [`Worker`] thread that makes the calls into user code, so that the poller
//! never does.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::error::{flatten_call, Error, Phase, Result};
use crate::service::{HealthReport, HealthReporter};
use crate::thread::Thread;

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
    /// `None` once joined.
    thread: Option<Thread<()>>,
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
        let thread = Thread::spawn(format!("health {name}"), move || {
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
            thread: Some(thread),
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
        join_until(&mut self.thread, deadline)
    }

    /// Whether the thread has ended, so that joining it will not wait. Never blocks.
    pub(super) fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(Thread::has_ended)
    }
}

/// Joins the thread in `slot` if it ends before `deadline` (then the slot is empty); returns
/// whether it has been joined.
pub(super) fn join_until(slot: &mut Option<Thread<()>>, deadline: Instant) -> bool {
    match slot.take().map(|t| t.join_until(deadline)) {
        Some(Err(thread)) => {
            *slot = Some(thread);
            false
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

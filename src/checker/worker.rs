//! The per-check [`Worker`]: it makes the calls into user code on a thread of the checker's
//! [pool](crate::pool), so that the poller never does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::{flatten_call, Error, Phase, Result};
use crate::pool::{Call, CallPool};
use crate::service::{HealthReport, HealthReporter};

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

/// The calls of one registered check: a poll is a call `"health <name>"` on a thread of the
/// checker's pool, which calls `ready()` then `health_report()` (catching panics) and sends the
/// result to the poller.
///
/// It has at most one call at a time: the poller only asks for a poll once the previous result
/// has come back, so a call stuck in user code holds one thread and never piles up calls.
pub(super) struct Worker {
    id: u64,
    name: Arc<str>,
    reporter: Arc<dyn HealthReporter>,
    results: Sender<PollResult>,
    /// `None` once disconnected: no more calls.
    pool: Option<Arc<CallPool>>,
    /// The last call, until it has been seen to end.
    call: Option<Call<()>>,
    phase: Arc<AtomicU8>,
}

impl Worker {
    pub(super) fn new(
        pool: Arc<CallPool>,
        id: u64,
        name: Arc<str>,
        reporter: Arc<dyn HealthReporter>,
        results: Sender<PollResult>,
    ) -> Worker {
        Worker {
            id,
            name,
            reporter,
            results,
            pool: Some(pool),
            call: None,
            phase: Arc::new(AtomicU8::new(IDLE)),
        }
    }

    /// Asks for a poll without waiting.
    ///
    /// # Errors
    ///
    /// Once disconnected (the checker is closing), or when the pool has no thread and none
    /// can be spawned: the poll is then not made, and the caller records the failure.
    pub(super) fn request(&mut self) -> Result<()> {
        let Some(pool) = &self.pool else {
            return Err(Error::msg("the checker is closing: no more polls"));
        };
        let (id, name) = (self.id, Arc::clone(&self.name));
        let (reporter, results) = (Arc::clone(&self.reporter), self.results.clone());
        let in_call = Arc::clone(&self.phase);
        let label = format!("health {name}");
        let call = pool.call(label, move || {
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
            // The poller may be gone (the checker closing): the result is not needed then.
            let _ = results.send(result);
        });
        let call = call.map_err(|e| Error::msg(format!("no thread to poll it: {e}")))?;
        self.call = Some(call);
        Ok(())
    }

    /// The call the worker is in: [`Phase::Health`] while in `health_report()`, [`Phase::Ready`]
    /// otherwise (including before its call has begun).
    pub(super) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            IN_HEALTH => Phase::Health,
            _ => Phase::Ready,
        }
    }

    /// No more calls; the one in progress, if any, goes on until it returns.
    pub(super) fn disconnect(&mut self) {
        self.pool = None;
    }

    /// [`disconnect`](Worker::disconnect)s and waits until `deadline` for the call in progress,
    /// if any, to end; returns whether none is left.
    pub(super) fn join_until(&mut self, deadline: Instant) -> bool {
        self.disconnect();
        match self.call.take().map(|c| c.wait_until(deadline)) {
            Some(Err(call)) => {
                self.call = Some(call);
                false
            }
            _ => true,
        }
    }

    /// Whether no call is in progress, so that [`join_until`](Worker::join_until) will not
    /// wait. Never blocks.
    pub(super) fn has_ended(&self) -> bool {
        self.call.as_ref().is_none_or(Call::has_ended)
    }
}

/// Joins the thread in `slot` if it ends before `deadline` (then the slot is empty); returns
/// whether it has been joined.
pub(super) fn join_until(slot: &mut Option<crate::thread::Thread<()>>, deadline: Instant) -> bool {
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
        let pool = Arc::new(CallPool::new("worker test"));
        let mut w = Worker::new(pool, 7, "flaky".into(), Arc::new(Flaky), results);
        w.request().unwrap();
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(
            r.ready.unwrap_err().to_string(),
            "flaky: panicked in ready: boom"
        );
        // The default health_report calls ready() too, and panics with it.
        assert!(r.health.unwrap_err().is_panic());
        assert!(w.join_until(Instant::now() + Duration::from_secs(10)));
        assert!(w.request().is_err(), "ended");
    }
}

//! A health reporter the test controls (its status, whether it blocks or panics, a channel
//! that tells each call), a started checker, and a subscription whose waits need not know the
//! order of events: what the checker's behaviour tests share.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lifecycle::health::{HealthEvent, Probe, Status};
use lifecycle::{HealthChecker, HealthReport, HealthReporter, Result, Service, StartContext};
use parking_lot::Mutex;

use super::WATCHDOG;

/// An interval so long that only the first poll and `poll_now` ever poll.
pub const NEVER: Duration = Duration::from_secs(3600);

/// A reporter the test controls: its status, whether it blocks or panics, and a channel that
/// tells each time `ready()` is called.
pub struct Fake {
    pub name: &'static str,
    pub ready: Mutex<Result<()>>,
    pub report: Mutex<Option<HealthReport>>,
    pub calls: AtomicUsize,
    pub called: Sender<usize>,
    pub gate: Mutex<Option<Receiver<()>>>,
    pub panic_in_ready: AtomicBool,
    pub panic_in_health: AtomicBool,
}

impl Fake {
    pub fn new(name: &'static str) -> (Arc<Fake>, Receiver<usize>) {
        let (called, calls) = crossbeam_channel::unbounded();
        let fake = Fake {
            name,
            ready: Mutex::new(Ok(())),
            report: Mutex::new(None),
            calls: AtomicUsize::new(0),
            called,
            gate: Mutex::new(None),
            panic_in_ready: AtomicBool::new(false),
            panic_in_health: AtomicBool::new(false),
        };
        (Arc::new(fake), calls)
    }

    pub fn set_ready(&self, status: Result<()>) {
        *self.ready.lock() = status;
    }

    /// Makes the next calls to `ready()` block until the returned sender is dropped.
    pub fn block(&self) -> Sender<()> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        *self.gate.lock() = Some(rx);
        tx
    }

    pub fn unblock(&self, gate: Sender<()>) {
        *self.gate.lock() = None;
        drop(gate);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl HealthReporter for Fake {
    fn name(&self) -> &str {
        self.name
    }

    fn ready(&self) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.called.send(n);
        let gate = self.gate.lock().clone();
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        if self.panic_in_ready.load(Ordering::SeqCst) {
            panic!("{} exploded", self.name);
        }
        self.ready.lock().clone()
    }

    fn health_report(&self) -> HealthReport {
        if self.panic_in_health.load(Ordering::SeqCst) {
            panic!("{} report exploded", self.name);
        }
        let custom = self.report.lock().clone();
        custom.unwrap_or_else(|| HealthReport::single(self.name, self.ready.lock().clone()))
    }
}

pub fn started(interval: Duration, timeout: Duration) -> HealthChecker {
    let checker = HealthChecker::builder("1.2.3", "abc123")
        .interval(interval)
        .timeout(timeout)
        .build();
    checker.start(&StartContext::background()).unwrap();
    checker
}

/// A subscription that remembers the events a wait skipped, so that waits for several events
/// need not know their order.
pub struct Events {
    pub rx: Receiver<HealthEvent>,
    pub skipped: RefCell<VecDeque<HealthEvent>>,
}

impl Events {
    /// Forgets the events skipped so far: later waits see only what happens from now on.
    pub fn forget(&self) {
        self.skipped.borrow_mut().clear();
        while self.rx.try_recv().is_ok() {}
    }
}

pub fn subscribe(checker: &HealthChecker) -> Events {
    Events {
        rx: checker.subscribe(),
        skipped: RefCell::default(),
    }
}

/// The first event, skipped earlier or still to come, that `what` accepts.
#[track_caller]
pub fn wait_event(events: &Events, what: impl Fn(&HealthEvent) -> bool) -> HealthEvent {
    let mut skipped = events.skipped.borrow_mut();
    if let Some(i) = skipped.iter().position(&what) {
        return skipped.remove(i).unwrap();
    }
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match events.rx.recv_deadline(deadline) {
            Ok(e) if what(&e) => return e,
            Ok(e) => skipped.push_back(e),
            Err(e) => panic!("no matching event within {WATCHDOG:?}: {e}; skipped: {skipped:?}"),
        }
    }
}

pub fn is(check: &'static str, probe: Probe, new: Status) -> impl Fn(&HealthEvent) -> bool {
    move |e| e.check() == check && e.probe() == probe && e.new_status() == new
}

#[track_caller]
pub fn recv_call(calls: &Receiver<usize>) -> usize {
    calls.recv_timeout(WATCHDOG).expect("reporter called")
}

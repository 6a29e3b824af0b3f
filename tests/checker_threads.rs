//! `HealthChecker` leaves no thread behind: after `close`, unregister or drop, the process is
//! back to its baseline thread count.
//!
//! Alone in this file (one test, one binary) because the count is per process: other tests
//! running concurrently would start threads of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use lifecycle::{
    HealthChecker, HealthEvent, HealthReporter, Probe, Result, Service, StartContext, Status,
};

const WATCHDOG: Duration = Duration::from_secs(10);

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .expect("a Threads line");
    line.trim().parse().expect("a number")
}

#[track_caller]
fn back_to(baseline: usize, when: &str) {
    let deadline = Instant::now() + WATCHDOG;
    while threads() != baseline {
        assert!(
            Instant::now() < deadline,
            "{when}: {} threads, expected {baseline}",
            threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Fine(&'static str);

impl HealthReporter for Fine {
    fn name(&self) -> &str {
        self.0
    }
    fn ready(&self) -> Result<()> {
        Ok(())
    }
}

#[track_caller]
fn wait_passing(events: &Receiver<HealthEvent>, names: &[&str]) {
    let mut left: Vec<&str> = names.to_vec();
    let deadline = Instant::now() + WATCHDOG;
    while !left.is_empty() {
        let e = events.recv_deadline(deadline).expect("first polls");
        if e.probe() == Probe::Ready && e.new_status() == Status::Passing {
            left.retain(|n| *n != e.check());
        }
    }
}

#[test]
fn every_thread_is_joined() {
    let baseline = threads();

    // Started, polled, closed: poller and workers all joined by close.
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(10))
        .build();
    let events = checker.subscribe();
    for name in ["a", "b", "c"] {
        checker.register(Arc::new(Fine(name))).unwrap();
    }
    assert_eq!(threads(), baseline + 3, "one worker per check");
    checker.start(&StartContext::background()).unwrap();
    assert_eq!(threads(), baseline + 4, "and the poller");
    wait_passing(&events, &["a", "b", "c"]);

    // Unregister joins that check's worker.
    checker.unregister("b").unwrap();
    assert_eq!(threads(), baseline + 3);

    checker.close().unwrap();
    back_to(baseline, "after close");
    drop(checker);

    // Never started, only dropped: the workers are joined too.
    let checker = HealthChecker::new("v", "s");
    checker.register(Arc::new(Fine("x"))).unwrap();
    assert_eq!(threads(), baseline + 1);
    drop(checker);
    back_to(baseline, "after drop");

    // Never started, closed: an error (it was not started), and the workers are joined anyway.
    let checker = HealthChecker::new("v", "s");
    checker.register(Arc::new(Fine("y"))).unwrap();
    assert_eq!(threads(), baseline + 1);
    let e = checker.close().unwrap_err();
    assert_eq!(e.kind(), lifecycle::ErrorKind::NotStarted);
    back_to(baseline, "after closing an unstarted checker");
    drop(checker);
}

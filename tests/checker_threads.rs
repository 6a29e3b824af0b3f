//! `HealthChecker` leaves no thread behind: after `close`, unregister or drop, the process is
//! back to its baseline thread count.
//!
//! Alone in this file (one test, one binary) because the count is per process: other tests
//! running concurrently would start threads of their own.

mod common;

use std::time::Duration;

use common::procfs::{thread_count, wait_thread_count};
use common::WATCHDOG;
use lifecycle::{HealthChecker, HealthReporter, Result, Service, StartContext};

struct Fine(&'static str);

impl HealthReporter for Fine {
    fn name(&self) -> &str {
        self.0
    }
    fn ready(&self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn every_thread_is_joined() {
    let baseline = thread_count();

    // Started, polled, closed: the poller and the call threads all joined by close.
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(10))
        .build();
    for name in ["a", "b", "c"] {
        checker.register(Fine(name)).unwrap();
    }
    assert_eq!(thread_count(), baseline, "no thread before the first poll");
    checker.start(&StartContext::background()).unwrap();
    let polled = checker
        .wait_for_poll(WATCHDOG)
        .expect("a poll of every check");
    assert!(polled.is_ready().is_passing(), "{polled:?}");
    assert_eq!(polled.checks().len(), 3);
    // The poller, the call pool's manager and its threads (reused: as many as calls ran at
    // once, at most the pool's floor of 8 for three quick checks).
    let running = thread_count();
    assert!(
        (baseline + 3..=baseline + 10).contains(&running),
        "{running} threads, baseline {baseline}"
    );

    // Unregistering leaves no thread of its own behind.
    checker.unregister("b").unwrap();
    assert!(thread_count() <= running, "after unregister");

    checker.close().unwrap();
    wait_thread_count(baseline, "after close");
    drop(checker);

    // Never started, only dropped: no thread was ever spawned.
    let checker = HealthChecker::new("v", "s");
    checker.register(Fine("x")).unwrap();
    assert_eq!(thread_count(), baseline);
    drop(checker);
    wait_thread_count(baseline, "after drop");

    // Never started, closed: an error (it was not started), and no thread is left.
    let checker = HealthChecker::new("v", "s");
    checker.register(Fine("y")).unwrap();
    assert_eq!(thread_count(), baseline);
    let e = checker.close().unwrap_err();
    assert_eq!(e.kind(), lifecycle::ErrorKind::NotStarted);
    wait_thread_count(baseline, "after closing an unstarted checker");
    drop(checker);
}

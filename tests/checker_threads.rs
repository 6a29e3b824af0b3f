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

    // Started, polled, closed: poller and workers all joined by close.
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(10))
        .build();
    for name in ["a", "b", "c"] {
        checker.register(Fine(name)).unwrap();
    }
    assert_eq!(thread_count(), baseline + 3, "one worker per check");
    checker.start(&StartContext::background()).unwrap();
    assert_eq!(thread_count(), baseline + 4, "and the poller");
    let polled = checker
        .wait_for_poll(WATCHDOG)
        .expect("a poll of every check");
    assert!(polled.is_ready().is_passing(), "{polled:?}");
    assert_eq!(polled.checks().len(), 3);

    // Unregister joins that check's worker.
    checker.unregister("b").unwrap();
    wait_thread_count(baseline + 3, "after unregister");

    checker.close().unwrap();
    wait_thread_count(baseline, "after close");
    drop(checker);

    // Never started, only dropped: the workers are joined too.
    let checker = HealthChecker::new("v", "s");
    checker.register(Fine("x")).unwrap();
    assert_eq!(thread_count(), baseline + 1);
    drop(checker);
    wait_thread_count(baseline, "after drop");

    // Never started, closed: an error (it was not started), and the workers are joined anyway.
    let checker = HealthChecker::new("v", "s");
    checker.register(Fine("y")).unwrap();
    assert_eq!(thread_count(), baseline + 1);
    let e = checker.close().unwrap_err();
    assert_eq!(e.kind(), lifecycle::ErrorKind::NotStarted);
    wait_thread_count(baseline, "after closing an unstarted checker");
    drop(checker);
}

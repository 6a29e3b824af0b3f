//! The test harness (`lifecycle::testing`), through the public API.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::WATCHDOG;
use crossbeam_channel::{bounded, Receiver, Sender};
use lifecycle::testing::Harness;
use lifecycle::{
    ErrorKind, HealthReporter, Phase, Result, Service, StartContext, StateMachine, Worker,
};

/// A worker that sends its name on `closed` once its closure has returned.
fn worker(name: &'static str, closed: &Sender<&'static str>) -> Worker {
    let closed = closed.clone();
    Worker::new(name, move |stop| {
        stop.wait();
        closed.send(name)?;
        Ok(())
    })
}

/// A service whose health a test switches, and whose close can be made to hang.
struct Switch {
    name: &'static str,
    sm: StateMachine,
    healthy: AtomicBool,
    hang_close: Option<Receiver<()>>,
}

impl Switch {
    fn new(name: &'static str) -> Arc<Switch> {
        Arc::new(Switch {
            name,
            sm: StateMachine::new(),
            healthy: AtomicBool::new(true),
            hang_close: None,
        })
    }
}

impl HealthReporter for Switch {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()?;
        match self.healthy.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err("replica lag".into()),
        }
    }
}

impl Service for Switch {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.sm.start_once(|| Ok(()))
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            if let Some(hang) = &self.hang_close {
                let _ = hang.recv();
            }
            Ok(())
        })
    }
}

#[test]
fn starts_in_order_each_once_ready_and_closes_in_reverse() {
    let (closed_tx, closed) = bounded(4);
    let (connect_tx, connect) = bounded::<()>(1);
    let connected = Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    let db = Worker::new("db", move |stop| {
        connect.recv()?;
        flag.store(true, Ordering::SeqCst);
        stop.wait();
        Ok(())
    })
    .ready_when(move |_| match connected.load(Ordering::SeqCst) {
        true => Ok(()),
        false => Err("connecting".into()),
    });
    let db = Arc::new(db);
    connect_tx.send(()).unwrap();
    let harness = Harness::start([
        db.clone() as Arc<dyn Service>,
        Arc::new(worker("api", &closed_tx)),
    ])
    .unwrap();
    assert!(
        db.ready().is_ok(),
        "start returns once every service is ready"
    );
    harness.check().unwrap();
    harness.close().unwrap();
    assert_eq!(closed.try_iter().collect::<Vec<_>>(), ["api"]);
    assert!(db.ready().is_err());
}

#[test]
fn a_service_that_is_not_ready_in_time_is_named_and_the_others_are_closed() {
    let (closed_tx, closed) = bounded(4);
    let never = Worker::new("search", |stop| {
        stop.wait();
        Ok(())
    })
    .ready_when(|_| Err("index not loaded".into()));
    let e = Harness::builder()
        .ready_timeout(Duration::from_millis(20))
        .start([
            Arc::new(worker("db", &closed_tx)) as Arc<dyn Service>,
            Arc::new(never),
        ])
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.errors().next().unwrap().service(), Some("search"));
    assert!(e.to_string().contains("index not loaded"), "{e}");
    assert_eq!(closed.recv_timeout(WATCHDOG).unwrap(), "db");
}

#[test]
fn a_service_that_turns_unhealthy_fails_the_test() {
    let db = Switch::new("db");
    let harness = Harness::start([db.clone()]).unwrap();
    harness.check().unwrap();
    db.healthy.store(false, Ordering::SeqCst);
    let e = harness.check().unwrap_err();
    assert_eq!(e.errors().next().unwrap().service(), Some("db"));
    assert!(
        e.to_string()
            .contains("turned unhealthy while the test ran"),
        "{e}"
    );
    assert!(e.to_string().contains("replica lag"), "{e}");
    // Dropping the harness fails the test with the same failure.
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(harness))).unwrap_err();
    let message = dropped.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("db") && message.contains("replica lag"),
        "{message}"
    );
}

#[test]
fn a_test_that_panics_still_closes_everything() {
    let (closed_tx, closed) = bounded(4);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _harness = Harness::start([worker("db", &closed_tx), worker("api", &closed_tx)]);
        panic!("the test body fails");
    }));
    assert!(panicked.is_err());
    assert_eq!(closed.try_iter().collect::<Vec<_>>(), ["api", "db"]);
}

#[test]
fn a_start_or_close_slower_than_the_bound_is_reported() {
    let slow = Worker::with_setup(
        "slow",
        |_ctx| {
            // Slower than the bound below however fast the machine is.
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        },
        |_, stop| {
            stop.wait();
            Ok(())
        },
    );
    let harness = Harness::builder()
        .slow_after(Duration::from_millis(1))
        .start([slow])
        .unwrap();
    let e = harness.close().unwrap_err();
    let first = e.errors().next().unwrap();
    assert_eq!(
        (first.service(), first.phase()),
        (Some("slow"), Some(Phase::Start))
    );
    assert!(
        first.to_string().contains("more than the bound of 1ms"),
        "{first}"
    );
}

#[test]
fn a_close_that_hangs_is_abandoned_and_named() {
    let (release, hang) = bounded::<()>(0);
    let stuck = Arc::new(Switch {
        name: "stuck",
        sm: StateMachine::new(),
        healthy: AtomicBool::new(true),
        hang_close: Some(hang),
    });
    let harness = Harness::builder()
        .close_timeout(Duration::from_millis(20))
        .start([stuck])
        .unwrap();
    let e = harness.close().unwrap_err();
    assert_eq!(e.service(), Some("stuck"));
    assert!(e.is_timeout(), "{e}");
    assert!(
        e.to_string()
            .contains("thread \"close stuck\" is left running"),
        "{e}"
    );
    drop(release); // the abandoned close returns, and its thread ends
}

#[test]
fn names_are_checked_before_anything_starts() {
    let (closed_tx, closed) = bounded(4);
    let e = Harness::start([worker("db", &closed_tx), worker("db", &closed_tx)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    drop(closed_tx);
    assert!(closed.recv().is_err(), "nothing started, nothing closed");
}

#[test]
fn a_close_slower_than_the_bound_is_reported() {
    let slow = Worker::new("slow", |stop| {
        stop.wait();
        // Slower than the bound below however fast the machine is.
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    });
    let harness = Harness::builder()
        .slow_after(Duration::from_millis(10))
        .start([slow])
        .unwrap();
    let e = harness.close().unwrap_err();
    assert_eq!((e.service(), e.phase()), (Some("slow"), Some(Phase::Close)));
    assert!(e.to_string().contains("more than the bound of 10ms"), "{e}");
}

/// Ready, but its health report fails from the start.
struct Unhealthy(StateMachine);

impl HealthReporter for Unhealthy {
    fn name(&self) -> &str {
        "cache"
    }
    fn ready(&self) -> Result<()> {
        self.0.ready()
    }
    fn health_report(&self) -> lifecycle::HealthReport {
        lifecycle::HealthReport::single("cache", Err("evicting everything".into()))
    }
}

impl Service for Unhealthy {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.0.start_once(|| Ok(()))
    }
    fn close(&self) -> Result<()> {
        self.0.close_once(|| Ok(()))
    }
}

#[test]
fn a_service_unhealthy_once_ready_is_named_by_the_start() {
    let e = Harness::builder()
        .ready_timeout(Duration::from_millis(50))
        .start([Unhealthy(StateMachine::new())])
        .unwrap_err();
    assert_eq!(e.errors().next().unwrap().service(), Some("cache"), "{e}");
    assert!(e.to_string().contains("evicting everything"), "{e}");
    assert!(
        !e.to_string().contains("while the test ran"),
        "it never was healthy: {e}"
    );
}

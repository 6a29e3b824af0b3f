//! Behaviour of `HealthChecker`, through its public API only.
//!
//! No test depends on the machine being fast: waits are for events or conditions, each with a
//! generous watchdog, and time is only ever asserted as a lower bound.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, WATCHDOG};
use crossbeam_channel::{Receiver, Sender};
use lifecycle::health::{CheckOptions, HealthEvent, Probe, Status};
use lifecycle::{
    Error, ErrorKind, HealthChecker, HealthReport, HealthReporter, Phase, Result, Service,
    StartContext,
};
use parking_lot::Mutex;

/// An interval so long that only the first poll and `poll_now` ever poll.
const NEVER: Duration = Duration::from_secs(3600);

/// A reporter the test controls: its status, whether it blocks or panics, and a channel that
/// tells each time `ready()` is called.
struct Fake {
    name: &'static str,
    ready: Mutex<Result<()>>,
    report: Mutex<Option<HealthReport>>,
    calls: AtomicUsize,
    called: Sender<usize>,
    gate: Mutex<Option<Receiver<()>>>,
    panic_in_ready: AtomicBool,
    panic_in_health: AtomicBool,
}

impl Fake {
    fn new(name: &'static str) -> (Arc<Fake>, Receiver<usize>) {
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

    fn set_ready(&self, status: Result<()>) {
        *self.ready.lock() = status;
    }

    /// Makes the next calls to `ready()` block until the returned sender is dropped.
    fn block(&self) -> Sender<()> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        *self.gate.lock() = Some(rx);
        tx
    }

    fn unblock(&self, gate: Sender<()>) {
        *self.gate.lock() = None;
        drop(gate);
    }

    fn calls(&self) -> usize {
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

fn started(interval: Duration, timeout: Duration) -> HealthChecker {
    let checker = HealthChecker::builder("1.2.3", "abc123")
        .interval(interval)
        .timeout(timeout)
        .build();
    checker.start(&StartContext::background()).unwrap();
    checker
}

/// A subscription that remembers the events a wait skipped, so that waits for several events
/// need not know their order.
struct Events {
    rx: Receiver<HealthEvent>,
    skipped: RefCell<VecDeque<HealthEvent>>,
}

impl Events {
    /// Forgets the events skipped so far: later waits see only what happens from now on.
    fn forget(&self) {
        self.skipped.borrow_mut().clear();
        while self.rx.try_recv().is_ok() {}
    }
}

fn subscribe(checker: &HealthChecker) -> Events {
    Events {
        rx: checker.subscribe(),
        skipped: RefCell::default(),
    }
}

/// The first event, skipped earlier or still to come, that `what` accepts.
#[track_caller]
fn wait_event(events: &Events, what: impl Fn(&HealthEvent) -> bool) -> HealthEvent {
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

fn is(check: &'static str, probe: Probe, new: Status) -> impl Fn(&HealthEvent) -> bool {
    move |e| e.check() == check && e.probe() == probe && e.new_status() == new
}

#[track_caller]
fn recv_call(calls: &Receiver<usize>) -> usize {
    calls.recv_timeout(WATCHDOG).expect("reporter called")
}

#[test]
fn version_and_sha_are_exposed() {
    let checker = HealthChecker::new("2.0.1", "deadbeef");
    let snap = checker.snapshot();
    assert_eq!((snap.version(), snap.sha()), ("2.0.1", "deadbeef"));
    assert_eq!(checker.name(), "health checker");
}

#[test]
fn duplicate_name_is_an_error() {
    let checker = HealthChecker::new("v", "s");
    let (a, _) = Fake::new("db");
    let (b, _) = Fake::new("db");
    checker.register(a).unwrap();
    let e = checker.register(b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    assert_eq!(e.to_string(), "db: already registered");
    assert_eq!(checker.snapshot().checks().len(), 1);
}

#[test]
fn unregister_removes_the_check() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let (api, _) = Fake::new("api");
    let db_reporter = checker.register(db).unwrap();
    checker.register(api).unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));

    checker.unregister("db").unwrap();
    let names: Vec<String> = checker
        .snapshot()
        .checks()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(names, ["api"]);
    let again = checker.unregister("db").unwrap_err();
    assert_eq!(again.kind(), ErrorKind::NotRegistered);
    assert_eq!(again.to_string(), "db: not registered");
    let push = db_reporter.report(Probe::Ready, Ok(())).unwrap_err();
    assert_eq!(push.kind(), ErrorKind::NotRegistered);

    // A new registration under the same name is a new check; the old handle stays dead.
    let (db2, _) = Fake::new("db");
    checker.register(db2).unwrap();
    assert!(db_reporter.report(Probe::Ready, Ok(())).is_err());
    checker.close().unwrap();
}

#[test]
fn checker_that_is_not_running_is_not_ready() {
    let checker = HealthChecker::new("v", "s");
    let ready = checker.snapshot().is_ready();
    assert!(!ready.is_passing());
    assert_eq!(ready.failures().len(), 1);
    assert_eq!(
        ready.failure("health checker").unwrap().to_string(),
        "health checker: not started (state: Unstarted)"
    );
    assert!(checker.ready().is_err());
    checker.start(&StartContext::background()).unwrap();
    assert!(checker.ready().is_ok());
    assert!(
        checker.snapshot().is_healthy().is_passing(),
        "no checks, started: healthy"
    );
    checker.close().unwrap();
    let ready = checker.snapshot().is_ready();
    assert!(!ready.is_passing());
    let why = ready.failure("health checker").unwrap().to_string();
    assert!(why.contains("Closed"), "{why}");
    let (late, _) = Fake::new("late");
    let e = checker.register(late).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyClosed);
}

#[test]
fn readiness_aggregates_and_names_what_fails() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let (api, _) = Fake::new("api");
    api.set_ready(Err(Error::msg("warming up")));
    checker.register(db).unwrap();
    checker.register(api).unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));
    wait_event(&events, is("api", Probe::Ready, Status::Failing));

    let snap = checker.snapshot();
    let ready = snap.is_ready();
    assert!(!ready.is_passing());
    assert_eq!(ready.failures().len(), 1);
    let api = ready.failure("api").unwrap();
    assert_eq!(api.to_string(), "api: ready failed: warming up");
    assert_eq!(api.phase(), Some(Phase::Ready));
    let healthy = snap.is_healthy();
    assert!(!healthy.is_passing());
    assert_eq!(
        healthy.failures().map(|(n, _)| n).collect::<Vec<_>>(),
        ["api"]
    );
    // The verdict as one error, naming its check and probe.
    let e = ready.into_result().unwrap_err();
    assert_eq!(e.to_string(), "api: ready failed: warming up");

    let db = snap.check("db").unwrap();
    assert!(db.ready().is_passing() && db.health().is_passing());
    assert!(db.last_polled().is_some() && db.last_poll_duration().is_some());
    assert_eq!(db.ready().consecutive_failures(), 0);
    assert!(db.ready().last_change().is_some());
    let api = snap.check("api").unwrap();
    assert_eq!(api.ready().status(), Status::Failing);
    assert_eq!(api.ready().consecutive_failures(), 1);
    assert!(!api.is_stuck() && !api.is_stale());
    checker.close().unwrap();
}

#[test]
fn health_report_sub_components_are_reported() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (app, _) = Fake::new("app");
    let mut report = HealthReport::single("app", Ok(()));
    report.insert("app.db.pool", Err(Error::msg("no connections")));
    *app.report.lock() = Some(report);
    checker.register(app).unwrap();
    let e = wait_event(&events, is("app", Probe::Health, Status::Failing));
    assert_eq!(
        e.reason().unwrap().to_string(),
        "app.db.pool: health failed: no connections"
    );
    assert!(
        checker.snapshot().is_ready().is_passing(),
        "ready() itself passes"
    );
    let snap = checker.snapshot();
    let check = snap.check("app").unwrap();
    let names: Vec<_> = check.report().unwrap().iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["app", "app.db.pool"]);
    checker.close().unwrap();
}

#[test]
fn hung_reporter_times_out_without_blocking_anything_else() {
    let timeout = Duration::from_millis(100);
    let checker = started(Duration::from_millis(20), timeout);
    let events = subscribe(&checker);
    let (slow, slow_calls) = Fake::new("slow");
    let (fast, fast_calls) = Fake::new("fast");
    let gate = slow.block();
    let began = Instant::now();
    checker.register(slow.clone()).unwrap();
    checker.register(fast.clone()).unwrap();

    let e = wait_event(&events, is("slow", Probe::Ready, Status::Failing));
    assert!(began.elapsed() >= timeout, "not before the timeout");
    let reason = e.reason().unwrap();
    assert!(reason.is_timeout());
    assert_eq!(reason.to_string(), "slow: ready timed out after 100ms");

    // Readers answer from the cache while the call hangs.
    let snap = checker.snapshot();
    let ready = snap.is_ready();
    assert!(!ready.is_passing());
    assert!(ready.failure("slow").unwrap().is_timeout());
    assert!(ready.failure("fast").is_none());
    assert!(snap.check("slow").unwrap().is_stuck());
    assert_eq!(snap.stuck_calls(), 1);

    // The other check is still polled, round after round; the stuck one is not called again.
    let seen = fast.calls();
    while fast.calls() < seen + 5 {
        recv_call(&fast_calls);
    }
    assert_eq!(slow.calls(), 1, "no second call while the first is stuck");
    let failures = checker
        .snapshot()
        .check("slow")
        .unwrap()
        .ready()
        .consecutive_failures();
    assert!(failures >= 1);

    // Released, the late result is recorded and the check recovers.
    slow.unblock(gate);
    wait_event(&events, is("slow", Probe::Ready, Status::Passing));
    assert_eq!(checker.snapshot().stuck_calls(), 0);
    assert!(!checker.snapshot().check("slow").unwrap().is_stuck());
    while slow.calls() < 2 {
        recv_call(&slow_calls); // polled again
    }
    checker.close().unwrap();
}

#[test]
fn panicking_reporter_fails_and_the_checker_keeps_working() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (bomb, _) = Fake::new("bomb");
    let (calm, _) = Fake::new("calm");
    bomb.panic_in_ready.store(true, Ordering::SeqCst);
    checker.register(bomb.clone()).unwrap();
    checker.register(calm).unwrap();

    let e = wait_event(&events, is("bomb", Probe::Ready, Status::Failing));
    let reason = e.reason().unwrap();
    assert!(reason.is_panic());
    assert_eq!(reason.phase(), Some(Phase::Ready));
    assert_eq!(reason.to_string(), "bomb: panicked in ready: bomb exploded");
    wait_event(&events, is("calm", Probe::Ready, Status::Passing));

    // A panic in health_report fails the health probe only.
    bomb.panic_in_ready.store(false, Ordering::SeqCst);
    bomb.panic_in_health.store(true, Ordering::SeqCst);
    events.forget();
    checker.poll_now();
    let e = wait_event(&events, is("bomb", Probe::Health, Status::Failing));
    assert_eq!(
        e.reason().unwrap().to_string(),
        "bomb: panicked in health: bomb report exploded"
    );
    wait_event(&events, is("bomb", Probe::Ready, Status::Passing));
    let snap = checker.snapshot();
    assert!(snap.check("bomb").unwrap().report().is_none());

    bomb.panic_in_health.store(false, Ordering::SeqCst);
    events.forget();
    checker.poll_now();
    wait_event(&events, is("bomb", Probe::Health, Status::Passing));
    assert!(checker.snapshot().is_healthy().is_passing());
    checker.close().unwrap();
}

#[test]
fn stale_results_read_as_failing() {
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(10))
        .stale_after(Duration::from_millis(50))
        .build();
    checker.start(&StartContext::background()).unwrap();
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    checker.register(db).unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));

    checker.pause();
    assert!(checker.snapshot().is_paused());
    // Nothing is published while paused: the check goes stale with time alone.
    eventually("stale", || !checker.snapshot().is_ready().is_passing());
    let snap = checker.snapshot();
    let msg = snap.is_ready().failure("db").unwrap().to_string();
    assert!(
        msg.starts_with("db: ready failed: stale: last polled "),
        "{msg}"
    );
    assert!(!snap.is_healthy().is_passing());
    let check = snap.check("db").unwrap();
    assert!(check.is_stale());
    assert!(check.age().unwrap() > Duration::from_millis(50));
    assert_eq!(check.ready().status(), Status::Failing);

    checker.resume();
    // Fresh again at the next poll; retried, since a machine that stalls longer than the 50 ms
    // staleness bound between the poll and the read sees it stale again.
    eventually("fresh again", || checker.snapshot().is_ready().is_passing());
    checker.close().unwrap();
}

#[test]
fn failure_threshold_delays_the_flip() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, db_calls) = Fake::new("db");
    checker
        .register_with(db.clone(), CheckOptions::new().failure_threshold(3))
        .unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));
    recv_call(&db_calls);

    db.set_ready(Err(Error::msg("blip")));
    let failures = || {
        let snap = checker.snapshot();
        let ready = snap.check("db").unwrap().ready();
        (ready.consecutive_failures(), ready.status())
    };
    for n in 1..=2 {
        let snap = checker.wait_for_poll(WATCHDOG).unwrap();
        let ready = snap.check("db").unwrap().ready();
        assert_eq!(
            (ready.consecutive_failures(), ready.status()),
            (n, Status::Passing),
            "still passing after {n} failures"
        );
        let err = ready.error().unwrap();
        assert_eq!(err.to_string(), "db: ready failed: blip");
        assert!(snap.is_ready().is_passing());
    }
    let snap = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(!snap.is_ready().is_passing());
    let e = wait_event(&events, is("db", Probe::Ready, Status::Failing));
    assert_eq!(e.old_status(), Status::Passing);
    assert_eq!(failures(), (3, Status::Failing));

    // One success resets the count.
    db.set_ready(Ok(()));
    checker.wait_for_poll(WATCHDOG).unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));
    assert_eq!(failures(), (0, Status::Passing));
    checker.close().unwrap();
}

#[test]
fn informational_checks_do_not_count() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (metrics, _) = Fake::new("metrics");
    metrics.set_ready(Err(Error::msg("exporter down")));
    let (db, _) = Fake::new("db");
    checker
        .register_with(metrics, CheckOptions::new().informational(true))
        .unwrap();
    checker.register(db).unwrap();
    wait_event(&events, is("metrics", Probe::Health, Status::Failing));
    wait_event(&events, is("db", Probe::Health, Status::Passing));

    let snap = checker.snapshot();
    assert!(snap.is_healthy().is_passing());
    assert!(snap.is_ready().is_passing());
    let metrics = snap.check("metrics").unwrap();
    assert!(metrics.is_informational());
    assert_eq!(metrics.health().status(), Status::Failing);
    checker.close().unwrap();
}

#[test]
fn groups_are_judged_apart() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let (cache, _) = Fake::new("cache");
    cache.set_ready(Err(Error::msg("flaky")));
    checker
        .register_with(db, CheckOptions::new().group("core"))
        .unwrap();
    checker
        .register_with(cache, CheckOptions::new().group("optional"))
        .unwrap();
    wait_event(&events, is("db", Probe::Ready, Status::Passing));
    wait_event(&events, is("cache", Probe::Ready, Status::Failing));

    let snap = checker.snapshot();
    assert!(snap.is_ready_in("core").is_passing());
    assert!(snap.is_healthy_in("core").is_passing());
    let optional = snap.is_ready_in("optional");
    assert!(!optional.is_passing());
    let failing: Vec<_> = optional.failures().map(|(n, _)| n).collect();
    assert_eq!(failing, ["cache"]);
    assert!(!snap.is_ready().is_passing(), "overall counts every group");
    assert_eq!(
        snap.groups().into_iter().collect::<Vec<_>>(),
        ["core", "optional"]
    );
    assert_eq!(snap.check("db").unwrap().group(), Some("core"));
    checker.close().unwrap();
}

#[test]
fn active_report_updates_at_once_and_emits_an_event() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let reporter = checker.register(db).unwrap();
    assert_eq!(reporter.name(), "db");
    wait_event(&events, is("db", Probe::Health, Status::Passing));

    reporter
        .report(Probe::Health, Err(Error::msg("replica lag")))
        .unwrap();
    // Visible immediately: no poll happens (the interval is an hour).
    let snap = checker.snapshot();
    let healthy = snap.is_healthy();
    assert!(!healthy.is_passing());
    assert_eq!(
        healthy.failure("db").unwrap().to_string(),
        "db: health failed: replica lag"
    );
    assert!(
        snap.is_ready().is_passing(),
        "only the health probe was reported"
    );
    let e = wait_event(&events, is("db", Probe::Health, Status::Failing));
    assert!(e.is_pushed());
    assert_eq!(e.probe(), Probe::Health);
    assert_eq!(
        (e.old_status(), e.new_status()),
        (Status::Passing, Status::Failing)
    );
    assert_eq!(
        e.reason().unwrap().to_string(),
        "db: health failed: replica lag"
    );

    assert_eq!(
        e.to_string(),
        "db: health failed: replica lag",
        "events display on one line"
    );

    reporter.report(Probe::Health, Ok(())).unwrap();
    assert!(checker.snapshot().is_healthy().is_passing());
    let e = wait_event(&events, |e| {
        e.is_pushed() && e.new_status() == Status::Passing
    });
    assert!(e.reason().is_none());
    assert_eq!(e.to_string(), "db: health passes again");

    // Once the checker is closed, and once it is gone, reports have no check to go to.
    checker.close().unwrap();
    let e = reporter.report(Probe::Ready, Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotRegistered);
    drop(checker);
    let e = reporter.report(Probe::Ready, Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotRegistered);
    assert_eq!(e.to_string(), "db: not registered");
}

/// The seed's example: the ledger depends on postgres and reacts to its health at once.
#[test]
fn a_service_reacts_to_another_ones_events() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (postgres, _) = Fake::new("postgres");
    let (ledger, _) = Fake::new("ledger");
    let postgres_reporter = checker.register(postgres).unwrap();
    let ledger_reporter = checker.register(ledger.clone()).unwrap();
    wait_event(&events, is("postgres", Probe::Ready, Status::Passing));
    wait_event(&events, is("ledger", Probe::Ready, Status::Passing));

    let watch = checker.subscribe();
    let pushed =
        |status| move |e: &HealthEvent| e.is_pushed() && is("ledger", Probe::Ready, status)(e);
    std::thread::scope(|s| {
        s.spawn(|| {
            // The ledger's reaction: runs until the checker closes (the channel disconnects).
            for event in watch.iter() {
                if event.check() == "postgres" && event.probe() == Probe::Ready {
                    let status = match event.reason() {
                        Some(why) => Err(Error::msg(format!("depends on postgres: {why}"))),
                        None => Ok(()),
                    };
                    // Its own ready() agrees from now on, and the change is pushed at once.
                    ledger.set_ready(status.clone());
                    if let Err(e) = ledger_reporter.report(Probe::Ready, status) {
                        assert_eq!(e.kind(), ErrorKind::NotRegistered, "only once closed");
                    }
                }
            }
        });

        // Postgres reports its own trouble (no poll happens: the interval is an hour, so every
        // change below comes from a push and the order of events is fixed).
        let refused = Err(Error::msg("connection refused"));
        postgres_reporter.report(Probe::Ready, refused).unwrap();
        let e = wait_event(&events, is("postgres", Probe::Ready, Status::Failing));
        assert_eq!(e.old_status(), Status::Passing);
        assert_eq!(
            e.reason().unwrap().to_string(),
            "postgres: ready failed: connection refused"
        );
        let e = wait_event(&events, pushed(Status::Failing));
        assert_eq!(
            e.reason().unwrap().to_string(),
            "ledger: ready failed: depends on postgres: postgres: ready failed: connection refused"
        );

        postgres_reporter.report(Probe::Ready, Ok(())).unwrap();
        wait_event(&events, pushed(Status::Passing));
        checker.close().unwrap();
    });
}

#[test]
fn slow_or_gone_subscribers_never_block_the_checker() {
    let checker = HealthChecker::builder("v", "s")
        .interval(NEVER)
        .event_capacity(1)
        .build();
    checker.start(&StartContext::background()).unwrap();
    let _never_read = checker.subscribe();
    drop(checker.subscribe());
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let reporter = checker.register(db).unwrap();
    wait_event(&events, |e| e.check() == "db");
    for n in 0..10 {
        let status = if n % 2 == 0 {
            Err(Error::msg("x"))
        } else {
            Ok(())
        };
        reporter.report(Probe::Ready, status).unwrap();
    }
    assert!(checker.snapshot().dropped_events() > 0);
    assert!(
        checker.snapshot().is_ready().is_passing(),
        "the last report (ok) is in effect"
    );
    checker.close().unwrap();
    assert!(
        events.rx.iter().count() <= 1,
        "disconnected after close, after what was buffered"
    );
}

#[test]
fn checks_registered_while_running_are_polled_at_once() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (a, _) = Fake::new("a");
    checker.register(a).unwrap();
    wait_event(&events, is("a", Probe::Ready, Status::Passing));
    let (b, b_calls) = Fake::new("b");
    checker.register(b).unwrap();
    recv_call(&b_calls);
    wait_event(&events, is("b", Probe::Ready, Status::Passing));
    checker.close().unwrap();
}

#[test]
fn unknown_checks_are_not_ready() {
    let checker = HealthChecker::new("v", "s");
    let (db, _) = Fake::new("db");
    checker.register(db).unwrap();
    checker.pause();
    checker.start(&StartContext::background()).unwrap();
    let ready = checker.snapshot().is_ready();
    assert!(!ready.is_passing());
    assert_eq!(
        ready.failure("db").unwrap().to_string(),
        "db: ready failed: not checked yet"
    );
    // Paused: no poll would come, and waiting for one says so at once.
    let e = checker.wait_for_poll(WATCHDOG).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    checker.close().unwrap();
}

#[test]
fn close_is_bounded_and_names_stuck_workers() {
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(50))
        .close_timeout(Duration::from_millis(100))
        .build();
    checker.start(&StartContext::background()).unwrap();
    let events = subscribe(&checker);
    let (stuck, _) = Fake::new("stuck");
    let gate = stuck.block();
    checker.register(stuck.clone()).unwrap();
    wait_event(&events, is("stuck", Probe::Ready, Status::Failing));

    let e = checker.close().unwrap_err();
    assert_eq!(e.service(), Some("stuck"));
    assert_eq!(e.phase(), Some(Phase::Ready));
    assert!(e.to_string().contains("still running at close"), "{e}");
    stuck.unblock(gate);
}

#[test]
fn unregistering_a_stuck_check_does_not_wait_for_it() {
    let checker = started(Duration::from_millis(20), Duration::from_millis(50));
    let events = subscribe(&checker);
    let (stuck, stuck_calls) = Fake::new("stuck");
    let gate = stuck.block();
    checker.register(stuck.clone()).unwrap();
    wait_event(&events, is("stuck", Probe::Ready, Status::Failing));

    checker.unregister("stuck").unwrap();
    assert!(checker.snapshot().check("stuck").is_none());
    assert_eq!(
        checker.snapshot().stuck_calls(),
        1,
        "still counted: its call has not returned"
    );

    stuck.unblock(gate);
    eventually("orphan's call returned", || {
        checker.snapshot().stuck_calls() == 0
    });
    assert_eq!(recv_call(&stuck_calls), 1);
    assert!(stuck_calls.try_recv().is_err(), "never called again");
    checker.close().unwrap();
}

#[test]
fn a_poll_that_began_before_a_push_does_not_override_it() {
    let checker = started(NEVER, Duration::from_secs(60));
    let (fake, calls) = Fake::new("svc");
    let reporter = checker.register(fake.clone()).unwrap();
    let first = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(first.check("svc").unwrap().ready().is_passing());
    // Every call so far has returned and been recorded; the next comes only when asked.
    while calls.try_recv().is_ok() {}
    let polled = |c: &HealthChecker| c.snapshot().check("svc").unwrap().last_polled();
    let before = polled(&checker);

    // A poll is in the middle of ready() when a push says the opposite.
    let gate = fake.block();
    checker.poll_now();
    recv_call(&calls);
    reporter
        .report(Probe::Ready, Err(Error::msg("pushed: shutting down")))
        .unwrap();
    fake.unblock(gate);
    // Not `wait_for_poll`: the poll it would ask for would begin after the push.
    eventually("the in-flight poll is recorded", || {
        polled(&checker) != before
    });

    // Its result (passing) was read before the push: the push stands.
    let snap = checker.snapshot();
    let ready = snap.check("svc").unwrap().ready();
    assert_eq!(ready.status(), Status::Failing);
    assert!(ready
        .error()
        .unwrap()
        .to_string()
        .contains("pushed: shutting down"));

    // A poll that begins after the push is applied as usual.
    let next = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(next.check("svc").unwrap().ready().is_passing());
    checker.close().unwrap();
}

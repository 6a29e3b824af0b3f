//! Behaviour of `HealthChecker`, through its public API only: registration, verdicts, timeouts,
//! panics, staleness, thresholds, informational checks and groups (events, pushes and stuck
//! calls are in `checker_events.rs`).
//!
//! No test depends on the machine being fast: waits are for events or conditions, each with a
//! generous watchdog, and time is only ever asserted as a lower bound.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::fake::{is, recv_call, started, subscribe, wait_event, Fake, NEVER};
use common::{eventually, WATCHDOG};
use lifecycle::health::{CheckOptions, Probe, Status};
use lifecycle::{
    Error, ErrorKind, HealthChecker, HealthReport, HealthReporter, Phase, Service, StartContext,
};

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
fn a_poll_asked_for_during_a_call_in_progress_follows_it_at_once() {
    // Polled once an hour: only a poll asked for can come in time.
    let checker = started(NEVER, WATCHDOG);
    let (fake, calls) = Fake::new("slow");
    let gate = fake.block();
    checker.register(fake.clone()).unwrap();
    // The first poll is in progress, held, when a poll is asked for (as `wait_for_poll`
    // does): its result began before the asking, so it will not do.
    recv_call(&calls);
    checker.poll_now();
    fake.unblock(gate);
    // The next call follows the held one at once, not an hour later.
    assert_eq!(recv_call(&calls), 2);
    let snapshot = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(snapshot.check("slow").unwrap().ready().is_passing());
    checker.close().unwrap();
}

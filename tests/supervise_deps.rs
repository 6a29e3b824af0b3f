//! Supervision among dependencies and health, through the public API: the checks while a
//! service restarts (its own, and its dependants'), a shutdown during a backoff, a dependant's
//! restart after its need's, rest_for_one, and restarts on failed health polls. Every wait is
//! bounded by the watchdog; no test sleeps to let something happen.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle::{ErrorKind, HealthChecker, ServiceOptions, State, Worker};

use common::flaky::{
    factory, fast, next, report, runner, spawn_run, wait_running, Note, Order, MS,
};
use common::WATCHDOG;

#[test]
fn a_shutdown_during_a_backoff_is_at_once_and_the_checks_say_restarting() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (orders_tx, orders) = crossbeam_channel::unbounded();
    let (_api_tx, api_orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &orders, |_| false);
    let api = factory("api", &notes_tx, &api_orders, |_| false);
    let checker = Arc::new(
        HealthChecker::builder("v", "s")
            .interval(Duration::from_millis(10))
            .build(),
    );
    // A backoff of an hour: only the shutdown can end it.
    let hour = Duration::from_secs(3600);
    let runner = runner()
        .health(checker.clone())
        .restart_budget(10, Duration::MAX)
        .restartable(
            db,
            ServiceOptions::new()
                .restart_backoff(hour, hour)
                .restart_on_failure(),
        )
        .restartable(api, fast().restart_on_failure());
    let (handle, reports) = spawn_run(runner);
    // db's first instance runs (api's notes are not waited for).
    wait_running(&notes, "db", 0);
    orders_tx.send(Order::Fail).unwrap();
    let says = |check: &str, what: &str| {
        let what = what.to_owned();
        let check = check.to_owned();
        common::eventually(&format!("{check} says {what}"), || {
            let snapshot = checker.snapshot();
            let error = snapshot
                .check(&check)
                .and_then(|c| c.ready().error().cloned());
            error.is_some_and(|e| e.to_string().contains(&what))
        });
    };
    says("db", "restarting (attempt 1, next in ");
    says("api", "waiting for db (restarting)");
    let snapshot = checker.snapshot();
    let error = snapshot
        .check("db")
        .unwrap()
        .ready()
        .error()
        .cloned()
        .unwrap();
    assert!(error.has_kind(ErrorKind::NotStarted), "{error:?}");
    let began = Instant::now();
    handle.shutdown();
    let report = report(&reports);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the shutdown waited {:?} (the backoff is an hour)",
        began.elapsed()
    );
    assert!(report.is_success(), "{report:?}");
    let [db, api] = report.services() else {
        panic!("two services");
    };
    assert_eq!(db.restarts().len(), 1);
    // Its failed instance was closed by the restart; nothing of it was up at the shutdown.
    assert_eq!(db.state(), State::Closed);
    assert!(db.closed(), "{db:?}");
    assert!(api.restarts().is_empty());
    assert_eq!(api.state(), State::Closed);
}

#[test]
fn a_dependants_restart_waits_for_the_restart_of_what_it_needs() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (db_tx, db_orders) = crossbeam_channel::unbounded();
    let (api_tx, api_orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &db_orders, |_| false);
    let api = factory("api", &notes_tx, &api_orders, |_| false);
    let checker = Arc::new(
        HealthChecker::builder("v", "s")
            .interval(Duration::from_millis(5))
            .build(),
    );
    let runner = runner()
        .health(checker.clone())
        .restartable(
            db,
            ServiceOptions::new()
                .restart_backoff(300 * MS, 300 * MS)
                .restart_on_failure(),
        )
        .restartable(api, fast().restart_on_failure());
    let (handle, reports) = spawn_run(runner);
    // Both first instances run (their closures' threads may report in either order).
    let mut first = Vec::new();
    while first.len() < 2 {
        if let Note::Running(name, 0) = next(&notes) {
            first.push(name);
        }
    }
    // db fails; once it is restarting, api fails too, with a much shorter backoff.
    db_tx.send(Order::Fail).unwrap();
    common::eventually("db restarting", || {
        let snapshot = checker.snapshot();
        let error = snapshot
            .check("db")
            .and_then(|c| c.ready().error().cloned());
        error.is_some_and(|e| e.to_string().contains("restarting (attempt 1"))
    });
    api_tx.send(Order::Fail).unwrap();
    // api's fresh instance is built (its restart's start begins) only once db's is up.
    let mut order = Vec::new();
    while order.len() < 2 {
        if let Note::Built(name, 1) = next(&notes) {
            order.push(name);
        }
    }
    assert_eq!(order, ["db", "api"]);
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    assert!(report.services().iter().all(|s| s.restarts().len() == 1));
}

#[test]
fn a_service_whose_health_fails_its_polls_in_a_row_is_restarted() {
    use std::sync::atomic::AtomicBool;
    // Each instance's health is a flag the test holds.
    let (flags_tx, flags) = crossbeam_channel::unbounded::<Arc<AtomicBool>>();
    let factory = move || {
        let healthy = Arc::new(AtomicBool::new(true));
        let _ = flags_tx.send(healthy.clone());
        Worker::new("cache", |stop| {
            stop.wait_timeout(2 * WATCHDOG);
            Ok(())
        })
        .ready_when(move |_| {
            if healthy.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(lifecycle::Error::msg("stale"))
            }
        })
    };
    let checker = Arc::new(
        HealthChecker::builder("v", "s")
            .interval(Duration::from_millis(10))
            .build(),
    );
    let options = fast().restart_on_failure().restart_on_unhealthy(3);
    let runner = runner()
        .health(checker.clone())
        .restartable(factory, options);
    let (handle, reports) = spawn_run(runner);
    let first = flags.recv_timeout(WATCHDOG).unwrap();
    first.store(false, Ordering::SeqCst);
    // The second instance: built by the restart. Unhealthy too, it is restarted in turn
    // (its check, failing while it restarted, counts its own polls from its readiness).
    let second = flags
        .recv_timeout(WATCHDOG)
        .expect("a restart on failed health");
    assert!(second.load(Ordering::SeqCst));
    // Once it is up and seen ready (unready, its start would wait for it).
    common::eventually("the second instance ready", || {
        let snapshot = checker.snapshot();
        snapshot
            .check("cache")
            .is_some_and(|c| c.ready().is_passing())
    });
    second.store(false, Ordering::SeqCst);
    let third = flags
        .recv_timeout(WATCHDOG)
        .expect("a second restart on failed health");
    assert!(third.load(Ordering::SeqCst));
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    let causes = report.services()[0].restarts();
    assert_eq!(causes.len(), 2, "{causes:?}");
    let cause = causes[0].to_string();
    assert!(
        cause.contains("its health failed 3 poll(s) in a row"),
        "{cause}"
    );
}

#[test]
fn restart_dependants_closes_them_first_and_starts_them_after_counted_once() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (db_tx, db_orders) = crossbeam_channel::unbounded();
    let (_api_tx, api_orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &db_orders, |_| false);
    let api = factory("api", &notes_tx, &api_orders, |_| false);
    let web = Worker::new("web", |stop| {
        stop.wait();
        Ok(())
    });
    // One restart allowed: db's, with api along, counts once.
    let runner = runner()
        .restart_budget(1, Duration::from_secs(600))
        .restartable(db, fast().restart_on_failure().restart_dependants())
        .restartable(api, fast().restart_on_failure())
        .service(web);
    let (handle, reports) = spawn_run(runner);
    db_tx.send(Order::Fail).unwrap();
    // api's instance ends (its close) before db's fresh one is built, which comes before
    // api's fresh one.
    let mut seen = Vec::new();
    while !seen.contains(&"api built") {
        match next(&notes) {
            Note::Ended("api", 0, _) => seen.push("api closed"),
            Note::Built("db", 1) => seen.push("db built"),
            Note::Built("api", 1) => seen.push("api built"),
            _ => {}
        }
    }
    assert_eq!(seen, ["api closed", "db built", "api built"]);
    wait_running(&notes, "api", 1);
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    let [db, api, web] = report.services() else {
        panic!("three services");
    };
    assert_eq!(db.restarts().len(), 1);
    assert_eq!(api.restarts().len(), 1);
    let cause = api.restarts()[0].to_string();
    assert!(cause.contains("restarted with db"), "{cause}");
    assert!(web.restarts().is_empty());
    assert_eq!(web.state(), State::Closed);
}

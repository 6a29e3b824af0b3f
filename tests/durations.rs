//! Any `Duration` a user gives, `Duration::MAX` included, is accepted by every timeout and delay:
//! never a panic (no `Instant + Duration` overflow), and the combinations that cannot work are
//! refused before anything starts.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::Client;
use common::WATCHDOG;
use lifecycle::health::{self, CheckOptions};
use lifecycle::metrics::Metrics;
use lifecycle::testing::Harness;
use lifecycle::{
    ErrorKind, HealthChecker, RunPhase, Runner, Service, ServiceOptions, StartContext, StopSignal,
    Worker,
};

const MAX: Duration = Duration::MAX;

fn worker(name: &str) -> Worker {
    Worker::new(name, |stop| {
        stop.wait();
        Ok(())
    })
}

#[test]
fn a_runner_with_every_timeout_at_the_maximum_starts_serves_and_shuts_down() {
    let metrics = Metrics::new();
    // A producer's bound is refused past a minute, with a clear error (a scrape waits for it).
    let refused = metrics.add_producer("slow", MAX, |_| Ok(())).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput);
    metrics
        .add_producer("instant", Duration::from_secs(60), |_| Ok(()))
        .expect("a valid producer");
    let checker = Arc::new(
        HealthChecker::builder("1", "abc")
            .interval(MAX)
            .timeout(MAX)
            .stale_after(MAX)
            .close_timeout(MAX)
            .build(),
    );
    let runner = Runner::new()
        .handle_signals(false)
        .start_timeout(MAX)
        .close_timeout(MAX)
        .shutdown_timeout(MAX)
        .termination_delay(Duration::from_millis(1))
        .health(checker)
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .metrics(metrics)
        .service_with(
            worker("db"),
            ServiceOptions::new().start_timeout(MAX).close_timeout(MAX),
        )
        .service(worker("api"))
        .cleanup("files", || Ok(()));
    let handle = runner.handle();
    let run = std::thread::spawn(move || runner.run());
    assert!(handle.wait_running(MAX), "the run phase began");
    let addr = handle.health_addr().expect("the endpoint listens");
    assert_eq!(Client::connect(addr).get("/readyz").status, 200);
    assert_eq!(Client::connect(addr).get("/metrics").status, 200);
    handle.shutdown();
    let report = run.join().unwrap();
    assert!(report.is_success(), "{:?}", report.error());
    assert!(report.services().iter().all(|s| s.closed()));
}

#[test]
fn a_termination_delay_that_would_take_the_close_budget_is_refused_before_anything_starts() {
    for (delay, timeout) in [
        (MAX, MAX / 4),
        (MAX, Duration::from_secs(25)),
        (Duration::from_secs(25), Duration::from_secs(25)),
        (Duration::from_secs(13), Duration::from_secs(25)),
    ] {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let report = Runner::new()
            .handle_signals(false)
            .termination_delay(delay)
            .shutdown_timeout(timeout)
            .service(Worker::with_setup(
                "db",
                move |_| {
                    flag.store(true, Ordering::SeqCst);
                    Ok(())
                },
                |_, stop| {
                    stop.wait();
                    Ok(())
                },
            ))
            .run();
        let errors = report.errors(RunPhase::Start);
        assert_eq!(errors.len(), 1, "{delay:?} of {timeout:?}: {errors:?}");
        assert_eq!(errors[0].kind(), ErrorKind::InvalidInput);
        let text = errors[0].to_string();
        assert!(text.contains("termination delay"), "{text}");
        assert!(!started.load(Ordering::SeqCst), "nothing started");
    }
}

#[test]
fn a_zero_shutdown_timeout_is_refused_before_anything_starts() {
    let report = Runner::new()
        .handle_signals(false)
        .shutdown_timeout(Duration::ZERO)
        .service(worker("db"))
        .run();
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind(), ErrorKind::InvalidInput);
    assert!(errors[0].to_string().contains("shutdown timeout is zero"));
    assert!(!report.services()[0].started());
}

#[test]
fn half_the_shutdown_timeout_is_a_termination_delay_the_runner_accepts() {
    let runner = Runner::new()
        .handle_signals(false)
        .termination_delay(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_millis(100))
        .service(worker("db"));
    let handle = runner.handle();
    handle.shutdown();
    assert!(runner.run().is_success());
}

#[test]
fn a_checker_with_every_bound_at_the_maximum_polls_and_closes() {
    let checker = HealthChecker::builder("1", "abc")
        .interval(MAX)
        .timeout(MAX)
        .stale_after(MAX)
        .close_timeout(MAX)
        .build();
    checker
        .register_with(
            health::from_fn("fast", || Ok(())),
            CheckOptions::new().timeout(MAX),
        )
        .unwrap();
    checker.start(&StartContext::background()).unwrap();
    let snapshot = checker.wait_for_poll(MAX).expect("a poll");
    assert!(snapshot.is_ready().is_passing());
    checker.close().unwrap();
}

#[test]
fn a_harness_with_every_bound_at_the_maximum_starts_and_closes() {
    let harness = Harness::builder()
        .ready_timeout(MAX)
        .slow_after(MAX)
        .close_timeout(MAX)
        .poll_interval(MAX)
        .start([worker("db")])
        .expect("started");
    harness.check().expect("healthy");
    harness.close().expect("closed");
}

#[test]
fn stop_signals_and_start_contexts_take_any_duration() {
    let stop = StopSignal::new();
    assert!(!stop.wait_timeout(Duration::ZERO));
    stop.stop();
    assert!(stop.wait_timeout(MAX));
    let ctx = StartContext::new(StopSignal::new(), Some(MAX));
    assert!(ctx.remaining().is_none_or(|r| r > WATCHDOG));
    let cancelled = StartContext::new(stop, Some(MAX));
    assert!(cancelled.wait_timeout(MAX), "cancelled: returns at once");
}

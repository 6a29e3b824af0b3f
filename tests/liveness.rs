//! Liveness checks ([`CheckOptions::liveness`]), through the public API and a real endpoint:
//! `/livez` fails while a liveness check's health fails, only after its failure threshold, and
//! passes again once it passes; no other check, failing however long, ever fails it; the
//! verbose form names the liveness checks, and only them.
//!
//! The checkers here poll once an hour: every poll is one the test asks for
//! ([`HealthChecker::wait_for_poll`]), so the test counts them, and never waits on a timing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fixture::Fixture;
use common::http;
use common::WATCHDOG;
use lifecycle::health::{self, CheckOptions, EndpointOptions};
use lifecycle::{Error, HealthChecker, Service};

/// A checker that polls only when the test asks (and once as it starts or registers a check).
fn on_demand() -> HealthChecker {
    HealthChecker::builder("1.2.3", "deadbeef")
        .interval(Duration::from_secs(3600))
        // Generous: a loaded machine must not turn a check into a timeout.
        .timeout(Duration::from_secs(10))
        .build()
}

/// A check called `name` that passes while `ok` is set: a worker loop's heartbeat, which the
/// test stops and restarts.
fn heartbeat(name: &'static str, ok: &Arc<AtomicBool>) -> impl lifecycle::HealthReporter {
    let ok = ok.clone();
    health::from_fn(name, move || {
        if ok.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::msg("no tick for 30s"))
        }
    })
}

/// `checker`, with every check registered, served and started, once the first poll of each
/// check has returned: from then on, each [`poll_then_livez`] is exactly one more poll.
/// (Waiting for a poll while one is in progress would wait for the next interval, an hour.)
fn serve(checker: HealthChecker, options: EndpointOptions) -> Fixture {
    let f = Fixture::serving(checker, options);
    common::eventually("every check's first result", || {
        f.checker
            .snapshot()
            .checks()
            .all(|c| c.last_polled().is_some())
    });
    f
}

/// The options of an endpoint that serves `/metrics` too, when the crate has them.
fn with_metrics() -> EndpointOptions {
    let options = EndpointOptions::new();
    #[cfg(feature = "metrics")]
    let options = options.metrics(lifecycle::metrics::Metrics::new());
    options
}

/// The value of `lifecycle_health_status{probe="live"}` in a scrape: 1 or 0 (`None` without
/// the `metrics` feature).
fn live_metric(f: &Fixture) -> Option<f64> {
    if cfg!(not(feature = "metrics")) {
        return None;
    }
    let scrape = http::get(f.addr(), "/metrics");
    assert_eq!(scrape.status, 200, "{scrape:?}");
    let sample = scrape
        .body
        .lines()
        .find_map(|l| l.strip_prefix("lifecycle_health_status{probe=\"live\"} "));
    Some(sample.expect("a live sample").parse().expect("a number"))
}

/// Polls every check once more, and returns what `/livez` and `/livez?verbose` answer then.
#[track_caller]
fn poll_then_livez(f: &Fixture) -> (http::Reply, String) {
    f.wait_for_poll();
    let plain = http::get(f.addr(), "/livez");
    let verbose = http::get(f.addr(), "/livez?verbose");
    assert_eq!(plain.status, verbose.status, "{verbose:?}");
    (plain, verbose.body)
}

#[test]
fn a_liveness_check_fails_livez_after_its_threshold_and_passes_again() {
    let checker = on_demand();
    let ticking = Arc::new(AtomicBool::new(true));
    let options = CheckOptions::new().liveness(true).failure_threshold(3);
    checker
        .register_with(heartbeat("ticker", &ticking), options)
        .unwrap();
    let f = serve(checker, with_metrics());

    let (live, verbose) = poll_then_livez(&f);
    assert_eq!(live.status, 200, "{verbose}");
    assert_eq!(live.json()["status"], "pass");
    assert_eq!(live.json()["description"], "liveness");
    assert_eq!(
        verbose,
        "[+]ping ok\n[+]health checker ok\n[+]ticker ok\nlivez check passed\n"
    );
    let snapshot = f.checker.snapshot();
    assert!(snapshot.check("ticker").unwrap().is_liveness());
    assert!(snapshot.is_live().is_passing());
    let on = cfg!(feature = "metrics");
    assert_eq!(live_metric(&f), on.then_some(1.0));

    // The loop stops ticking: two failed polls are under the threshold, the third is not.
    ticking.store(false, Ordering::SeqCst);
    for failures in 1..=2 {
        let (live, verbose) = poll_then_livez(&f);
        assert_eq!(live.status, 200, "after {failures} failure(s): {verbose}");
        let snapshot = f.checker.snapshot();
        let health = snapshot.check("ticker").unwrap().health();
        assert_eq!(health.consecutive_failures(), failures);
        assert!(snapshot.is_live().is_passing());
    }
    let (live, verbose) = poll_then_livez(&f);
    assert_eq!(live.status, 503, "{verbose}");
    assert_eq!(live.json()["status"], "fail");
    assert_eq!(live.json()["description"], "liveness");
    assert_eq!(live.json()["checks"]["ticker:health"][0]["status"], "fail");
    assert!(
        verbose.starts_with("[+]ping ok\n[+]health checker ok\n[-]ticker failed: "),
        "{verbose}"
    );
    assert!(verbose.contains("no tick for 30s"), "{verbose}");
    assert!(verbose.ends_with("livez check failed\n"), "{verbose}");
    let verdict = f.checker.snapshot().is_live();
    assert!(!verdict.is_passing());
    assert_eq!(
        verdict.failures().map(|(name, _)| name).collect::<Vec<_>>(),
        ["ticker"]
    );
    assert!(verdict
        .failure("ticker")
        .unwrap()
        .to_string()
        .contains("no tick"));
    assert_eq!(live_metric(&f), on.then_some(0.0));
    // A liveness check counts toward readiness and health too.
    assert_eq!(http::get(f.addr(), "/readyz").status, 503);
    assert_eq!(http::get(f.addr(), "/healthz").status, 503);

    // It ticks again: the next poll brings liveness back.
    ticking.store(true, Ordering::SeqCst);
    let (live, verbose) = poll_then_livez(&f);
    assert_eq!(live.status, 200, "{verbose}");
    assert_eq!(
        verbose,
        "[+]ping ok\n[+]health checker ok\n[+]ticker ok\nlivez check passed\n"
    );
    assert!(f.checker.snapshot().is_live().is_passing());
    assert_eq!(live_metric(&f), on.then_some(1.0));
    assert_eq!(http::get(f.addr(), "/readyz").status, 200);
    f.close();
}

#[test]
fn no_check_but_a_liveness_check_fails_livez() {
    let checker = on_demand();
    let down = Arc::new(AtomicBool::new(false));
    // A dependency, failing on every poll, with no threshold to wait for.
    checker.register(heartbeat("db", &down)).unwrap();
    // A liveness check that is informational: reported, never counted.
    checker
        .register_with(
            heartbeat("advisory", &down),
            CheckOptions::new().liveness(true).informational(true),
        )
        .unwrap();
    let f = serve(checker, EndpointOptions::new());
    for _ in 0..3 {
        let (live, verbose) = poll_then_livez(&f);
        assert_eq!(live.status, 200, "{verbose}");
        assert_eq!(live.json()["status"], "warn", "{:?}", live.body);
        assert!(!verbose.contains("db"), "only liveness checks: {verbose}");
        assert!(
            verbose.contains("[+]advisory failing (informational): "),
            "{verbose}"
        );
        assert_eq!(f.readyz_after_poll().status, 503);
    }
    let snapshot = f.checker.snapshot();
    assert!(!snapshot.check("db").unwrap().is_liveness());
    assert!(snapshot.is_live().is_passing());
    assert!(!snapshot.is_ready().is_passing());
    f.close();
}

#[test]
fn a_liveness_check_not_polled_yet_does_not_fail_livez() {
    let f = Fixture::serving(on_demand(), EndpointOptions::new());
    f.wait_for_poll();
    // Its first poll is held until the test lets it return.
    let (entered_tx, entered) = crossbeam_channel::bounded::<()>(2);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let check = health::from_fn("slow", move || {
        let _ = entered_tx.try_send(());
        let _ = released.recv_timeout(WATCHDOG);
        Ok(())
    });
    f.checker
        .register_with(check, CheckOptions::new().liveness(true))
        .unwrap();
    entered
        .recv_timeout(WATCHDOG)
        .expect("the first poll began");
    let verbose = http::get(f.addr(), "/livez?verbose");
    assert_eq!(verbose.status, 200, "{}", verbose.body);
    assert!(
        verbose.body.contains("[+]slow not checked yet\n"),
        "{}",
        verbose.body
    );
    assert!(f.checker.snapshot().is_live().is_passing());
    drop(release);
    // The held poll's result, then a poll asked for after it.
    common::eventually("slow's first result", || {
        let snapshot = f.checker.snapshot();
        snapshot.check("slow").unwrap().health().is_passing()
    });
    let (live, verbose) = poll_then_livez(&f);
    assert_eq!(live.status, 200, "{verbose}");
    assert!(verbose.contains("[+]slow ok\n"), "{verbose}");
    f.close();
}

#[test]
fn without_liveness_checks_liveness_is_the_checker_polling() {
    let checker = on_demand();
    let verdict = checker.snapshot().is_live();
    assert!(!verdict.is_passing());
    assert!(verdict.failure("health checker").is_some(), "{verdict:?}");
    let f = serve(checker, EndpointOptions::new());
    let (live, verbose) = poll_then_livez(&f);
    assert_eq!(live.status, 200);
    assert_eq!(
        verbose,
        "[+]ping ok\n[+]health checker ok\nlivez check passed\n"
    );
    f.checker.close().unwrap();
    let verbose = http::get(f.addr(), "/livez?verbose");
    assert_eq!(verbose.status, 503);
    assert!(
        verbose
            .body
            .starts_with("[+]ping ok\n[-]health checker failed: not polling"),
        "{}",
        verbose.body
    );
    let verdict = f.checker.snapshot().is_live();
    assert_eq!(
        verdict.failures().map(|(name, _)| name).collect::<Vec<_>>(),
        ["health checker"]
    );
}

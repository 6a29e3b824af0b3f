//! Metrics in-process: every exposition parses with an independent parser (Python's
//! `prometheus_client`) in both formats, the lifecycle's metrics have the right values through a
//! start and a shutdown, the program's metrics and producers are there, and a producer that
//! hangs, fails or panics never hangs a scrape.
#![cfg(feature = "metrics")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::prom::{self, family, value, Family};
use common::recorder::{Behavior, Events, Recorder};
use common::{eventually, WATCHDOG};
use lifecycle::metrics::prometheus_client::metrics::counter::Counter;
use lifecycle::metrics::prometheus_client::metrics::family::Family as LabelledFamily;
use lifecycle::metrics::prometheus_client::metrics::histogram::Histogram;
use lifecycle::metrics::{Format, Metrics};
use lifecycle::{Error, ErrorKind, HealthChecker, RunHandle, Runner};

/// Encodes in both formats, parses both, checks they agree, and returns the Prometheus one.
fn scrape(metrics: &Metrics) -> Option<Vec<Family>> {
    let text = metrics.encode(Format::Prometheus);
    let openmetrics = metrics.encode(Format::OpenMetrics);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(!text.contains("# EOF"), "{text}");
    let parsed = prom::parse("prometheus", &text)?;
    let om = prom::parse("openmetrics", &openmetrics)?;
    // The same families, but that OpenMetrics names an info family without `_info` and 0.0.4
    // has no info type.
    let described = |fs: &[Family]| {
        fs.iter()
            .map(|f| match f.typ.as_str() {
                "info" => (format!("{}_info", f.name), "gauge".to_owned()),
                _ => (f.name.clone(), f.typ.clone()),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        described(&parsed),
        described(&om),
        "the same families in both formats"
    );
    Some(parsed)
}

/// Asks the run to shut down when dropped, including while a failed assertion unwinds.
struct ShutdownOnDrop(RunHandle);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

fn state(families: &[Family], service: &str) -> String {
    let f = family(families, "lifecycle_service_state");
    let current: Vec<_> = f
        .samples
        .iter()
        .filter(|s| s.labels["service"] == service && s.value == 1.0)
        .map(|s| s.labels["state"].clone())
        .collect();
    let all = f
        .samples
        .iter()
        .filter(|s| s.labels["service"] == service)
        .count();
    assert_eq!(all, 7, "one sample per state for {service}");
    assert_eq!(current.len(), 1, "exactly one current state for {service}");
    current[0].clone()
}

#[test]
fn lifecycle_metrics_follow_a_run_from_start_to_shutdown() {
    let events = Events::default();
    let services = [
        Recorder::new("db", Behavior::Healthy, &events),
        Recorder::new("api", Behavior::CloseFailure, &events),
    ];
    let checker = Arc::new(HealthChecker::new("1.2.3", "abc123"));
    let metrics = Metrics::new();
    let runner = Runner::new()
        .handle_signals(false)
        .health(checker.clone())
        .metrics(metrics.clone())
        .services(services.iter().cloned());
    let handle = runner.handle();

    let report = std::thread::scope(|s| {
        // Ends the run even if an assertion below fails, so the scope can join it.
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        assert!(handle.wait_running(WATCHDOG), "the run phase begins");
        // The run phase begins with a poll of every check; wait for one that began since.
        let polled = checker
            .wait_for_poll(WATCHDOG)
            .expect("a poll of every check");
        assert!(polled.is_ready().is_passing(), "{polled:?}");

        if let Some(running) = scrape(&metrics) {
            assert_eq!(state(&running, "db"), "started");
            assert_eq!(state(&running, "api"), "started");
            for service in ["db", "api"] {
                let took = value(
                    &running,
                    "lifecycle_service_start_duration_seconds",
                    &[("service", service)],
                )
                .expect("a start duration");
                assert!((0.0..WATCHDOG.as_secs_f64()).contains(&took), "{took}");
                assert_eq!(
                    value(
                        &running,
                        "lifecycle_service_close_duration_seconds",
                        &[("service", service)]
                    ),
                    None
                );
            }
            let build = family(&running, "lifecycle_build_info");
            assert_eq!(build.typ, "gauge", "an info family is a gauge in 0.0.4");
            let labels = &build.samples[0].labels;
            assert_eq!(labels["version"], "1.2.3");
            assert_eq!(labels["git_sha"], "abc123");
            assert_eq!(labels["lifecycle_version"], env!("CARGO_PKG_VERSION"));
            for check in ["db", "api", "runner"] {
                for probe in ["ready", "health"] {
                    assert_eq!(
                        value(
                            &running,
                            "lifecycle_health_check_status",
                            &[("check", check), ("probe", probe)]
                        ),
                        Some(1.0),
                        "{check} {probe}"
                    );
                }
            }
            assert_eq!(
                value(&running, "lifecycle_health_status", &[("probe", "ready")]),
                Some(1.0)
            );
            assert_eq!(
                value(&running, "lifecycle_health_stuck_calls", &[]),
                Some(0.0)
            );
            let started = value(&running, "process_start_time_seconds", &[]).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            // Clock-tick resolution and the boot time's whole seconds: allow a few seconds.
            assert!(
                started > 1.5e9 && started <= now + 2.0,
                "{started} vs {now}"
            );
        }

        handle.shutdown();
        run.join().unwrap()
    });
    assert!(!report.is_success(), "api's close fails");

    let Some(after) = scrape(&metrics) else {
        return;
    };
    assert_eq!(state(&after, "db"), "closed");
    assert_eq!(state(&after, "api"), "close_failed");
    for service in ["db", "api"] {
        assert!(
            value(
                &after,
                "lifecycle_service_close_duration_seconds",
                &[("service", service)]
            )
            .is_some(),
            "{service} has a close duration"
        );
    }
}

#[test]
fn a_failed_start_shows_in_the_states() {
    let events = Events::default();
    let services = [
        Recorder::new("db", Behavior::Healthy, &events),
        Recorder::new("api", Behavior::WontStart, &events),
        Recorder::new("late", Behavior::Healthy, &events),
    ];
    let metrics = Metrics::new();
    let report = Runner::new()
        .handle_signals(false)
        .metrics(metrics.clone())
        .services(services.iter().cloned())
        .run();
    assert!(!report.is_success());
    let Some(after) = scrape(&metrics) else {
        return;
    };
    assert_eq!(state(&after, "db"), "closed", "rolled back");
    assert_eq!(state(&after, "api"), "start_failed");
    assert_eq!(state(&after, "late"), "unstarted");
    // No checker was given: no health families, no build info.
    assert!(after
        .iter()
        .all(|f| !f.name.starts_with("lifecycle_health")));
}

#[test]
fn program_metrics_and_producers_are_exposed_in_both_formats() {
    let metrics = Metrics::new();
    let served: Counter = Counter::default();
    metrics
        .register("api_requests", "Requests served", served.clone())
        .unwrap();
    let by_status = LabelledFamily::<Vec<(String, String)>, Counter>::default();
    metrics
        .register("api_responses", "Responses by status", by_status.clone())
        .unwrap();
    let latency = Histogram::new([0.01, 0.1, 1.0]);
    metrics
        .register("api_latency_seconds", "Request latency", latency.clone())
        .unwrap();
    metrics
        .add_producer("queue", Duration::from_secs(5), |out| {
            out.gauge("depth", "Jobs \"waiting\"\nnow.", 12.0)
                .gauge_with(
                    "by_priority",
                    "Jobs by priority.",
                    &[("priority", "high\"\\\n")],
                    3.0,
                )
                .counter("dropped", "Jobs dropped.", 7.0);
            Ok(())
        })
        .unwrap();

    served.inc_by(3);
    by_status
        .get_or_create(&vec![("status".to_owned(), "200".to_owned())])
        .inc();
    latency.observe(0.05);

    let Some(families) = scrape(&metrics) else {
        return;
    };
    let requests = family(&families, "api_requests");
    assert_eq!(requests.typ, "counter");
    assert_eq!(value(&families, "api_requests_total", &[]), Some(3.0));
    assert_eq!(
        value(&families, "api_responses_total", &[("status", "200")]),
        Some(1.0)
    );
    assert_eq!(family(&families, "api_latency_seconds").typ, "histogram");
    assert_eq!(
        value(&families, "api_latency_seconds_bucket", &[("le", "0.1")]),
        Some(1.0)
    );
    assert_eq!(value(&families, "queue_depth", &[]), Some(12.0));
    assert_eq!(
        family(&families, "queue_depth").help,
        "Jobs \"waiting\"\nnow."
    );
    assert_eq!(
        value(
            &families,
            "queue_by_priority",
            &[("priority", "high\"\\\n")]
        ),
        Some(3.0)
    );
    assert_eq!(family(&families, "queue_dropped").typ, "counter");
    assert_eq!(value(&families, "queue_dropped_total", &[]), Some(7.0));
    let ok = value(
        &families,
        "lifecycle_metrics_producer_failures_total",
        &[("producer", "queue"), ("reason", "timeout")],
    );
    assert_eq!(ok, Some(0.0));
    assert!(value(
        &families,
        "lifecycle_metrics_producer_duration_seconds",
        &[("producer", "queue")]
    )
    .is_some());
}

fn failures(families: &[Family], producer: &str, reason: &str) -> f64 {
    value(
        families,
        "lifecycle_metrics_producer_failures_total",
        &[("producer", producer), ("reason", reason)],
    )
    .unwrap_or_else(|| panic!("no failure count for {producer} {reason}"))
}

#[test]
fn a_hung_producer_is_left_out_within_its_bound_and_not_called_again() {
    let metrics = Metrics::new();
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let (entered, calls) = crossbeam_channel::unbounded::<()>();
    let first = std::sync::atomic::AtomicBool::new(true);
    metrics
        .add_producer("slow", Duration::from_millis(50), move |out| {
            entered.send(()).unwrap();
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                // Blocks until the test releases it (or, as a watchdog, for at most 20 s).
                let _ = released.recv_timeout(WATCHDOG);
            }
            out.gauge("value", "A slow value.", 1.0);
            Ok(())
        })
        .unwrap();
    metrics
        .add_producer("fast", Duration::from_secs(10), |out| {
            out.gauge("value", "A fast value.", 2.0);
            Ok(())
        })
        .unwrap();

    let began = Instant::now();
    let text = metrics.encode(Format::Prometheus);
    // Answered at the producer's bound (50 ms), not when it returns: it blocks for the whole
    // watchdog unless released, which happens only below.
    assert!(
        began.elapsed() < WATCHDOG,
        "the scrape waited for the producer: {:?}",
        began.elapsed()
    );
    assert!(text.contains("fast_value 2"), "{text}");
    assert!(!text.contains("slow_value"), "{text}");
    calls.recv_timeout(WATCHDOG).expect("slow was called");

    // Its call is still stuck: the next scrape does not call it again.
    let text = metrics.encode(Format::Prometheus);
    assert!(calls.try_recv().is_err(), "not called while stuck");
    if let Some(families) = prom::parse("prometheus", &text) {
        assert_eq!(failures(&families, "slow", "timeout"), 1.0);
        assert_eq!(failures(&families, "slow", "stuck"), 1.0);
        assert_eq!(failures(&families, "fast", "timeout"), 0.0);
    }

    // Released, its call returns; once its thread has ended, the next scrape calls it again.
    release.send(()).unwrap();
    eventually("a scrape calls the released producer again", || {
        metrics.encode(Format::Prometheus).contains("slow_value 1")
    });
}

#[test]
fn failing_and_panicking_producers_are_counted_and_the_rest_is_served() {
    let metrics = Metrics::new();
    metrics
        .add_producer("failing", Duration::from_secs(10), |_| {
            Err(Error::msg("broker down"))
        })
        .unwrap();
    metrics
        .add_producer("panicking", Duration::from_secs(10), |_| panic!("boom"))
        .unwrap();
    metrics
        .add_producer("sloppy", Duration::from_secs(10), |out| {
            out.gauge("good", "Fine.", 1.0)
                .gauge("bad name", "Not fine.", 2.0);
            Ok(())
        })
        .unwrap();
    let Some(families) = scrape(&metrics) else {
        return;
    };
    // Counted by the scrape that reports them (the first of the two `scrape` makes).
    assert_eq!(failures(&families, "failing", "error"), 1.0);
    assert_eq!(failures(&families, "panicking", "panic"), 1.0);
    assert_eq!(failures(&families, "sloppy", "invalid"), 1.0);
    assert_eq!(value(&families, "sloppy_good", &[]), Some(1.0));
}

#[test]
fn producer_names_are_checked() {
    let metrics = Metrics::new();
    let ok = |_: &mut lifecycle::metrics::Samples| Ok(());
    let t = Duration::from_secs(1);
    for bad in ["", "9a", "a-b", "lifecycle_x", "process"] {
        let e = metrics.add_producer(bad, t, ok).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    let e = metrics.add_producer("a", Duration::ZERO, ok).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    metrics.add_producer("a", t, ok).unwrap();
    let e = metrics.add_producer("a", t, ok).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    metrics.remove_producer("a").unwrap();
    let e = metrics.remove_producer("a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotRegistered);
}

#[test]
fn names_are_unique_across_the_registry_and_producers() {
    let metrics = Metrics::new();
    let c: Counter = Counter::default();
    metrics.register("jobs", "Jobs.", c.clone()).unwrap();
    // A counter `jobs` also exposes `jobs_total`: a gauge of that name is a duplicate.
    let g = lifecycle::metrics::prometheus_client::metrics::gauge::Gauge::<i64>::default();
    let e = metrics
        .register("jobs_total", "Clash.", g.clone())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    for reserved in ["process_start_time_seconds", "lifecycle_x", "bad name"] {
        let e = metrics.register(reserved, "No.", g.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{reserved}");
    }
    // Allowed: names that only begin like the crate's.
    metrics.register("processing", "Fine.", g.clone()).unwrap();
    // Help may hold anything.
    metrics
        .register("odd_help", "Line one\nline \"two\" \\ end", g)
        .unwrap();
    // A producer `jobs` whose counter `total`... would expose `jobs_total` again.
    metrics
        .add_producer("jobs", Duration::from_secs(10), |out| {
            out.gauge("total", "Clash with the registry.", 1.0)
                .gauge("queued", "Fine.", 2.0)
                .counter("x", "A counter.", 1.0)
                .gauge("x_created", "Clash within the producer.", 3.0);
            Ok(())
        })
        .unwrap();
    let Some(families) = scrape(&metrics) else {
        return;
    };
    assert_eq!(value(&families, "jobs_queued", &[]), Some(2.0));
    assert_eq!(value(&families, "jobs_x_total", &[]), Some(1.0));
    assert_eq!(
        value(&families, "jobs_total", &[]),
        Some(0.0),
        "the registry's counter"
    );
    assert_eq!(value(&families, "jobs_x_created", &[]), None);
    assert_eq!(failures(&families, "jobs", "invalid"), 1.0);
    assert_eq!(
        family(&families, "odd_help").help,
        "Line one\nline \"two\" \\ end."
    );
}

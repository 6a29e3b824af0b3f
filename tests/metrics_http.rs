//! `/metrics` over real sockets: both formats by `Accept`, parsed by an independent parser
//! (Python's `prometheus_client`), the lifecycle's values through a start and a shutdown, and a
//! producer that hangs never holding up probes or the scrape beyond its bound.
#![cfg(feature = "metrics")]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::http::{self, get, request, wait_status, Client};
use common::prom::{self, value, Family};
use common::WATCHDOG;
use crossbeam_channel::{Receiver, Sender};
use lifecycle::health::EndpointOptions;
use lifecycle::metrics::prometheus_client::metrics::counter::Counter;
use lifecycle::metrics::Metrics;
use lifecycle::{
    HealthChecker, HealthReporter, Result, RunHandle, Runner, Service, StartContext, StateMachine,
};
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A service whose close waits until the test lets it go (or the watchdog).
struct Gate {
    name: &'static str,
    sm: StateMachine,
    closing: Sender<()>,
    release: Receiver<()>,
}

impl HealthReporter for Gate {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Gate {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.sm.start_once(|| Ok(()))
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            let _ = self.closing.send(());
            let _ = self.release.recv_timeout(WATCHDOG);
            Ok(())
        })
    }
}

struct ShutdownOnDrop(RunHandle);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// GETs `/metrics` with `accept` (if any), checks the framing and that the content type is that
/// of `format` (`"prometheus"` or `"openmetrics"`), and parses the body with that format's parser.
fn scrape(addr: SocketAddr, accept: Option<&str>, format: &str) -> Option<Vec<Family>> {
    let mut s = http::connect(addr);
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let raw = http::read_until_closed(&mut s);
    let reply = http::parse(&raw).expect("a complete answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let expected = match format {
        "openmetrics" => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        _ => "text/plain; version=0.0.4; charset=utf-8",
    };
    assert_eq!(
        reply.header("content-type"),
        Some(expected),
        "Accept: {accept:?}"
    );
    prom::parse(format, &reply.body)
}

fn current_state(families: &[Family], service: &str) -> Option<String> {
    families
        .iter()
        .find(|f| f.name == "lifecycle_service_state")?
        .samples
        .iter()
        .find(|s| s.labels["service"] == service && s.value == 1.0)
        .map(|s| s.labels["state"].clone())
}

#[test]
fn metrics_follow_a_run_over_http_in_both_formats() {
    let (closing_tx, closing) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let gate = |name| {
        Arc::new(Gate {
            name,
            sm: StateMachine::new(),
            closing: closing_tx.clone(),
            release: release_rx.clone(),
        })
    };
    let metrics = Metrics::new();
    let served: Counter = Counter::default();
    metrics
        .register("app_requests", "Requests served", served.clone())
        .unwrap();
    served.inc_by(5);
    let runner = Runner::new()
        .handle_signals(false)
        .health(Arc::new(HealthChecker::new("2.0.0", "f00d")))
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .metrics(metrics)
        .service(gate("db"))
        .service(gate("api"));
    let handle = runner.handle();

    std::thread::scope(|s| {
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        assert!(handle.wait_running(WATCHDOG));
        let addr = handle.health_addr().expect("the endpoint's address");
        wait_status(addr, "/readyz", 200);

        for (accept, format) in [
            (None, "prometheus"),
            (Some("text/plain;version=0.0.4"), "prometheus"),
            (Some(PROMETHEUS_ACCEPT), "openmetrics"),
            (Some("application/openmetrics-text"), "openmetrics"),
        ] {
            let Some(families) = scrape(addr, accept, format) else {
                break;
            };
            assert_eq!(current_state(&families, "db").as_deref(), Some("started"));
            assert_eq!(current_state(&families, "api").as_deref(), Some("started"));
            assert_eq!(value(&families, "app_requests_total", &[]), Some(5.0));
            assert_eq!(
                value(&families, "lifecycle_health_status", &[("probe", "ready")]),
                Some(1.0),
                "{accept:?}"
            );
        }

        // HEAD: the GET's headers, no body.
        let head = request(addr, "HEAD", "/metrics");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert!(
            head.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 0
        );
        assert_eq!(request(addr, "POST", "/metrics").status, 405);

        // Shut down: api closes first and waits for the test; meanwhile the endpoint serves.
        handle.shutdown();
        closing.recv_timeout(WATCHDOG).expect("api's close begins");
        if let Some(families) = scrape(addr, None, "prometheus") {
            assert_eq!(current_state(&families, "api").as_deref(), Some("closing"));
            assert_eq!(current_state(&families, "db").as_deref(), Some("started"));
            assert_eq!(
                value(&families, "lifecycle_health_status", &[("probe", "ready")]),
                Some(0.0),
                "not ready once shutdown has begun"
            );
            assert_eq!(
                value(
                    &families,
                    "lifecycle_health_check_status",
                    &[("check", "runner"), ("probe", "ready")]
                ),
                Some(0.0)
            );
        }
        release.send(()).unwrap();
        closing.recv_timeout(WATCHDOG).expect("db's close begins");
        if let Some(families) = scrape(addr, None, "prometheus") {
            assert_eq!(current_state(&families, "api").as_deref(), Some("closed"));
            assert_eq!(current_state(&families, "db").as_deref(), Some("closing"));
            assert!(value(
                &families,
                "lifecycle_service_close_duration_seconds",
                &[("service", "api")]
            )
            .is_some());
        }
        release.send(()).unwrap();
        let report = run.join().unwrap();
        assert!(report.is_success(), "{report:?}");
    });
}

/// A started checker with one ready check, and an endpoint serving it and `metrics`.
fn serving(metrics: Metrics) -> Fixture {
    Fixture::new(EndpointOptions::new().metrics(metrics))
}

#[test]
fn a_hung_producer_holds_up_neither_probes_nor_the_scrape_beyond_its_bound() {
    let metrics = Metrics::new();
    let (entered_tx, entered) = crossbeam_channel::unbounded::<()>();
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    // The longest bound allowed: the scrape waits for the release, never for the clock, however
    // slow the probes below are on a loaded machine.
    let bound = Duration::from_secs(60);
    metrics
        .add_producer("hung", bound, move |out| {
            entered_tx.send(()).unwrap();
            let _ = released.recv_timeout(WATCHDOG);
            out.gauge("value", "A value that came late.", 1.0);
            Ok(())
        })
        .unwrap();
    let served = serving(metrics);
    let addr = served.addr();
    served.wait_ready();

    // A scrape waits for the producer...
    let mut scraper = Client::connect(addr);
    scraper.send("GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    entered
        .recv_timeout(WATCHDOG)
        .expect("the producer is called");
    // ...while probes on other connections, and on both event loops, are answered.
    for _ in 0..8 {
        assert_eq!(get(addr, "/readyz").status, 200);
        assert_eq!(get(addr, "/livez").status, 200);
    }
    // Released, the producer returns and the scrape is answered with its samples.
    let began = Instant::now();
    release.send(()).unwrap();
    let reply = scraper.reply().expect("the scrape's answer");
    assert!(began.elapsed() < WATCHDOG);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("hung_value 1"), "{}", reply.body);

    // Pipelined after a scrape, a probe is answered in order, after it.
    release.send(()).unwrap(); // the producer's next call returns at once
    scraper.send(
        "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\nGET /readyz HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    let first = scraper.reply().unwrap();
    let second = scraper.reply().unwrap();
    assert!(first.body.contains("# TYPE"), "{}", first.body);
    assert!(second.body.contains("\"status\""), "{}", second.body);
    served.close();
}

#[test]
fn without_metrics_the_path_is_not_found() {
    let served = Fixture::new(EndpointOptions::new());
    assert_eq!(get(served.addr(), "/metrics").status, 404);
    served.close();
}

/// A collector of the program's that panics at every scrape.
#[derive(Debug)]
struct Panicking;

impl lifecycle::metrics::prometheus_client::collector::Collector for Panicking {
    fn encode(
        &self,
        _: lifecycle::metrics::prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        panic!("a collector that panics")
    }
}

#[test]
fn a_panicking_collector_is_left_out_and_scrapes_go_on() {
    let metrics = Metrics::new();
    metrics.with_registry(|r| r.register_collector(Box::new(Panicking)));
    let served: Counter = Counter::default();
    metrics
        .register("app_served", "Served", served.clone())
        .unwrap();
    let served = serving(metrics);
    for _ in 0..3 {
        if let Some(families) = scrape(served.addr(), None, "prometheus") {
            // The registry (its collector and its counter) is left out; the rest is served.
            assert_eq!(value(&families, "app_served_total", &[]), None);
            assert!(value(&families, "lifecycle_health_stuck_calls", &[]).is_some());
        }
    }
    served.close();
}

/// The value of the sample of `body` (Prometheus text) whose name and labels are `series`, as
/// written (`name{label="value",...}`).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn an_instant_producer_is_never_reported_stuck_over_a_thousand_back_to_back_scrapes() {
    /// Scrapers at once: each keeps one scrape asked, so that the scrape thread finds the next
    /// one queued as soon as it has answered one (and no more are queued than it takes).
    const SCRAPERS: usize = 4;
    const SCRAPES: usize = 1000;
    let metrics = Metrics::new();
    metrics
        .add_producer("pool", Duration::from_secs(10), |out| {
            out.gauge("size", "Connections in the pool.", 4.0);
            Ok(())
        })
        .unwrap();
    let served = serving(metrics);
    let addr = served.addr();
    // Per scraper, the scrapes that lacked the producer's samples.
    let missing: Vec<Vec<usize>> = std::thread::scope(|s| {
        let scrapers: Vec<_> = (0..SCRAPERS)
            .map(|k| {
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut missing = Vec::new();
                    for i in (k..SCRAPES).step_by(SCRAPERS) {
                        let r = c.get("/metrics");
                        assert_eq!(r.status, 200, "scrape {i}: {r:?}");
                        if sample(&r.body, "pool_size") != Some(4.0) {
                            missing.push(i);
                        }
                    }
                    missing
                })
            })
            .collect();
        scrapers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let missing: Vec<usize> = missing.into_iter().flatten().collect();
    let last = Client::connect(addr).get("/metrics").body;
    let stuck = "lifecycle_metrics_producer_failures_total{producer=\"pool\",reason=\"stuck\"}";
    assert_eq!(
        (missing.len(), sample(&last, stuck)),
        (0, Some(0.0)),
        "of {SCRAPES} scrapes, the producer's samples were missing from {} (first: {:?}), \
         and it was counted stuck {:?} times",
        missing.len(),
        missing.iter().min(),
        sample(&last, stuck),
    );
    served.close();
}

//! The cost of a scrape (`Metrics::encode`) against the number of services, with a baseline of
//! the same series encoded by `prometheus-client` alone.
//!
//! For N = 10, 100 and 1000 services, a [`Runner`] runs N trivial services (start and close do
//! nothing, always ready) with a [`HealthChecker`] (so N + 1 checks: the services and the
//! runner's own) and a [`Metrics`] handle, and waits in its run phase while the group is
//! measured (its checker polls once, as the run phase begins, and not again during the
//! measurements). No producers and no program metrics: this is the lifecycle's own share.
//!
//! - `openmetrics/N`: `metrics.encode(Format::OpenMetrics)`: a snapshot of the checker, the
//!   runner's service table, and the encoding of every family through `prometheus-client`.
//! - `prometheus/N`: `metrics.encode(Format::Prometheus)`: the same, then the translation of the
//!   descriptors into the 0.0.4 text format.
//! - `http/N`: `GET /metrics` (Prometheus format) over a keep-alive connection to the runner's
//!   health endpoint on 127.0.0.1: the above, plus the hop to the endpoint's scrape thread and
//!   back through the event loop, and the transfer.
//! - `baseline/N` (the ceiling): the same families with the same label sets and values, held in
//!   `prometheus-client` `Family<_, Gauge<f64>>`s of a plain `Registry` built once, encoded with
//!   `prometheus_client::encoding::text::encode`. It is what encoding these series costs with no
//!   lifecycle at all: no snapshot, no reading of the sources.
//!
//! The series per scrape: 8 per service (7 states and a start duration), 6 per check (status
//! and consecutive failures for 2 probes, poll duration, stuck), and 5 more.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench metrics` (criterion options after `--`).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lifecycle::metrics::prometheus_client::encoding::text::encode;
use lifecycle::metrics::prometheus_client::metrics::family::Family;
use lifecycle::metrics::prometheus_client::metrics::gauge::Gauge;
use lifecycle::metrics::prometheus_client::registry::Registry;
use lifecycle::metrics::{Format, Metrics};
use lifecycle::{HealthChecker, HealthReporter, Result, RunHandle, Runner, Service, StartContext};

const SERVICE_COUNTS: [usize; 3] = [10, 100, 1000];

/// A service that does nothing and is always ready.
struct Idle(String);

impl HealthReporter for Idle {
    fn name(&self) -> &str {
        &self.0
    }
    fn ready(&self) -> Result<()> {
        Ok(())
    }
}

impl Service for Idle {
    fn start(&self, _: &StartContext) -> Result<()> {
        Ok(())
    }
    fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A runner in its run phase with `n` services, every check polled once.
struct Running {
    metrics: Metrics,
    handle: RunHandle,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn new(n: usize) -> Running {
        // Polled once when the run phase begins, then not again while the group is measured: a
        // poll of 1000 checks is a burst of work on 1000 threads that would land on whichever
        // benchmark runs at the time.
        let checker = Arc::new(
            HealthChecker::builder("1.0.0", "bench")
                .interval(Duration::from_secs(3600))
                .stale_after(Duration::from_secs(4 * 3600))
                .build(),
        );
        let metrics = Metrics::new();
        let mut runner = Runner::new()
            .handle_signals(false)
            .health(checker.clone())
            .health_endpoint("127.0.0.1:0".parse().unwrap())
            .metrics(metrics.clone());
        for i in 0..n {
            runner = runner.service(Idle(format!("service-{i:04}")));
        }
        let handle = runner.handle();
        let thread = std::thread::spawn(move || {
            let report = runner.run();
            assert!(report.is_success(), "{report:?}");
        });
        assert!(handle.wait_running(Duration::from_secs(60)), "running");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !checker.snapshot().is_ready().is_passing() {
            assert!(
                Instant::now() < deadline,
                "{n} checks not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let addr = handle.health_addr().expect("the endpoint's address");
        Running {
            metrics,
            handle,
            addr,
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Labels = Vec<(String, String)>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// The same families and series as a scrape of `n` services, in a plain registry.
fn baseline(n: usize) -> Registry {
    let mut registry = Registry::default();
    let family = |registry: &mut Registry, name: &str, series: Vec<(Labels, f64)>| {
        let f = Family::<Labels, F64Gauge>::default();
        for (labels, value) in series {
            f.get_or_create(&labels).set(value);
        }
        registry.register(name, "help", f);
    };
    let l = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let services: Vec<String> = (0..n).map(|i| format!("service-{i:04}")).collect();
    let checks: Vec<String> = services
        .iter()
        .cloned()
        .chain(["runner".to_owned()])
        .collect();
    let states = [
        "unstarted",
        "starting",
        "started",
        "start_failed",
        "closing",
        "closed",
        "close_failed",
    ];
    family(
        &mut registry,
        "lifecycle_build",
        vec![(
            l(&[
                ("version", "1.0.0"),
                ("git_sha", "bench"),
                ("lifecycle_version", "0.1.0"),
            ]),
            1.0,
        )],
    );
    let single = |registry: &mut Registry, name: &str, value: f64| {
        let g = F64Gauge::default();
        g.set(value);
        registry.register(name, "help", g);
    };
    single(&mut registry, "process_start_time_seconds", 1.7e9);
    family(
        &mut registry,
        "lifecycle_service_state",
        services
            .iter()
            .flat_map(|s| {
                states
                    .iter()
                    .map(|st| (l(&[("service", s), ("state", st)]), 0.0))
            })
            .collect(),
    );
    family(
        &mut registry,
        "lifecycle_service_start_duration_seconds",
        services
            .iter()
            .map(|s| (l(&[("service", s)]), 0.000123))
            .collect(),
    );
    family(
        &mut registry,
        "lifecycle_health_status",
        vec![
            (l(&[("probe", "ready")]), 1.0),
            (l(&[("probe", "health")]), 1.0),
        ],
    );
    for name in [
        "lifecycle_health_check_status",
        "lifecycle_health_check_consecutive_failures",
    ] {
        family(
            &mut registry,
            name,
            checks
                .iter()
                .flat_map(|c| ["ready", "health"].map(|p| (l(&[("check", c), ("probe", p)]), 1.0)))
                .collect(),
        );
    }
    for name in [
        "lifecycle_health_check_poll_duration_seconds",
        "lifecycle_health_check_stuck",
    ] {
        family(
            &mut registry,
            name,
            checks
                .iter()
                .map(|c| (l(&[("check", c)]), 0.0000123))
                .collect(),
        );
    }
    single(&mut registry, "lifecycle_health_stuck_calls", 0.0);
    registry
}

/// A keep-alive HTTP client for `GET /metrics`.
struct Scraper {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Scraper {
    fn connect(addr: std::net::SocketAddr) -> Scraper {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Scraper {
            stream,
            buf: Vec::with_capacity(2 << 20),
        }
    }

    /// Sends one request and reads the whole answer; returns the body's length.
    fn scrape(&mut self) -> usize {
        self.stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            .unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "the endpoint closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(head) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head_text = std::str::from_utf8(&self.buf[..head]).unwrap();
            assert!(head_text.starts_with("HTTP/1.1 200"), "{head_text}");
            let length: usize = head_text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .unwrap();
            if self.buf.len() >= head + 4 + length {
                return length;
            }
        }
    }
}

fn scrape(c: &mut Criterion) {
    let mut group = c.benchmark_group("scrape");
    for n in SERVICE_COUNTS {
        let running = Running::new(n);
        let registry = baseline(n);
        let ours = running.metrics.encode(Format::OpenMetrics);
        let mut theirs = String::new();
        encode(&mut theirs, &registry).unwrap();
        let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
        eprintln!(
            "N = {n}: ours {} series in {} bytes, baseline {} series in {} bytes",
            series(&ours),
            ours.len(),
            series(&theirs),
            theirs.len()
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("openmetrics", n), &n, |b, _| {
            b.iter(|| black_box(running.metrics.encode(Format::OpenMetrics)))
        });
        group.bench_with_input(BenchmarkId::new("prometheus", n), &n, |b, _| {
            b.iter(|| black_box(running.metrics.encode(Format::Prometheus)))
        });
        let mut client = Scraper::connect(running.addr);
        group.bench_with_input(BenchmarkId::new("http", n), &n, |b, _| {
            b.iter(|| black_box(client.scrape()))
        });
        group.bench_with_input(BenchmarkId::new("baseline", n), &n, |b, _| {
            b.iter(|| {
                let mut out = String::new();
                encode(&mut out, &registry).unwrap();
                black_box(out)
            })
        });
        drop(running);
    }
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);

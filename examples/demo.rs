//! A realistic non-async daemon run by `lifecycle::Runner`: a connection pool, a worker loop that
//! uses it, and a small HTTP API (on tiny_http) that uses it too, started in dependency order,
//! closed in reverse on SIGINT/SIGTERM.
//!
//! ```text
//! RUST_LOG=info cargo run --example demo
//! curl localhost:8080/jobs
//! curl 'localhost:8001/readyz?verbose'
//! curl localhost:8001/healthz
//! curl localhost:8001/metrics
//! ```
//!
//! `/metrics` has the lifecycle's metrics (each service's state, start and close durations, each
//! check's status) and the demo's own: `demo_api_requests_total{path,status}` (the API),
//! `demo_worker_jobs_total` and `demo_worker_job_failures_total` (the worker), and
//! `pool_idle_connections` / `pool_size` (a producer, read at every scrape).
//!
//! Flags:
//!
//! - `--health-addr ADDR` (default `127.0.0.1:8001`): where probes get `/livez`, `/readyz` and
//!   `/healthz` (add `?verbose` for the Kubernetes text form).
//! - `--api-addr ADDR` (default `127.0.0.1:8080`): where the API listens.
//! - `--termination-delay SECS` (default 0): how long to keep serving after SIGTERM, not ready,
//!   before closing anything.
//! - `--shutdown-timeout SECS` (default 25): the bound on the whole shutdown.
//! - `--stop-timeout SECS` (default 10): the bound on each service's close.
//!
//! Fault injection, to see what the runner does (NAME is `pool`, `worker` or `api`):
//!
//! - `--fail NAME`: NAME's start fails (rollback, exit code 1);
//! - `--slow-start NAME`: NAME's start waits until it is cancelled (send SIGTERM meanwhile);
//! - `--hang-close NAME`: NAME's close never returns (abandoned at its close timeout).
//!
//! Exit codes: 0 after a graceful shutdown, 1 if anything failed, 130 on a second signal during
//! the shutdown, 2 for bad arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lifecycle::metrics::prometheus_client::metrics::counter::Counter;
use lifecycle::metrics::prometheus_client::metrics::family::Family;
use lifecycle::metrics::Metrics;
use lifecycle::{
    Error, HealthChecker, HealthReport, HealthReporter, Result, Runner, Service, ServiceOptions,
    StartContext, StateMachine, StopSignal,
};

/// The API's requests, by path and status.
type Requests = Family<Vec<(&'static str, String)>, Counter>;
use parking_lot::Mutex;

/// A pool of connections, handed out as tokens over a channel.
struct Pool {
    size: usize,
    sm: StateMachine,
    give: Sender<u32>,
    take: Receiver<u32>,
}

impl Pool {
    fn new(size: usize) -> Arc<Pool> {
        let (give, take) = crossbeam_channel::bounded(size);
        Arc::new(Pool {
            size,
            sm: StateMachine::new(),
            give,
            take,
        })
    }

    /// Runs `f` with a connection, waiting at most `timeout` for one.
    fn with_conn<T>(&self, timeout: Duration, f: impl FnOnce(u32) -> T) -> Result<T> {
        let out = self.sm.if_started(|| {
            let conn = self.take.recv_timeout(timeout).ok()?;
            let out = f(conn);
            let _ = self.give.send(conn);
            Some(out)
        });
        match out {
            Err(_) => Err(Error::msg("pool is not running")),
            Ok(None) => Err(Error::msg("no connection free")),
            Ok(Some(v)) => Ok(v),
        }
    }
}

impl HealthReporter for Pool {
    fn name(&self) -> &str {
        "pool"
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
    fn health_report(&self) -> HealthReport {
        let mut report = HealthReport::single("pool", self.sm.healthy());
        let busy = self.sm.healthy().is_ok() && self.take.is_empty();
        report.insert(
            "pool.connections",
            match busy {
                true => Err(Error::msg(format!("all {} connections busy", self.size))),
                false => Ok(()),
            },
        );
        report
    }
}

impl Service for Pool {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            for conn in 0..self.size as u32 {
                ctx.check("pool")?; // opening connections can be slow: honour a shutdown
                self.give.send(conn)?;
            }
            log::info!("pool: {} connections open", self.size);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            let mut closed = 0;
            while self.take.try_recv().is_ok() {
                closed += 1;
            }
            log::info!("pool: closed {closed} idle connections");
            Ok(())
        })
    }
}

/// A worker loop that does a job with a pool connection every 100 ms.
struct Worker {
    pool: Arc<Pool>,
    sm: StateMachine,
    stop: StopSignal,
    thread: Mutex<Option<JoinHandle<()>>>,
    jobs: Counter,
    failures: Counter,
}

impl HealthReporter for Worker {
    fn name(&self) -> &str {
        "worker"
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
    fn health_report(&self) -> HealthReport {
        // Recent job failures make the worker unhealthy until the next report.
        let status = self
            .sm
            .healthy()
            .and_then(|()| self.sm.errors().flush().map_or(Ok(()), Err));
        HealthReport::single("worker", status)
    }
}

impl Service for Worker {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let (pool, stop) = (self.pool.clone(), self.stop.clone());
            let (jobs, failures) = (self.jobs.clone(), self.failures.clone());
            let handle = std::thread::Builder::new()
                .name("worker".into())
                .spawn(move || {
                    while !stop.wait_timeout(Duration::from_millis(100)) {
                        match pool.with_conn(Duration::from_millis(50), |_conn| ()) {
                            Ok(()) => {
                                jobs.inc();
                            }
                            Err(e) => {
                                failures.inc();
                                log::warn!("worker: job failed: {e}");
                            }
                        }
                    }
                })?;
            *self.thread.lock() = Some(handle);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            if let Some(handle) = self.thread.lock().take() {
                handle.join().map_err(|_| "worker thread panicked")?;
            }
            log::info!("worker: {} jobs done", self.jobs.get());
            Ok(())
        })
    }
}

/// A small HTTP API on tiny_http: `GET /jobs` answers the worker's job count, using a pool
/// connection per request.
struct Api {
    addr: SocketAddr,
    pool: Arc<Pool>,
    jobs: Counter,
    sm: StateMachine,
    stop: StopSignal,
    server: Mutex<Option<Arc<tiny_http::Server>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    served: Arc<AtomicU64>,
    requests: Requests,
}

impl HealthReporter for Api {
    fn name(&self) -> &str {
        "api"
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Api {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let server = Arc::new(tiny_http::Server::http(self.addr)?);
            match server.server_addr().to_ip() {
                Some(addr) => log::info!("api: listening on http://{addr}"),
                None => log::info!("api: listening on {}", self.addr),
            }
            *self.server.lock() = Some(server.clone());
            let (pool, jobs, stop, served) = (
                self.pool.clone(),
                self.jobs.clone(),
                self.stop.clone(),
                self.served.clone(),
            );
            let requests = self.requests.clone();
            let handle = std::thread::Builder::new()
                .name("api".into())
                .spawn(move || {
                    // `close` wakes it with `unblock`; the timeout is only a backstop.
                    while !stop.is_stopped() {
                        let request = match server.recv_timeout(Duration::from_millis(100)) {
                            Ok(Some(request)) => request,
                            Ok(None) => continue,
                            Err(e) => {
                                log::warn!("api: {e}");
                                continue;
                            }
                        };
                        let path = match request.url() {
                            "/jobs" => "/jobs",
                            _ => "other",
                        };
                        let response = match path {
                            "/jobs" => {
                                match pool.with_conn(Duration::from_millis(200), |_| jobs.get()) {
                                    Ok(n) => tiny_http::Response::from_string(format!("{n}\n")),
                                    Err(e) => tiny_http::Response::from_string(format!("{e}\n"))
                                        .with_status_code(503),
                                }
                            }
                            _ => tiny_http::Response::from_string("try /jobs\n")
                                .with_status_code(404),
                        };
                        served.fetch_add(1, Ordering::Relaxed);
                        let status = response.status_code().0.to_string();
                        requests
                            .get_or_create(&vec![("path", path.to_owned()), ("status", status)])
                            .inc();
                        let _ = request.respond(response);
                    }
                })?;
            *self.thread.lock() = Some(handle);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            if let Some(server) = self.server.lock().take() {
                server.unblock(); // wakes the thread out of recv_timeout at once
            }
            if let Some(handle) = self.thread.lock().take() {
                handle.join().map_err(|_| "api thread panicked")?;
            }
            log::info!(
                "api: served {} requests",
                self.served.load(Ordering::Relaxed)
            );
            Ok(())
        })
    }
}

/// Wraps a service to inject a fault, so that the demo can show rollbacks and timeouts.
struct Faulty {
    inner: Arc<dyn Service>,
    fault: Fault,
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    FailStart,
    SlowStart,
    HangClose,
}

impl HealthReporter for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn ready(&self) -> Result<()> {
        self.inner.ready()
    }
    fn health_report(&self) -> HealthReport {
        self.inner.health_report()
    }
}

impl Service for Faulty {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        let name = self.inner.name();
        match self.fault {
            Fault::FailStart => Err(Error::msg("injected start failure (--fail)")),
            Fault::SlowStart => {
                log::info!("{name}: slow start, waiting until cancelled (--slow-start)");
                ctx.wait_timeout(Duration::MAX);
                ctx.check(name)?;
                self.inner.start(ctx)
            }
            Fault::HangClose => self.inner.start(ctx),
        }
    }
    fn close(&self) -> Result<()> {
        if self.fault == Fault::HangClose {
            log::info!("{}: close hangs (--hang-close)", self.inner.name());
            loop {
                std::thread::park();
            }
        }
        self.inner.close()
    }
}

struct Args {
    health_addr: SocketAddr,
    api_addr: SocketAddr,
    termination_delay: Duration,
    shutdown_timeout: Duration,
    stop_timeout: Duration,
    faults: Vec<(String, Fault)>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        health_addr: "127.0.0.1:8001".parse().expect("valid default"),
        api_addr: "127.0.0.1:8080".parse().expect("valid default"),
        termination_delay: Duration::ZERO,
        // The runner's defaults.
        shutdown_timeout: Duration::from_secs(25),
        stop_timeout: Duration::from_secs(10),
        faults: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!("{flag}: {v:?} is not a number of seconds"))
        };
        match flag.as_str() {
            "--health-addr" => {
                let v = value()?;
                args.health_addr = v.parse().map_err(|e| format!("--health-addr {v:?}: {e}"))?;
            }
            "--api-addr" => {
                let v = value()?;
                args.api_addr = v.parse().map_err(|e| format!("--api-addr {v:?}: {e}"))?;
            }
            "--termination-delay" => args.termination_delay = secs(value()?)?,
            "--shutdown-timeout" => args.shutdown_timeout = secs(value()?)?,
            "--stop-timeout" => args.stop_timeout = secs(value()?)?,
            "--fail" => args.faults.push((value()?, Fault::FailStart)),
            "--slow-start" => args.faults.push((value()?, Fault::SlowStart)),
            "--hang-close" => args.faults.push((value()?, Fault::HangClose)),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!(
                "demo: {e}\nusage: demo [--health-addr ADDR] [--api-addr ADDR] [--termination-delay SECS] \
                 [--shutdown-timeout SECS] [--stop-timeout SECS] \
                 [--fail NAME] [--slow-start NAME] [--hang-close NAME]"
            );
            return ExitCode::from(2);
        }
    };

    let metrics = Metrics::new();
    let pool = Pool::new(4);
    let jobs = Counter::default();
    let failures = Counter::default();
    let requests = Requests::default();
    // Read at every scrape, within 100 ms.
    let watched = pool.clone();
    let registered = metrics
        .register("demo_worker_jobs", "Jobs the worker has done", jobs.clone())
        .and_then(|()| {
            metrics.register(
                "demo_worker_job_failures",
                "Jobs the worker could not do",
                failures.clone(),
            )
        })
        .and_then(|()| {
            metrics.register(
                "demo_api_requests",
                "Requests the API has answered",
                requests.clone(),
            )
        })
        .and_then(|()| {
            metrics.add_producer("pool", Duration::from_millis(100), move |out| {
                out.gauge("size", "Connections in the pool.", watched.size as f64)
                    .gauge(
                        "idle_connections",
                        "Connections not in use.",
                        watched.take.len() as f64,
                    );
                Ok(())
            })
        });
    if let Err(e) = registered {
        eprintln!("demo: {e}");
        return ExitCode::from(2);
    }
    let worker = Arc::new(Worker {
        pool: pool.clone(),
        sm: StateMachine::new(),
        stop: StopSignal::new(),
        thread: Mutex::new(None),
        jobs: jobs.clone(),
        failures,
    });
    let api = Arc::new(Api {
        addr: args.api_addr,
        pool: pool.clone(),
        jobs,
        sm: StateMachine::new(),
        stop: StopSignal::new(),
        server: Mutex::new(None),
        thread: Mutex::new(None),
        served: Arc::new(AtomicU64::new(0)),
        requests,
    });

    let checker = Arc::new(HealthChecker::new(
        env!("CARGO_PKG_VERSION"),
        option_env!("GIT_SHA").unwrap_or("dev"),
    ));
    let mut runner = Runner::new()
        .health(checker)
        .health_endpoint(args.health_addr)
        .metrics(metrics)
        .termination_delay(args.termination_delay)
        .shutdown_timeout(args.shutdown_timeout)
        .close_timeout(args.stop_timeout);
    let services: [Arc<dyn Service>; 3] = [pool, worker, api];
    for service in services {
        let fault = args.faults.iter().find(|(n, _)| n == service.name());
        let service: Arc<dyn Service> = match fault {
            Some(&(_, fault)) => Arc::new(Faulty {
                inner: service,
                fault,
            }),
            None => service,
        };
        runner = runner.service_with(service, ServiceOptions::new());
    }

    let report = runner.run();
    for s in report.services() {
        log::debug!(
            "{}: ready in {:?}, closed in {:?}",
            s.name(),
            s.ready_in(),
            s.closed_in()
        );
    }
    std::process::Termination::report(report)
}

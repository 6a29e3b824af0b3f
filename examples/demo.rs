//! A realistic non-async daemon run by `lifecycle::Runner`: a connection pool, a worker loop that
//! uses it, and a small HTTP API (on tiny_http) that uses it too, started in dependency order,
//! closed in reverse on SIGINT/SIGTERM, upgraded without downtime on SIGHUP (below).
//!
//! ```text
//! cargo run --example demo
//! curl localhost:8080/jobs
//! curl localhost:8080/pid            # the process serving
//! kill -HUP $(pgrep -x demo)         # an upgrade: another pid serves, nothing refused
//! curl 'localhost:8001/readyz?verbose'
//! curl localhost:8001/healthz
//! curl localhost:8001/metrics
//! curl localhost:8080/readyz         # the API's own port answers the health routes too
//! cargo run --example demo -- --help # the flags
//! ```
//!
//! The three services show the three ways to write one:
//!
//! - the worker is a [`Worker::new`]: a loop until stopped, that counts its jobs in metrics.
//!   It is given as a factory ([`Runner::restartable`]), restarted on failure: a fresh worker
//!   replaces one whose loop fails, after a backoff, within the runner's restart budget;
//! - the API is a [`Worker::with_setup`]: the setup binds (a bind error fails the start and
//!   names the address; under systemd's socket activation it takes the socket named `api`, as
//!   the health endpoint takes `health`) and hands the socket to tiny_http, the run closure serves until
//!   stopped and drained, `ready_when` makes it ready only while tiny_http accepts connections,
//!   and the `on_close` hook hands the listening socket off (below). Its loop offers every
//!   request to a [`TinyHttpRoutes`] first, with the runner's checker and metrics, so the API's
//!   port answers `/livez`, `/readyz`, `/healthz` and `/metrics` exactly as the health endpoint
//!   does; its own routes are `/jobs` (the worker's job count) and `/pid` (the process id);
//! - the connection pool is a hand-written [`Service`] with a [`StateMachine`], and a health
//!   report with a sub-component (`pool.connections`).
//!
//! `/metrics` has the lifecycle's metrics (each service's state, start and close durations, each
//! check's status) and the demo's own: `demo_api_requests_total{path,status}` (the API's own
//! routes), `demo_worker_jobs_total` and `demo_worker_job_failures_total` (the worker), and
//! `pool_idle_connections` / `pool_size` (a producer, read at every scrape).
//!
//! The flags (also in the README, and printed by `--help`; parsed in `demo/cli.rs`) choose the
//! addresses and the timeouts, and inject faults, to see what the runner does: `--fail NAME`,
//! `--slow-start NAME` and `--hang-close NAME`, for NAME `pool`, `worker` or `api`; and
//! `--crash worker` (the worker fails every 8 s: restarted, the program stays up and ready) and
//! `--crash-loop worker` (it fails at once every time: the restart budget runs out, exit 75).
//! `--print-config` prints the settings the flags give, which the deployment files in `deploy/`
//! are checked against (`tests/deploy_files.rs`).
//!
//! # Upgrades
//!
//! On SIGHUP the runner starts the demo again ([`Runner::upgrade_on_sighup`]), handing the new
//! process the health endpoint's socket and the API's (`api`, which the new process's
//! `systemd::listener` takes instead of binding); once the new process is ready, this one
//! closes as on SIGTERM and exits 0. `--upgrade-timeout` bounds the new process's start, and
//! `--fail-upgraded NAME` and `--slow-start-upgraded NAME` inject faults in a process started
//! by an upgrade only, to see the old one keep serving.
//!
//! The API's close loses no request although the socket is shared with the new process: it
//! swaps tiny_http's listening descriptor for a private listener, wakes tiny_http's blocked
//! `accept`, waits until a marker request sent to the private listener comes through (tiny_http
//! can no longer take a connection from the shared socket), and answers everything from the
//! close's start with `Connection: close` until tiny_http holds no connection (bounded). The
//! details are in `demo/handover.rs`. A plain shutdown closes the same way.
//!
//! Exit codes: 0 after a graceful shutdown, 1 if anything failed, 75 when the restart budget ran
//! out ([`Runner::RESTART_BUDGET_EXIT_CODE`]), 130 on a second signal during the shutdown, 2 for
//! a usage error.
//!
//! # When the API can no longer accept
//!
//! tiny_http 0.12's accept loop ends for good at its first accept error (`EMFILE`, out of file
//! descriptors), or panics when it cannot clone the connection it accepted, and closes its
//! listening socket either way. The API watches that socket (with `fstat(2)`: the demo is for
//! Unix). From then on it is not ready, and it reports a fatal error ([`RunHandle::fatal`]):
//! the program drains (the API still answering the connections already open), closes, and
//! exits with code 1, for its supervisor to restart it. Alive but never ready again, it would
//! never be restarted; and tiny_http cannot restart its accept loop.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lifecycle::health::TinyHttpRoutes;
use lifecycle::metrics::prometheus_client::metrics::counter::Counter;
use lifecycle::metrics::prometheus_client::metrics::family::Family;
use lifecycle::metrics::Metrics;
use lifecycle::{
    BoxError, Error, HealthChecker, HealthReport, HealthReporter, Phase, Result, RunHandle, Runner,
    Service, ServiceOptions, StartContext, StateMachine, StopSignal, Worker,
};

#[path = "demo/cli.rs"]
mod cli;
#[path = "demo/handover.rs"]
mod handover;
use cli::{parse_args, Args, Command, Crash, Fault, CRASH_EVERY, HELP, USAGE};
use handover::{respond_closing, Handover, Listening, DRAIN, TICK};

// The services' names, in start order: what `--fail` and the other fault flags accept.
const POOL: &str = "pool";
const WORKER: &str = "worker";
const API: &str = "api";
const SERVICES: [&str; 3] = [POOL, WORKER, API];

/// How often the health checker polls each service, and how long one poll may take (the
/// library's defaults, set here so that `--print-config` says them).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The API's requests to its own routes, by path and status.
type Requests = Family<Vec<(&'static str, String)>, Counter>;

/// A pool of connections, handed out as tokens over a channel: a hand-written [`Service`], whose
/// [`StateMachine`] makes its start and close run once and guards its use.
struct Pool {
    size: usize,
    sm: StateMachine,
    give: Sender<u32>,
    take: Receiver<u32>,
}

impl Pool {
    fn new(size: usize) -> Pool {
        let (give, take) = crossbeam_channel::bounded(size);
        Pool {
            size,
            sm: StateMachine::new(),
            give,
            take,
        }
    }

    /// Runs `f` with a connection, waiting at most `timeout` for one.
    ///
    /// # Errors
    ///
    /// When the pool is not started (or closed already), or no connection is free in time.
    fn with_conn<T>(&self, timeout: Duration, f: impl FnOnce(u32) -> T) -> Result<T> {
        // The state machine's read lock is held meanwhile: the close waits for `f`.
        let used = self.sm.if_started(|| {
            let conn = self
                .take
                .recv_timeout(timeout)
                .map_err(|_| Error::msg(format!("no connection free within {timeout:?}")))?;
            let out = f(conn);
            let _ = self.give.send(conn);
            Ok(out)
        });
        used.map_err(|e| e.in_service(POOL, Phase::Run))?
    }

    fn idle(&self) -> usize {
        self.take.len()
    }
}

impl HealthReporter for Pool {
    fn name(&self) -> &str {
        POOL
    }

    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }

    /// The pool itself, and a sub-component: its connections, unhealthy while all are busy.
    fn health_report(&self) -> HealthReport {
        let mut report = HealthReport::single(POOL, self.sm.healthy());
        let all_busy = self.sm.healthy().is_ok() && self.idle() == 0;
        report.insert(
            "pool.connections",
            match all_busy {
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
                ctx.check(POOL)?; // opening connections can be slow: honour a shutdown
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

/// The worker: a loop that does a job with a pool connection every 100 ms until stopped,
/// counting its jobs (in `jobs`, which the API reports too) and failures in `metrics`.
fn worker(
    pool: Arc<Pool>,
    jobs: Counter,
    metrics: &Metrics,
    crash: Option<Crash>,
) -> Result<impl Fn() -> Worker + Send + Sync + 'static> {
    let failures: Counter = Counter::default();
    metrics.register("demo_worker_jobs", "Jobs the worker has done", jobs.clone())?;
    metrics.register(
        "demo_worker_job_failures",
        "Jobs the worker could not do",
        failures.clone(),
    )?;
    // A fresh worker for each start: the first, and one after each failure.
    Ok(move || {
        let (pool, jobs, failures) = (pool.clone(), jobs.clone(), failures.clone());
        Worker::new(WORKER, move |stop: &StopSignal| {
            work(&pool, &jobs, &failures, stop, crash)
        })
    })
}

/// The worker's loop: a job every 100 ms until stopped; under `--crash` it fails after
/// [`CRASH_EVERY`], under `--crash-loop` at once.
fn work(
    pool: &Pool,
    jobs: &Counter,
    failures: &Counter,
    stop: &StopSignal,
    crash: Option<Crash>,
) -> std::result::Result<(), BoxError> {
    let began = std::time::Instant::now();
    if crash == Some(Crash::Loop) {
        return Err("injected crash as it starts (--crash-loop)".into());
    }
    while !stop.wait_timeout(Duration::from_millis(100)) {
        if crash == Some(Crash::Periodic) && began.elapsed() >= CRASH_EVERY {
            return Err(format!("injected crash after {CRASH_EVERY:?} (--crash)").into());
        }
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
    log::info!("worker: {} jobs done", jobs.get());
    Ok(())
}

/// How long the API waits for a request before it looks again whether tiny_http accepts.
const WATCH: Duration = Duration::from_secs(1);

/// What the API's setup makes and its run closure serves with.
struct Api {
    /// Dropped before `handover`, whose drop then wakes tiny_http's accept thread.
    server: tiny_http::Server,
    /// tiny_http's listening socket, watched until the close begins.
    listening: Listening,
    /// The close's hand-off of the listening socket (see `demo/handover.rs`).
    handover: Handover,
    /// The runner's handle, to shut the program down once tiny_http no longer accepts.
    runner: Option<RunHandle>,
    /// The health routes (and `/metrics`), answered on the API's port too.
    routes: TinyHttpRoutes,
    pool: Arc<Pool>,
    jobs: Counter,
    requests: Requests,
}

impl Api {
    /// Serves until the close has handed the listening socket off and drained tiny_http's
    /// connections (see `demo/handover.rs`). Until the close, once tiny_http no longer
    /// accepts, it reports a fatal error and goes on answering the connections already open.
    ///
    /// # Errors
    ///
    /// Once tiny_http's accept loop has ended, if there is no runner to tell.
    fn serve(&self) -> std::result::Result<(), BoxError> {
        let mut served = 0u64;
        let mut reported = false;
        let mut drain: Option<Instant> = None;
        loop {
            let wait = if self.handover.closing() { TICK } else { WATCH };
            let idle = match self.server.recv_timeout(wait) {
                Ok(Some(request)) => {
                    served += u64::from(self.handle(request));
                    false
                }
                Ok(None) => true,
                // The one error tiny_http hands over: the one that ended its accept loop.
                Err(e) => {
                    *self.listening.ended.lock() = Some(e.to_string());
                    false
                }
            };
            if self.handover.settled() {
                // The drain: done once tiny_http holds no connection, looked at while no
                // request waits; or at its bound, with what is queued answered.
                let began = *drain.get_or_insert_with(Instant::now);
                if idle && self.handover.connections() == Some(0) {
                    break;
                }
                if began.elapsed() >= DRAIN {
                    while let Ok(Some(request)) = self.server.try_recv() {
                        served += u64::from(self.handle(request));
                    }
                    let open = self.handover.connections();
                    let open = open.map_or("some".to_owned(), |n| n.to_string());
                    log::warn!("api: {open} connections still open after {DRAIN:?}");
                    break;
                }
                continue;
            }
            if self.handover.closing() {
                continue;
            }
            if let (false, Err(e)) = (reported, self.listening.accepting()) {
                let Some(runner) = &self.runner else {
                    return Err(e.into());
                };
                runner.fatal(e.in_service(API, Phase::Run));
                reported = true;
            }
        }
        log::info!("api: served {served} requests");
        Ok(())
    }

    /// Answers `request`: the hand-off's marker, a health route, or one of the API's own
    /// routes; returns whether it was a request to count (not the marker).
    fn handle(&self, request: tiny_http::Request) -> bool {
        if self.handover.is_marker(&request) {
            self.handover.marker_arrived(request);
            return false;
        }
        if let Some(request) = self.routes.respond(request) {
            self.answer(request);
        }
        true
    }

    /// The API's own routes: `GET /jobs` answers the worker's job count, using a pool
    /// connection; `GET /pid` the process's id. From the start of the close, answered with
    /// `Connection: close`.
    fn answer(&self, request: tiny_http::Request) {
        let path = match request.url().split('?').next() {
            Some("/jobs") => "/jobs",
            Some("/pid") => "/pid",
            _ => "other",
        };
        let (status, body) = match path {
            "/jobs" => match self
                .pool
                .with_conn(Duration::from_millis(200), |_| self.jobs.get())
            {
                Ok(n) => (200, format!("{n}\n")),
                Err(e) => (503, format!("{e}\n")),
            },
            "/pid" => (200, format!("{}\n", std::process::id())),
            _ => (404, "try /jobs, /pid, or /readyz\n".to_owned()),
        };
        self.requests
            .get_or_create(&vec![
                ("path", path.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        if self.handover.closing() {
            return respond_closing(request, status, &body);
        }
        let response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Err(e) = request.respond(response) {
            log::debug!("api: answering: {e}");
        }
    }
}

/// The API on `addr`: its setup binds (a failure there is a start failure, that names the
/// address) and hands the socket to tiny_http; its run closure serves until the close has
/// drained it; it is ready only while tiny_http accepts, and until its close; its close hook
/// hands the listening socket off (see `demo/handover.rs`). It counts the requests to its own
/// routes in `metrics`.
fn api(
    addr: SocketAddr,
    routes: TinyHttpRoutes,
    pool: Arc<Pool>,
    jobs: Counter,
    metrics: &Metrics,
) -> Result<Worker<Api>> {
    let requests = Requests::default();
    metrics.register(
        "demo_api_requests",
        "Requests the API has answered on its own routes",
        requests.clone(),
    )?;
    let api = Worker::with_setup(
        API,
        move |ctx: &StartContext| {
            // Under socket activation (or after an upgrade), the socket named `api`; else one
            // bound to `addr`.
            let listener = lifecycle::systemd::listener(API, addr)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let listening = Listening::watch(&listener)?;
            let handover = Handover::new(&listener)?;
            log::info!("api: listening on http://{}", listener.local_addr()?);
            Ok(Api {
                server: tiny_http::Server::from_listener(listener, None)?,
                listening,
                handover,
                runner: ctx.run_handle().cloned(),
                routes,
                pool,
                jobs,
                requests,
            })
        },
        // The close's stop signal is not the end: the close hook's hand-off is.
        |api: &Api, _stop: &StopSignal| api.serve(),
    )
    // The hand-off swaps tiny_http's descriptor: no longer watched once the close begins.
    .ready_when(|api: &Api| match api.handover.closing() {
        true => Ok(()),
        false => api.listening.accepting(),
    })
    .on_close(|api: &Api| api.handover.hand_off());
    Ok(api)
}

/// `service`, wrapped to inject each of `faults`.
fn with_faults(mut service: Arc<dyn Service>, faults: &[Fault]) -> Arc<dyn Service> {
    for &fault in faults {
        service = Arc::new(Faulty {
            inner: service,
            fault,
        });
    }
    service
}

/// Wraps a service to inject a fault, so that the demo can show rollbacks and timeouts.
struct Faulty {
    inner: Arc<dyn Service>,
    fault: Fault,
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
            Fault::FailStartUpgraded => Err(Error::msg(
                "injected start failure in a process started by an upgrade (--fail-upgraded)",
            )),
            Fault::SlowStart | Fault::SlowStartUpgraded => {
                let flag = match self.fault {
                    Fault::SlowStart => "--slow-start",
                    _ => "--slow-start-upgraded",
                };
                log::info!("{name}: slow start, waiting until cancelled ({flag})");
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

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{USAGE}\n\n{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::PrintConfig(args)) => {
            print!("{}", args.config());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n{USAGE}\n(demo --help says more)");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the services and runs them; returns the run's exit code.
fn run(args: Args) -> Result<ExitCode> {
    let metrics = Metrics::new();
    let pool = Arc::new(Pool::new(4));
    // The pool's gauges, read at every scrape, within 100 ms.
    let watched = pool.clone();
    metrics.add_producer("pool", Duration::from_millis(100), move |out| {
        out.gauge("size", "Connections in the pool.", watched.size as f64)
            .gauge(
                "idle_connections",
                "Connections not in use.",
                watched.idle() as f64,
            );
        Ok(())
    })?;

    // One checker and one set of metrics, served by the runner's endpoint and on the API's port.
    let checker = Arc::new(
        HealthChecker::builder(
            env!("CARGO_PKG_VERSION"),
            option_env!("GIT_SHA").unwrap_or("dev"),
        )
        .interval(CHECK_INTERVAL)
        .timeout(CHECK_TIMEOUT)
        .build(),
    );
    let routes = TinyHttpRoutes::new(checker.clone()).metrics(metrics.clone());

    let jobs: Counter = Counter::default();
    let worker = worker(pool.clone(), jobs.clone(), &metrics, args.crash)?;
    let api = api(args.api_addr, routes, pool.clone(), jobs, &metrics)?;

    let mut runner = Runner::new()
        .health(checker)
        .health_endpoint(args.health_addr)
        .metrics(metrics)
        .termination_delay(args.termination_delay)
        .shutdown_timeout(args.shutdown_timeout)
        .close_timeout(args.close_timeout)
        .start_timeout(args.start_timeout)
        // SIGHUP: the zero-downtime upgrade (see the module's doc).
        .upgrade_on_sighup(true)
        .upgrade_timeout(args.upgrade_timeout);
    if let Some(path) = &args.pid_file {
        runner = runner.pid_file(path);
    }
    let faults = |name: &str| -> Vec<Fault> {
        let faults = args.faults.iter().filter(|(n, _)| n == name);
        // `--fail-upgraded` and `--slow-start-upgraded` only in a process an upgrade started.
        faults
            .map(|&(_, fault)| fault)
            .filter(|f| f.applies())
            .collect()
    };
    runner = runner.service(with_faults(pool, &faults(POOL)));
    // The worker, restarted when its loop fails (each fresh instance with its faults).
    let worker_faults = faults(WORKER);
    let restartable = move || with_faults(Arc::new(worker()), &worker_faults);
    runner = runner.restartable(restartable, ServiceOptions::new().restart_on_failure());
    runner = runner.service(with_faults(Arc::new(api), &faults(API)));

    // The runner has logged a summary line per service; the report's errors go to standard
    // error (within a bound: a stuck standard error never keeps the process from exiting).
    Ok(std::process::Termination::report(runner.run()))
}

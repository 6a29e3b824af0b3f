//! A small non-async daemon: a connection pool and a worker that depends on it, started in
//! dependency order with `MultiStart`, run until Ctrl-C (or `--run-for SECS`), then closed in
//! reverse.
//!
//! ```text
//! RUST_LOG=info cargo run --example multistart
//! RUST_LOG=info cargo run --example multistart -- --run-for 3 --fail-worker
//! ```
//!
//! `--fail-worker` makes the worker fail to start, to show the rollback: the pool, already
//! started, is closed again and the error names the worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lifecycle::{
    Error, HealthReport, HealthReporter, MultiStart, Result, Service, StartContext, StateMachine,
    StopSignal,
};
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
        let mut out = None;
        let ran = self.sm.if_started(|| {
            if let Ok(conn) = self.take.recv_timeout(timeout) {
                out = Some(f(conn));
                let _ = self.give.send(conn);
            }
        });
        match (ran, out) {
            (false, _) => Err(Error::msg("pool is not running")),
            (true, None) => Err(Error::msg("no connection free")),
            (true, Some(v)) => Ok(v),
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
        let free = self.take.len();
        let status = if self.sm.healthy().is_ok() && free == 0 {
            Err(Error::msg(format!("all {} connections busy", self.size)))
        } else {
            Ok(())
        };
        report.insert("pool.connections", status);
        report
    }
}

impl Service for Pool {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm.start_once("pool", || {
            for conn in 0..self.size as u32 {
                ctx.check("pool")?; // opening connections can be slow: honour a shutdown
                self.give.send(conn)?;
            }
            log::info!("pool: {} connections open", self.size);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.stop_once("pool", || {
            let mut closed = 0;
            while self.take.try_recv().is_ok() {
                closed += 1;
            }
            log::info!("pool: closed {closed} connections");
            Ok(())
        })
    }
}

/// A worker loop that does a job with a pool connection every 200 ms.
struct Worker {
    pool: Arc<Pool>,
    fail_start: bool,
    sm: StateMachine,
    stop: StopSignal,
    thread: Mutex<Option<JoinHandle<()>>>,
    jobs: Arc<AtomicU64>,
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
        self.sm.start_once("worker", || {
            if self.fail_start {
                return Err("queue is not reachable (--fail-worker)".into());
            }
            let (pool, stop, jobs) = (self.pool.clone(), self.stop.clone(), self.jobs.clone());
            let errors = move |e: Error| log::warn!("worker: job failed: {e}");
            let handle = std::thread::Builder::new()
                .name("worker".into())
                .spawn(move || {
                    while !stop.wait_timeout(Duration::from_millis(200)) {
                        match pool.with_conn(Duration::from_millis(100), |_conn| ()) {
                            Ok(()) => {
                                jobs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors(e),
                        }
                    }
                })?;
            *self.thread.lock() = Some(handle);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.stop_once("worker", || {
            self.stop.stop();
            if let Some(handle) = self.thread.lock().take() {
                handle.join().map_err(|_| "worker thread panicked")?;
            }
            log::info!(
                "worker: stopped after {} jobs",
                self.jobs.load(Ordering::Relaxed)
            );
            Ok(())
        })
    }
}

struct Args {
    run_for: Option<Duration>,
    fail_worker: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        run_for: None,
        fail_worker: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--run-for" => {
                let secs: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--run-for needs a number of seconds")?;
                args.run_for = Some(Duration::from_secs_f64(secs));
            }
            "--fail-worker" => args.fail_worker = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("multistart: {e}\nusage: multistart [--run-for SECS] [--fail-worker]");
            return std::process::ExitCode::from(2);
        }
    };

    let shutdown = StopSignal::new();
    let on_signal = shutdown.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        on_signal.stop();
    }) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return std::process::ExitCode::FAILURE;
    }

    let pool = Pool::new(4);
    let worker = Arc::new(Worker {
        pool: pool.clone(),
        fail_start: args.fail_worker,
        sm: StateMachine::new(),
        stop: StopSignal::new(),
        thread: Mutex::new(None),
        jobs: Arc::new(AtomicU64::new(0)),
    });
    let reporters: [Arc<dyn HealthReporter>; 2] = [pool.clone(), worker.clone()];

    let mut services = MultiStart::new();
    let ctx = StartContext::new(shutdown.clone(), Some(Duration::from_secs(10)));
    if let Err(e) = services.start(&ctx, [pool as Arc<dyn Service>, worker]) {
        log::error!("start failed, rolled back: {e}");
        return std::process::ExitCode::FAILURE;
    }
    log::info!("running; press Ctrl-C to stop");

    let began = Instant::now();
    let deadline = args.run_for.map(|d| began + d);
    loop {
        let tick = Duration::from_secs(1);
        let wait = deadline.map_or(tick, |d| {
            tick.min(d.saturating_duration_since(Instant::now()))
        });
        if shutdown.wait_timeout(wait) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut health = HealthReport::new();
        for r in &reporters {
            health.merge(r.health_report());
        }
        let failing: Vec<String> = health
            .failures()
            .map(|(n, e)| format!("{n}: {e}"))
            .collect();
        log::info!(
            "health: {}",
            if failing.is_empty() {
                "ok".to_string()
            } else {
                failing.join("; ")
            }
        );
    }

    log::info!("shutting down after {:?}", began.elapsed());
    match services.close() {
        Ok(()) => {
            log::info!("stopped cleanly");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("shutdown: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Runner benchmarks: starting and shutting down N services through [`Runner`], against the
//! cheapest thread code doing the same work (the ceiling) and against `tokio-graceful-shutdown`
//! (the async peer), all in the same run.
//!
//! The machine the figures in `BENCHMARKS.md` come from is small and shared, so only the ratio of
//! a benchmark to its ceiling, measured in the same run, is meaningful.
//!
//! # The work: one thread per service
//!
//! A service here is the canonical service of the `StopSignal` docs, reduced to nothing: a
//! [`StateMachine`] whose `start` spawns a named worker thread and waits until that thread has
//! sent a "ready" message, and whose `close` fires the service's [`StopSignal`] and joins the
//! worker. The worker does nothing but send "ready" and wait on the signal.
//!
//! # Variants, for N = 10, 100 and 1000
//!
//! - `runner`: a [`Runner`] with the N services and `handle_signals(false)`; `run` on a thread of
//!   its own. **start** is from spawning that thread until [`RunHandle::wait_running`] returns
//!   (every service started and ready, one after the other); **stop** is from
//!   [`RunHandle::shutdown`] until that thread, having returned from `run`, is joined (the N
//!   services closed in reverse). For every service the runner also spawns and joins a
//!   short-lived `start NAME` thread and a `close NAME` thread, so that it can abandon a start or a
//!   close that hangs: that is the expected source of its overhead.
//! - `raw_threads` (the ceiling): the same worker threads in a plain loop. **start**: spawn
//!   worker i, wait for its ready message, then the next. **stop**: for i from N − 1 down to 0,
//!   fire worker i's `StopSignal` and join it (the same ordered shutdown as the runner's: one
//!   worker is gone before the next is told to stop).
//! - `raw_threads_helper` (to attribute the runner's overhead, not a ceiling): `raw_threads` with
//!   each worker's start, and each worker's stop-and-join, run on a short-lived helper thread that
//!   sends its result over a channel and is joined, as the runner's `start NAME` and `close NAME`
//!   threads are. What remains between it and `runner` is the runner's own bookkeeping (the
//!   readiness poll, the report, logging calls, `select!`s).
//! - `tokio_graceful_shutdown` (the async peer): a `Toplevel` whose root subsystem starts N
//!   subsystems, each of which reports that it has started and then runs until
//!   `on_shutdown_requested()`. That is idiomatic for that crate: subsystems are tasks (no thread
//!   each), started all at once, not gated on one another. **start** is from spawning the
//!   toplevel on the runtime until the last subsystem reports; **stop** is from cancelling the
//!   toplevel's shutdown token until `handle_shutdown_requests` has returned. The multi-threaded
//!   runtime (2 worker threads on the 2-core machine) is built once per benchmark, outside the
//!   timings, as a program builds it once.
//!
//! Each phase is its own benchmark (`<variant>/start/N`, `<variant>/stop/N`); each iteration runs
//! a whole cycle, start and stop, and returns only its phase's time (`iter_custom`). Building the
//! services and the runner is not timed; dropping them is not timed either.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench runner` (criterion options after `--`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use lifecycle::{HealthReporter, Result, Runner, Service, StartContext, StateMachine, StopSignal};
use parking_lot::Mutex;
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};
use tokio_util::sync::CancellationToken;

/// The service counts measured.
const SERVICE_COUNTS: [usize; 3] = [10, 100, 1000];

/// Starts a worker thread named `name` that sends one ready message, then waits on `stop`.
/// Returns once the worker has sent its ready message.
fn spawn_worker(name: String, stop: StopSignal) -> std::io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let _ = ready_tx.send(());
        stop.wait();
    })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("worker ended before it was ready"))?;
    Ok(handle)
}

/// A service that owns one worker thread, which does nothing until it is told to stop.
struct Trivial {
    name: String,
    sm: StateMachine,
    stop: StopSignal,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Trivial {
    fn new(i: usize) -> Trivial {
        Trivial {
            name: format!("svc-{i}"),
            sm: StateMachine::new(),
            stop: StopSignal::new(),
            worker: Mutex::new(None),
        }
    }
}

impl HealthReporter for Trivial {
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Trivial {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let handle = spawn_worker(self.name.clone(), self.stop.clone())?;
            *self.worker.lock() = Some(handle);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            if let Some(handle) = self.worker.lock().take() {
                handle.join().map_err(|_| "worker panicked")?;
            }
            Ok(())
        })
    }
}

/// The durations of one start-and-stop cycle.
#[derive(Clone, Copy)]
struct Cycle {
    start: Duration,
    stop: Duration,
}

impl Cycle {
    fn phase(self, phase: Phase) -> Duration {
        match phase {
            Phase::Start => self.start,
            Phase::Stop => self.stop,
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Start,
    Stop,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Stop => "stop",
        }
    }
}

/// One cycle through a [`Runner`].
fn runner_cycle(n: usize) -> Cycle {
    let runner = Runner::new()
        .handle_signals(false)
        .services((0..n).map(Trivial::new));
    let handle = runner.handle();

    let began = Instant::now();
    let run = std::thread::Builder::new()
        .name("run".into())
        .spawn(move || runner.run())
        .expect("spawn the run thread");
    assert!(
        handle.wait_running(Duration::from_secs(60)),
        "the runner did not reach its run phase"
    );
    let start = began.elapsed();

    let began = Instant::now();
    handle.shutdown();
    let report = run.join().expect("the run thread panicked");
    let stop = began.elapsed();

    assert!(report.is_success(), "run failed: {:?}", report.error());
    Cycle { start, stop }
}

/// One cycle of the same workers in a plain loop: the ceiling.
fn raw_cycle(n: usize) -> Cycle {
    let stops: Vec<StopSignal> = (0..n).map(|_| StopSignal::new()).collect();
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i}")).collect();
    let mut workers = Vec::with_capacity(n);

    let began = Instant::now();
    for (name, stop) in names.into_iter().zip(&stops) {
        workers.push(spawn_worker(name, stop.clone()).expect("spawn a worker"));
    }
    let start = began.elapsed();

    let began = Instant::now();
    for (worker, stop) in workers.into_iter().zip(&stops).rev() {
        stop.stop();
        worker.join().expect("a worker panicked");
    }
    let stop = began.elapsed();

    Cycle { start, stop }
}

/// Runs `f` on a new thread named `name`, receives its result over a channel and joins the
/// thread: what the runner does around every start and every close.
fn on_helper<T: Send + 'static>(name: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let helper = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a helper thread");
    let result = rx.recv().expect("the helper sends its result");
    helper.join().expect("a helper panicked");
    result
}

/// [`raw_cycle`] with each start and each stop on a helper thread of its own, as the runner
/// does: attributes the runner's overhead.
fn raw_helper_cycle(n: usize) -> Cycle {
    let stops: Vec<StopSignal> = (0..n).map(|_| StopSignal::new()).collect();
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i}")).collect();
    let mut workers = Vec::with_capacity(n);

    let began = Instant::now();
    for (name, stop) in names.into_iter().zip(&stops) {
        let stop = stop.clone();
        let worker = on_helper(format!("start {name}"), move || spawn_worker(name, stop));
        workers.push(worker.expect("spawn a worker"));
    }
    let start = began.elapsed();

    let began = Instant::now();
    for (i, (worker, stop)) in workers.into_iter().zip(&stops).enumerate().rev() {
        let stop = stop.clone();
        on_helper(format!("close svc-{i}"), move || {
            stop.stop();
            worker.join()
        })
        .expect("a worker panicked");
    }
    let stop = began.elapsed();

    Cycle { start, stop }
}

/// One cycle of `tokio-graceful-shutdown` with N subsystems on `rt`: the async peer.
fn tokio_cycle(rt: &tokio::runtime::Runtime, n: usize) -> Cycle {
    let token = CancellationToken::new();
    let started = Arc::new(AtomicUsize::new(0));
    let (all_started_tx, all_started_rx) = crossbeam_channel::bounded::<()>(1);

    let began = Instant::now();
    let toplevel = {
        let token = token.clone();
        rt.spawn(async move {
            Toplevel::new_with_shutdown_token(
                async move |s: &mut SubsystemHandle| {
                    for i in 0..n {
                        let started = started.clone();
                        let all_started = all_started_tx.clone();
                        s.start(SubsystemBuilder::new(
                            format!("svc-{i}"),
                            async move |subsys: &mut SubsystemHandle| {
                                if started.fetch_add(1, Ordering::AcqRel) + 1 == n {
                                    let _ = all_started.send(());
                                }
                                subsys.on_shutdown_requested().await;
                                Ok::<(), std::convert::Infallible>(())
                            },
                        ));
                    }
                },
                token,
            )
            .handle_shutdown_requests(Duration::from_secs(60))
            .await
        })
    };
    all_started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("every subsystem starts");
    let start = began.elapsed();

    let began = Instant::now();
    token.cancel();
    let result = rt.block_on(toplevel).expect("the toplevel task panicked");
    let stop = began.elapsed();

    assert!(result.is_ok(), "shutdown failed: {result:?}");
    Cycle { start, stop }
}

/// Benchmarks `cycle` for each phase and each N, in the group `variant`.
fn bench_variant(c: &mut Criterion, variant: &str, mut cycle: impl FnMut(usize) -> Cycle) {
    let mut group = c.benchmark_group(variant);
    // A cycle at N = 1000 takes tens of milliseconds: few, equal-sized samples.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in SERVICE_COUNTS {
        for phase in [Phase::Start, Phase::Stop] {
            group.bench_with_input(BenchmarkId::new(phase.as_str(), n), &n, |b, &n| {
                b.iter_custom(|iters| (0..iters).map(|_| cycle(n).phase(phase)).sum());
            });
        }
    }
    group.finish();
}

fn runner(c: &mut Criterion) {
    bench_variant(c, "runner", runner_cycle);
}

fn raw_threads(c: &mut Criterion) {
    bench_variant(c, "raw_threads", raw_cycle);
}

fn raw_threads_helper(c: &mut Criterion) {
    bench_variant(c, "raw_threads_helper", raw_helper_cycle);
}

fn tokio_graceful_shutdown(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    bench_variant(c, "tokio_graceful_shutdown", |n| tokio_cycle(&rt, n));
}

criterion_group!(
    benches,
    runner,
    raw_threads,
    raw_threads_helper,
    tokio_graceful_shutdown
);
criterion_main!(benches);

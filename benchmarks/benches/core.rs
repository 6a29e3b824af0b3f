//! Core benchmarks: what the library costs over the code it wraps.
//!
//! Every benchmark here is paired with a *ceiling*, the cheapest code that does the same useful
//! work, measured in the same run. The machine the figures in `BENCHMARKS.md` come from is small
//! and shared, so only the ratio of a benchmark to its ceiling is meaningful, not its absolute
//! time.
//!
//! # `multistart`: starting and closing N trivial services
//!
//! A trivial service embeds a [`StateMachine`]; its `start` is `start_once(|| Ok(()))` and its
//! `close` is `close_once(|| Ok(()))`. A service starts only once, so every iteration gets fresh
//! services from an `iter_batched` setup (building them, and dropping them afterwards, is not
//! timed). For N = 1, 100 and 1000:
//!
//! - `multistart/N`: `MultiStart::start` over the N services, then `MultiStart::close`.
//!   `MultiStart` owns what it starts, so it receives clones of the `Arc`s (an atomic increment
//!   each, and a decrement when `close` lets go of them), and it wraps each one it is given in an
//!   `Arc<dyn Service>` of its own (an allocation each, freed by `close`): that is part of its
//!   cost. It also checks the N names (none empty, no control characters, no duplicates: a
//!   `HashSet` of N entries) before anything starts.
//! - `direct/N` (the ceiling): the same `service.start(&ctx)` calls in order through the same
//!   `Arc<dyn Service>` values, then `service.close()` in reverse order, in a plain loop.
//!
//! The difference is `MultiStart`'s own overhead: the name checks, the context check, the
//! `catch_unwind` of `start_guarded` / `close_guarded`, the `log::debug!` level checks (no
//! logger is installed, so nothing is formatted and the clock is not read), the `Vec` of started
//! services, and the `Arc`s.
//!
//! # `if_started` and `if_started_contended`: the guard on the hot path
//!
//! - `if_started`: `StateMachine::if_started` on a started machine with a closure that does
//!   nothing (but `black_box`), on one thread; the `Result` it returns is reduced to `is_ok()`.
//! - `rwlock_read` (the ceiling): taking and releasing a read guard of a bare
//!   `parking_lot::RwLock<()>` around the same closure. `if_started` is that plus two atomic
//!   loads of the state and the thread-local record of the gates this thread holds (which
//!   refuses a guarded call from inside the machine's own start or close).
//!
//! The `_contended` group measures the same two calls while a second thread calls the same
//! `if_started` (resp. takes a read guard of the same lock) in a loop. That thread is started
//! before the benchmark, stopped through an `AtomicBool` and joined (in a `std::thread::scope`)
//! once the benchmark is done.
//!
//! # `worker`: the closure worker against the hand-written canonical service
//!
//! One whole life of a service that owns one thread waiting on its stop signal, each iteration:
//! build the service, `start(&ctx)` (with one `StartContext::background()` made before the
//! measurement), `close()`, and drop it. Both threads are called `w`.
//!
//! - `worker`: `Worker::new("w", |stop| { stop.wait(); Ok(()) })`.
//! - `canonical` (the ceiling): [`Heartbeat`], the hand-written service the README shows: a
//!   `StateMachine`, a `StopSignal` and a `Mutex<Option<JoinHandle<()>>>`; its `start` spawns a
//!   named thread that waits on the signal, its `close` fires the signal and joins the thread.
//! - `worker_multistart` and `canonical_multistart`: the same services through
//!   `MultiStart::start_all([service])`, then `close()`.
//! - `interleaved` and `interleaved_multistart`: one iteration is one cycle of each (the
//!   canonical first in even iterations, the worker first in odd ones), each cycle timed on
//!   its own. Criterion reports the pair; the bench then prints, over criterion's measured
//!   samples, the ratio worker / canonical of each sample's two sums (median, quartiles,
//!   extremes) and the mean time per cycle of each. On a shared machine whose load drifts from
//!   second to second, benchmarks measured one after the other can differ by more than the
//!   10 % at stake; the interleaved ratio compares cycles run a few microseconds apart.
//!
//! Both spawn and join one thread per iteration, which dominates; the difference is what the
//! `Worker` does around it (its boxed closures, the setup's value, the channel its thread
//! reports its end on, `catch_unwind`) and how its close waits (a receive from that channel,
//! then the join).
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench core` (criterion options after `--`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use lifecycle::{
    HealthReporter, MultiStart, Result, Service, StartContext, StateMachine, StopSignal, Worker,
};
use parking_lot::{Mutex, RwLock};

/// A service that does nothing but go through its [`StateMachine`].
struct Trivial {
    name: String,
    sm: StateMachine,
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
        self.sm.start_once(|| Ok(()))
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| Ok(()))
    }
}

/// `n` fresh, unstarted trivial services.
fn trivial_services(n: usize) -> Vec<Arc<dyn Service>> {
    (0..n)
        .map(|i| {
            Arc::new(Trivial {
                name: format!("svc-{i}"),
                sm: StateMachine::new(),
            }) as Arc<dyn Service>
        })
        .collect()
}

/// The service counts the `multistart` group measures.
const SERVICE_COUNTS: [usize; 3] = [1, 100, 1000];

/// Roughly how many services one `iter_batched` batch holds, whatever N is: enough that timing a
/// batch costs nothing next to it, few enough that a batch of N = 1000 stays small in memory.
const SERVICES_PER_BATCH: usize = 4096;

fn multistart(c: &mut Criterion) {
    let ctx = StartContext::background();
    let mut group = c.benchmark_group("multistart");
    for n in SERVICE_COUNTS {
        group.throughput(Throughput::Elements(n as u64));
        let batch = BatchSize::NumIterations((SERVICES_PER_BATCH / n).max(1) as u64);

        group.bench_with_input(BenchmarkId::new("multistart", n), &n, |b, &n| {
            b.iter_batched(
                || trivial_services(n),
                |services| {
                    let ms = MultiStart::new();
                    ms.start(&ctx, services.iter().cloned())
                        .expect("trivial services start");
                    ms.close().expect("trivial services close");
                    // Returned so that dropping the services is not timed.
                    services
                },
                batch,
            );
        });

        group.bench_with_input(BenchmarkId::new("direct", n), &n, |b, &n| {
            b.iter_batched(
                || trivial_services(n),
                |services| {
                    for service in &services {
                        service.start(&ctx).expect("trivial service starts");
                    }
                    for service in services.iter().rev() {
                        service.close().expect("trivial service closes");
                    }
                    services
                },
                batch,
            );
        });
    }
    group.finish();
}

/// A started state machine, as a running service's would be.
fn started_machine() -> StateMachine {
    let sm = StateMachine::new();
    sm.start_once(|| Ok(()))
        .expect("an unstarted machine starts");
    sm
}

/// One guarded call: what a service does on its hot path.
fn guarded(sm: &StateMachine) -> bool {
    black_box(sm)
        .if_started(|| {
            black_box(());
        })
        .is_ok()
}

/// The ceiling of [`guarded`]: a bare read lock around the same closure.
fn read_locked(lock: &RwLock<()>) {
    let _guard = black_box(lock).read();
    black_box(());
}

fn if_started(c: &mut Criterion) {
    let sm = started_machine();
    let lock = RwLock::new(());
    let mut group = c.benchmark_group("if_started");
    group.bench_function("if_started", |b| b.iter(|| guarded(&sm)));
    group.bench_function("rwlock_read", |b| b.iter(|| read_locked(&lock)));
    group.finish();
}

/// Runs `bench` while another thread calls `hammer` in a loop; stops and joins that thread before
/// returning.
fn with_contention(hammer: impl Fn() + Sync, bench: impl FnOnce()) {
    let running = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            running.store(true, Ordering::Release);
            while !stop.load(Ordering::Relaxed) {
                hammer();
            }
        });
        while !running.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        bench();
        stop.store(true, Ordering::Relaxed);
    });
}

fn if_started_contended(c: &mut Criterion) {
    let sm = started_machine();
    let lock = RwLock::new(());
    let mut group = c.benchmark_group("if_started_contended");
    with_contention(
        || {
            guarded(&sm);
        },
        || {
            group.bench_function("if_started", |b| b.iter(|| guarded(&sm)));
        },
    );
    with_contention(
        || read_locked(&lock),
        || {
            group.bench_function("rwlock_read", |b| b.iter(|| read_locked(&lock)));
        },
    );
    group.finish();
}

/// The hand-written canonical service (the README's): a thread that waits on the service's
/// stop signal, spawned by `start`, signalled and joined by `close`.
#[derive(Default)]
struct Heartbeat {
    sm: StateMachine,
    stop: StopSignal,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl HealthReporter for Heartbeat {
    fn name(&self) -> &str {
        "w"
    }

    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Heartbeat {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let stop = self.stop.clone();
            let thread = thread::Builder::new()
                .name("w".into())
                .spawn(move || stop.wait())?;
            *self.thread.lock() = Some(thread);
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            if let Some(thread) = self.thread.lock().take() {
                thread.join().map_err(|_| "heartbeat thread panicked")?;
            }
            Ok(())
        })
    }
}

/// The closure worker that does what [`Heartbeat`] does.
fn worker() -> Worker {
    Worker::new("w", |stop| {
        stop.wait();
        Ok(())
    })
}

/// One life of `service`: start, close, drop.
fn cycle(service: impl Service, ctx: &StartContext) {
    service.start(ctx).expect("the service starts");
    service.close().expect("the service closes");
}

/// One life of `service` through a `MultiStart`.
fn cycle_multistart(service: impl Service + 'static) {
    let started = MultiStart::start_all([service]).expect("the service starts");
    started.close().expect("the service closes");
}

/// Times `canonical` and `worker`, one call of each per iteration (alternating which goes
/// first), as one criterion benchmark; prints the ratio of their times over criterion's samples.
fn interleaved(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    canonical: impl Fn(),
    worker: impl Fn(),
) {
    let timed = |f: &dyn Fn()| {
        let began = Instant::now();
        f();
        began.elapsed()
    };
    // (iterations, canonical's total, worker's total) of every call, warm-up calls first.
    let mut calls: Vec<(u64, Duration, Duration)> = Vec::new();
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let (mut c, mut w) = (Duration::ZERO, Duration::ZERO);
            for i in 0..iters {
                if i % 2 == 0 {
                    c += timed(&canonical);
                    w += timed(&worker);
                } else {
                    w += timed(&worker);
                    c += timed(&canonical);
                }
            }
            calls.push((iters, c, w));
            c + w
        });
    });
    // Criterion's measured samples are its last `SAMPLES` calls.
    let samples = &calls[calls.len().saturating_sub(SAMPLES)..];
    if samples.is_empty() {
        // Filtered out, or listed only.
        return;
    }
    let mut ratios: Vec<f64> = samples
        .iter()
        .map(|(_, c, w)| w.as_secs_f64() / c.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let q = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    let iters: u64 = samples.iter().map(|(n, _, _)| n).sum();
    let per_cycle = |d: Duration| d.as_secs_f64() * 1e6 / iters as f64;
    let c: Duration = samples.iter().map(|(_, c, _)| *c).sum();
    let w: Duration = samples.iter().map(|(_, _, w)| *w).sum();
    println!(
        "worker/{id}: worker / canonical: median {:.3} (quartiles {:.3} - {:.3}, \
         range {:.3} - {:.3}) over {} samples; mean per cycle: worker {:.1} µs, \
         canonical {:.1} µs, ratio of totals {:.3}",
        q(0.5),
        q(0.25),
        q(0.75),
        q(0.0),
        q(1.0),
        ratios.len(),
        per_cycle(w),
        per_cycle(c),
        w.as_secs_f64() / c.as_secs_f64(),
    );
}

/// Criterion's samples per benchmark (its default, not changed here).
const SAMPLES: usize = 100;

fn worker_vs_canonical(c: &mut Criterion) {
    let ctx = StartContext::background();
    let mut group = c.benchmark_group("worker");
    group.sample_size(SAMPLES);
    group.bench_function("canonical", |b| {
        b.iter(|| cycle(Heartbeat::default(), &ctx))
    });
    group.bench_function("worker", |b| b.iter(|| cycle(worker(), &ctx)));
    group.bench_function("canonical_multistart", |b| {
        b.iter(|| cycle_multistart(Heartbeat::default()))
    });
    group.bench_function("worker_multistart", |b| {
        b.iter(|| cycle_multistart(worker()))
    });
    interleaved(
        &mut group,
        "interleaved",
        || cycle(Heartbeat::default(), &ctx),
        || cycle(worker(), &ctx),
    );
    interleaved(
        &mut group,
        "interleaved_multistart",
        || cycle_multistart(Heartbeat::default()),
        || cycle_multistart(worker()),
    );
    group.finish();
}

criterion_group!(
    benches,
    multistart,
    if_started,
    if_started_contended,
    worker_vs_canonical
);
criterion_main!(benches);

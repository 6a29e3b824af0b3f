//! Core benchmarks: what the library costs over the code it wraps.
//!
//! Every benchmark here is paired with a *ceiling*, the cheapest code that does the same useful
//! work, measured in the same run. The machine the figures in `BENCHMARKS.md` come from is small
//! and shared, so only the ratio of a benchmark to its ceiling is meaningful, not its absolute
//! time.
//!
//! # `multistart`: starting and closing N trivial services
//!
//! A trivial service embeds a [`StateMachine`]; its `start` is `start_once(name, || Ok(()))` and
//! its `close` is `stop_once(name, || Ok(()))`. A service starts only once, so every iteration
//! gets fresh services from an `iter_batched` setup (building them, and dropping them afterwards,
//! is not timed). For N = 1, 100 and 1000:
//!
//! - `multistart/N`: `MultiStart::start` over the N services, then `MultiStart::close`.
//!   `MultiStart` owns what it starts, so it receives clones of the `Arc`s (an atomic increment
//!   each, and a decrement when `close` lets go of them): that is part of its cost.
//! - `direct/N` (the ceiling): the same `service.start(&ctx)` calls in order through the same
//!   `Arc<dyn Service>` values, then `service.close()` in reverse order, in a plain loop.
//!
//! The difference is `MultiStart`'s own overhead: the context check, `Instant::now()`, the
//! `catch_unwind` of `start_guarded` / `close_guarded`, the `log::debug!` level checks (no
//! logger is installed, so nothing is formatted), the `Vec` of started services, and the `Arc`
//! clones.
//!
//! # `if_started` and `if_started_contended`: the guard on the hot path
//!
//! - `if_started`: `StateMachine::if_started` on a started machine with a closure that does
//!   nothing (but `black_box`), on one thread.
//! - `rwlock_read` (the ceiling): taking and releasing a read guard of a bare
//!   `parking_lot::RwLock<()>` around the same closure. `if_started` is that plus two atomic
//!   loads of the state.
//!
//! The `_contended` group measures the same two calls while a second thread calls the same
//! `if_started` (resp. takes a read guard of the same lock) in a loop. That thread is started
//! before the benchmark, stopped through an `AtomicBool` and joined (in a `std::thread::scope`)
//! once the benchmark is done.
//!
//! Run with `cargo bench --bench core` (criterion options after `--`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use lifecycle::{HealthReporter, MultiStart, Result, Service, StartContext, StateMachine};
use parking_lot::RwLock;

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
        self.sm.start_once(&self.name, || Ok(()))
    }

    fn close(&self) -> Result<()> {
        self.sm.stop_once(&self.name, || Ok(()))
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
                    let mut ms = MultiStart::new();
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
    sm.start_once("bench", || Ok(()))
        .expect("an unstarted machine starts");
    sm
}

/// One guarded call: what a service does on its hot path.
fn guarded(sm: &StateMachine) -> bool {
    black_box(sm).if_started(|| {
        black_box(());
    })
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

criterion_group!(benches, multistart, if_started, if_started_contended);
criterion_main!(benches);

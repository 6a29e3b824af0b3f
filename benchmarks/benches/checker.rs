//! `checker.snapshot().is_ready()` cost against the number of registered checks.
//!
//! For N = 10, 100 and 1000 checks, each an always-ready reporter, on a started checker whose
//! cache holds one complete poll (`wait_for_poll`, which polls every check and waits, bounded,
//! until each has a result):
//!
//! - `is_ready/N`: `checker.snapshot().is_ready()`: take a snapshot, then walk every check for
//!   the `Verdict` (which builds a `BTreeMap` of the failing ones: empty here).
//! - `snapshot/N` (the ceiling): `checker.snapshot()` alone: a read lock, an `Arc` clone and the
//!   two clock reads that date the snapshot. `is_ready` is that plus the verdict, so the
//!   difference is the verdict's walk over N checks.
//!
//! Each N gets its own checker (with N worker threads, idle between the default 10 s polls),
//! closed once its group is done. The checks' default staleness bound is 40 s, so a cache
//! stays fresh through a group of a few seconds.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench checker` (criterion options after `--`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lifecycle::{health, HealthChecker, Service, StartContext};

/// The check counts measured.
const CHECK_COUNTS: [usize; 3] = [10, 100, 1000];

/// A started checker with `n` always-ready checks and one complete poll in its cache.
fn ready_checker(n: usize) -> HealthChecker {
    let checker = HealthChecker::new("1.0.0", "bench");
    for i in 0..n {
        checker
            .register(health::from_fn(format!("check-{i:04}"), || Ok(())))
            .expect("register");
    }
    checker
        .start(&StartContext::background())
        .expect("checker starts");
    let polled = checker
        .wait_for_poll(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{n} checks not polled within 30 s: {e}"));
    assert!(polled.is_ready().is_passing(), "{n} checks not ready");
    checker
}

fn is_ready(c: &mut Criterion) {
    let mut group = c.benchmark_group("is_ready");
    for n in CHECK_COUNTS {
        let checker = ready_checker(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("is_ready", n), &n, |b, _| {
            b.iter(|| {
                let verdict = black_box(&checker).snapshot().is_ready();
                assert!(verdict.is_passing());
                verdict
            });
        });
        group.bench_with_input(BenchmarkId::new("snapshot", n), &n, |b, _| {
            b.iter(|| black_box(&checker).snapshot());
        });
        checker.close().expect("checker closes");
    }
    group.finish();
}

criterion_group!(benches, is_ready);
criterion_main!(benches);

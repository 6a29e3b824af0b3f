//! Restart benchmark (issue 13): from a worker's failure to its replacement running, through a
//! [`Runner`]'s supervision, against respawning a raw thread by hand (the ceiling), in the same
//! run.
//!
//! # The work
//!
//! A worker thread waits for an order; told to fail, it returns an error. The replacement is a
//! fresh worker thread that says it runs. One iteration is one failure and one replacement: the
//! time from sending the order until the replacement's "running" message arrives.
//!
//! - `runner`: a [`Runner`] with one [`Runner::restartable`] [`Worker`], restarted on failure,
//!   with the shortest backoff (1 ns, capped at 1 ns) and a budget it never spends. A restart is
//!   the failed worker's report through its handle, the runner thread's wake-up, the failed
//!   instance's close (a call on the run's pool: the worker's thread joined), the backoff timer,
//!   the factory's call and the fresh instance's start and readiness poll (a call on the pool:
//!   the worker's thread spawned), each bounded.
//! - `raw_thread` (the ceiling): the same worker thread in a plain loop: the main thread waits
//!   for the worker's failure (its join), then spawns the next and waits for its message. No
//!   bound, no backoff, no health, no report: what a hand-written respawn loop does.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench restart` (criterion options after `--`).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam_channel::{Receiver, Sender};
use lifecycle::{Runner, ServiceOptions, Worker};

/// What a worker does once told to: fail.
fn work(orders: &Receiver<()>, running: &Sender<()>) -> Result<(), String> {
    let _ = running.send(());
    match orders.recv() {
        Ok(()) => Err("told to fail".to_owned()),
        Err(_) => Ok(()),
    }
}

fn raw_thread(orders: Receiver<()>, running: Sender<()>) -> JoinHandle<Result<(), String>> {
    std::thread::Builder::new()
        .name("flaky".into())
        .spawn(move || work(&orders, &running))
        .expect("a thread")
}

fn bench_raw_thread(c: &mut Criterion) {
    c.bench_function("restart/raw_thread", |b| {
        b.iter_custom(|iters| {
            let (order, orders) = crossbeam_channel::unbounded();
            let (running_tx, running) = crossbeam_channel::unbounded();
            let mut worker = raw_thread(orders.clone(), running_tx.clone());
            running.recv().unwrap();
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                order.send(()).unwrap();
                // The respawn loop: the failure seen (joined), the replacement spawned.
                assert!(worker.join().unwrap().is_err());
                worker = raw_thread(orders.clone(), running_tx.clone());
                running.recv().unwrap();
                total += began.elapsed();
            }
            drop(order);
            worker.join().unwrap().unwrap();
            total
        });
    });
}

fn bench_runner(c: &mut Criterion) {
    c.bench_function("restart/runner", |b| {
        b.iter_custom(|iters| {
            let (order, orders) = crossbeam_channel::unbounded::<()>();
            let (running_tx, running) = crossbeam_channel::unbounded();
            let factory = move || {
                let (orders, running) = (orders.clone(), running_tx.clone());
                Worker::new("flaky", move |_stop| Ok(work(&orders, &running)?))
            };
            let options = ServiceOptions::new()
                .restart_backoff(Duration::from_nanos(1), Duration::from_nanos(1))
                .restart_on_failure();
            let runner = Runner::new()
                .handle_signals(false)
                .restart_budget(u32::MAX, Duration::from_secs(3600))
                .restartable(factory, options);
            let handle = runner.handle();
            std::thread::scope(|s| {
                let run = s.spawn(|| runner.run());
                running.recv().unwrap();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let began = Instant::now();
                    order.send(()).unwrap();
                    running.recv().unwrap();
                    total += began.elapsed();
                }
                handle.shutdown();
                // The last instance waits for an order: its close (the stop signal) does not
                // reach it, so its channel is closed instead.
                drop(order);
                let report = run.join().unwrap();
                assert_eq!(report.services()[0].restarts().len() as u64, iters);
                total
            })
        });
    });
}

criterion_group!(benches, bench_raw_thread, bench_runner);
criterion_main!(benches);

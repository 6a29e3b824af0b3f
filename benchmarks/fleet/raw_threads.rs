//! The raw-thread counterpart of `examples/fleet.rs`, for the whole-process measurement in
//! BENCHMARKS.md ("Whole process: N services"): N threads that each wait until told to stop,
//! one `ready` line on standard output once all of them run, and on SIGINT or SIGTERM every
//! thread stopped and joined, then exit code 0. No library, no logger.
//!
//! ```text
//! raw_threads --services N [--mode parallel|sequential|helper|calls|calls-sequential]
//! ```
//!
//! - `parallel` (the default, the ceiling): spawn all N, then wait for their N ready messages;
//!   on the signal, tell all N to stop, then join them.
//! - `sequential`: what today's runner does, by hand: spawn one and wait for its ready message
//!   before the next; on the signal, stop and join them one by one in reverse.
//! - `helper`: `sequential` with each start and each stop-and-join on a short-lived thread of
//!   its own that the main thread joins: the runner's `start NAME` / `close NAME` threads, to
//!   tell how much of the runner's time they are.
//! - `calls`: what the runner does for independent services, by hand: every start (spawn, wait
//!   for ready) and every stop-and-join is a job on one of a few long-lived call threads (as
//!   many as the runner's pool has at its floor: the machine's parallelism, 2 to 8), all handed
//!   over at once, each reporting back to the main thread, which waits for all of them.
//! - `calls-sequential`: the same call threads for a chain: one job at a time, each handed over
//!   once the one before has reported back; stopped in reverse.
//!
//! The signals are blocked before any thread starts (so every thread inherits the mask) and
//! taken with `sigwait(3)` on the main thread.

use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::{self, JoinHandle};

/// One running thread: dropping `stop` tells it to end.
struct Running {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

fn spawn(i: usize, ready: Sender<()>) -> Running {
    let (stop, stopped): (Sender<()>, Receiver<()>) = channel();
    let thread = thread::Builder::new()
        .name(format!("service-{i}"))
        .spawn(move || {
            let _ = ready.send(());
            let _ = stopped.recv();
        })
        .expect("spawn a thread");
    Running { stop, thread }
}

/// Spawns thread `i` and waits for its ready message.
fn start_one(i: usize) -> Running {
    let (ready, is_ready) = channel();
    let running = spawn(i, ready);
    is_ready.recv().expect("a ready message");
    running
}

fn stop_one(running: Running) {
    drop(running.stop);
    running.thread.join().expect("join a thread");
}

/// Runs `f` on a short-lived thread and joins it.
fn on_helper<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::Builder::new()
        .name("helper".into())
        .spawn(f)
        .expect("spawn a helper")
        .join()
        .expect("join a helper")
}

/// A job for a call thread.
type Job = Box<dyn FnOnce() + Send>;

/// Long-lived call threads taking jobs from one queue, as the runner's pool does at its floor.
struct Calls {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Calls {
    fn new() -> Calls {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let floor = thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        let threads = (0..floor)
            .map(|i| {
                let queue = std::sync::Arc::clone(&queue);
                thread::Builder::new()
                    .name(format!("call {i}"))
                    .spawn(move || loop {
                        let job = queue.lock().expect("the queue").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn a call thread")
            })
            .collect();
        Calls {
            jobs: Some(jobs),
            threads,
        }
    }

    fn hand(&self, job: impl FnOnce() + Send + 'static) {
        let jobs = self.jobs.as_ref().expect("open");
        jobs.send(Box::new(job)).expect("a call thread");
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            thread.join().expect("join a call thread");
        }
    }
}

/// Blocks SIGINT and SIGTERM on this thread (and the threads it spawns); returns the set.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a zeroed, then initialised, local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
        set
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, mode) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--services", n] => (n.parse::<usize>().ok(), "parallel"),
        ["--services", n, "--mode", mode] => (n.parse().ok(), mode),
        _ => (None, ""),
    };
    let modes = "parallel|sequential|helper|calls|calls-sequential";
    let (Some(n), "parallel" | "sequential" | "helper" | "calls" | "calls-sequential") = (n, mode)
    else {
        eprintln!("usage: raw_threads --services N [--mode {modes}]");
        return ExitCode::from(2);
    };
    let signals = block_signals();
    let calls = mode.starts_with("calls").then(Calls::new);

    let running: Vec<Running> = match mode {
        "parallel" => {
            let (ready, is_ready) = channel();
            let running = (0..n).map(|i| spawn(i, ready.clone())).collect();
            for _ in 0..n {
                is_ready.recv().expect("a ready message");
            }
            running
        }
        "sequential" => (0..n).map(start_one).collect(),
        "helper" => (0..n).map(|i| on_helper(move || start_one(i))).collect(),
        "calls" => {
            let calls = calls.as_ref().expect("call threads");
            let (done, started) = channel();
            for i in 0..n {
                let done = done.clone();
                calls.hand(move || done.send(start_one(i)).expect("the main thread"));
            }
            (0..n).map(|_| started.recv().expect("a start")).collect()
        }
        _ => {
            let calls = calls.as_ref().expect("call threads");
            let (done, started) = channel();
            (0..n)
                .map(|i| {
                    let done = done.clone();
                    calls.hand(move || done.send(start_one(i)).expect("the main thread"));
                    started.recv().expect("a start")
                })
                .collect()
        }
    };
    println!("ready");

    let mut signal = 0;
    // SAFETY: `signals` is an initialised set, blocked on this thread.
    unsafe { libc::sigwait(&signals, &mut signal) };

    match mode {
        "parallel" => {
            let threads: Vec<JoinHandle<()>> = running
                .into_iter()
                .map(|Running { stop, thread }| {
                    drop(stop);
                    thread
                })
                .collect();
            for thread in threads {
                thread.join().expect("join a thread");
            }
        }
        "sequential" => running.into_iter().rev().for_each(stop_one),
        "helper" => {
            for one in running.into_iter().rev() {
                on_helper(move || stop_one(one));
            }
        }
        "calls" => {
            let calls = calls.as_ref().expect("call threads");
            let (done, stopped) = channel();
            for one in running {
                let done = done.clone();
                calls.hand(move || {
                    stop_one(one);
                    done.send(()).expect("the main thread");
                });
            }
            (0..n).for_each(|_| stopped.recv().expect("a stop"));
        }
        _ => {
            let calls = calls.as_ref().expect("call threads");
            let (done, stopped) = channel();
            for one in running.into_iter().rev() {
                let done = done.clone();
                calls.hand(move || {
                    stop_one(one);
                    done.send(()).expect("the main thread");
                });
                stopped.recv().expect("a stop");
            }
        }
    }
    drop(calls);
    ExitCode::SUCCESS
}

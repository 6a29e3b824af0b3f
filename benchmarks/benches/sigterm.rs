//! Whole-process time from SIGTERM to exit: the demo (`examples/demo.rs`, termination delay 0)
//! against a minimal process doing the same dance, measured in the same run.
//!
//! - **demo**: `target/release/examples/demo --health-addr 127.0.0.1:0 --api-addr 127.0.0.1:0
//!   --termination-delay 0` with `RUST_LOG=info`. The bench builds it first
//!   (`cargo build --release -p lifecycle --example demo`, a no-op when it is up to date).
//! - **baseline**: this same bench binary, started with `SIGTERM_BENCH_CHILD=1`: it installs a
//!   `ctrlc` handler (with the `termination` feature, so SIGTERM too, as the runner does),
//!   prints `running` on stderr, waits for the handler to fire, and returns from `main`.
//!
//! For each run the bench starts the child with stderr piped, waits for its "running" line (the
//! demo's is the runner's `all N services ready in …; running`), sends SIGTERM, and measures until
//! `wait()` returns, that is until the process has exited and been reaped. A reader thread
//! timestamps every later stderr line, which gives, for the demo, the moment its `shut down
//! cleanly` line arrived: the runner's shutdown, without the process's own exit.
//!
//! The two children alternate (demo, baseline, demo, …) so that drift in the machine's load hits
//! both. `SIGTERM_BENCH_RUNS` sets the number of measured runs of each (default 20); two more of
//! each come first as a warm-up and are not counted.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench sigterm`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Set in the child's environment to make this binary the baseline process.
const CHILD_ENV: &str = "SIGTERM_BENCH_CHILD";

const WARM_UP_RUNS: usize = 2;

/// The baseline child: waits for SIGINT or SIGTERM, then exits.
fn child() -> ExitCode {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    }) {
        eprintln!("baseline: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("baseline: running");
    let _ = rx.recv();
    eprintln!("baseline: stopped");
    ExitCode::SUCCESS
}

/// What one run measured.
struct Sample {
    /// SIGTERM sent until the process was reaped.
    exit: Duration,
    /// SIGTERM sent until the line containing `done_marker` arrived, if one did.
    done_line: Option<Duration>,
    /// The runner's `NAME: closed in DURATION` lines (the demo's only), in order.
    closes: Vec<(String, Duration)>,
}

/// Parses a `Duration`'s `Debug` form (`1.5ms`, `20.1µs`, `3s`, `800ns`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number * 1e-3,
        "µs" | "us" => number * 1e-6,
        "ns" => number * 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// `("api", 101.2 ms)` from a log line ending in `api: closed in 101.2ms`.
fn parse_close(line: &str) -> Option<(String, Duration)> {
    let (head, took) = line.rsplit_once(": closed in ")?;
    let name = head.rsplit(' ').next()?.to_owned();
    Some((name, parse_debug_duration(took.trim())?))
}

/// Starts `cmd`, waits for a stderr line containing `ready_marker`, sends SIGTERM and waits for
/// the exit.
/// Waits `delay` between the ready line and the signal.
fn measure(mut cmd: Command, ready_marker: &str, done_marker: &str, delay: Duration) -> Sample {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = crossbeam_channel::unbounded::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });

    let mut output = Vec::new();
    loop {
        match lines_rx.recv_timeout(Duration::from_secs(30)) {
            Ok((_, line)) => {
                let ready = line.contains(ready_marker);
                output.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child never reported running; its stderr:\n{output:#?}");
            }
        }
    }

    std::thread::sleep(delay);
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let sent = Instant::now();
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own unreaped child.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
    let status = child.wait().expect("wait for the child");
    let exit = sent.elapsed();
    reader.join().expect("the stderr reader panicked");

    let mut done_line = None;
    let mut closes = Vec::new();
    for (at, line) in lines_rx.try_iter() {
        if done_line.is_none() && line.contains(done_marker) {
            done_line = Some(at.saturating_duration_since(sent));
        }
        closes.extend(parse_close(&line));
        output.push(line);
    }
    assert!(
        status.success(),
        "the child exited with {status}; its stderr:\n{output:#?}"
    );
    Sample {
        exit,
        done_line,
        closes,
    }
}

/// The `q`-quantile (0 ≤ q ≤ 1) of sorted `values`, by the nearest rank.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Prints the median, p90, min and max of `values`; returns the median.
fn summarize(label: &str, values: &mut [Duration]) -> Duration {
    values.sort();
    let median = quantile(values, 0.5);
    println!(
        "{label:<28} median {:>10}  p90 {:>10}  min {:>10}  max {:>10}  (n = {})",
        ms(median),
        ms(quantile(values, 0.9)),
        ms(values[0]),
        ms(values[values.len() - 1]),
        values.len()
    );
    median
}

fn demo_path() -> PathBuf {
    // This binary is target/<profile>/deps/sigterm-<hash>; the demo is target/<profile>/examples.
    let exe = std::env::current_exe().expect("the bench binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the bench binary lives in target/<profile>/deps");
    profile_dir.join("examples").join("demo")
}

fn build_demo() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "lifecycle", "--example", "demo"])
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release -p lifecycle --example demo failed"
    );
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this binary without it: then
    // there is nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let runs: usize = std::env::var("SIGTERM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    build_demo();
    let demo = demo_path();
    let me = std::env::current_exe().expect("the bench binary's path");

    let demo_cmd = || {
        let mut cmd = Command::new(&demo);
        cmd.args([
            "--health-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--termination-delay",
            "0",
        ])
        .env("RUST_LOG", "info");
        cmd
    };
    let baseline_cmd = || {
        let mut cmd = Command::new(&me);
        cmd.env(CHILD_ENV, "1");
        cmd
    };

    for spread in [false, true] {
        let mut demo_exit = Vec::new();
        let mut demo_done = Vec::new();
        let mut closes: Vec<(String, Vec<Duration>)> = Vec::new();
        let mut demo_rest = Vec::new();
        let mut base_exit = Vec::new();
        for i in 0..WARM_UP_RUNS + runs {
            // Spread: the signal comes 0–99 ms after the ready line, in even steps over the runs
            // (in a shuffled order), instead of at once.
            let delay = if spread {
                Duration::from_millis(((i * 37) % runs * 100 / runs) as u64)
            } else {
                Duration::ZERO
            };
            let d = measure(demo_cmd(), "; running", "shut down cleanly", delay);
            let b = measure(
                baseline_cmd(),
                "baseline: running",
                "baseline: stopped",
                delay,
            );
            if i >= WARM_UP_RUNS {
                demo_exit.push(d.exit);
                demo_done.push(d.done_line.expect("the demo logs `shut down cleanly`"));
                if let Some((_, api)) = d.closes.iter().find(|(n, _)| n == "api") {
                    demo_rest.push(d.exit.saturating_sub(*api));
                }
                for (name, took) in d.closes {
                    match closes.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, v)) => v.push(took),
                        None => closes.push((name, vec![took])),
                    }
                }
                base_exit.push(b.exit);
            }
        }

        println!();
        if spread {
            println!("SIGTERM 0-99 ms after the ready line (spread evenly over the runs):");
        } else {
            println!("SIGTERM as soon as the ready line arrives:");
        }
        println!("{runs} runs of each, alternating, after {WARM_UP_RUNS} warm-up runs of each");
        let demo_median = summarize("demo: exit", &mut demo_exit);
        summarize("demo: `shut down cleanly` line", &mut demo_done);
        for (name, took) in &mut closes {
            summarize(&format!("demo: close of {name}"), took);
        }
        let rest_median = summarize("demo: exit - close of api", &mut demo_rest);
        let base_median = summarize("baseline: exit", &mut base_exit);
        let p90 = |v: &[Duration]| quantile(v, 0.9).as_secs_f64();
        println!(
            "ratio demo / baseline: medians {:.1}, p90s {:.1}",
            demo_median.as_secs_f64() / base_median.as_secs_f64(),
            p90(&demo_exit) / p90(&base_exit)
        );
        println!(
            "ratio (demo exit - close of api) / baseline: medians {:.1}, p90s {:.1}",
            rest_median.as_secs_f64() / base_median.as_secs_f64(),
            p90(&demo_rest) / p90(&base_exit)
        );
    }
    ExitCode::SUCCESS
}

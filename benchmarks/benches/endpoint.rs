//! Health endpoint benchmark: `/readyz` over real sockets, against a bare tiny_http server.
//!
//! Not a criterion benchmark: the load comes from [`wrk`](https://github.com/wg/wrk), run as a
//! child process, and the figures are its `Requests/sec` and its 99th-percentile latency. The
//! servers run in this process:
//!
//! - **ours**: a [`HealthEndpoint`] on 127.0.0.1:0 in front of a started [`HealthChecker`] with
//!   [`CHECKS`] registered reporters that are always ready, polled once before any measurement.
//!   It serves every connection from its default [`OURS_LOOPS`] event-loop threads; `/readyz`
//!   answers the checker's cached snapshot as `application/health+json` on every request.
//! - **tiny_http ×2** (the like-for-like ceiling): a bare tiny_http 0.12 server on 127.0.0.1:0
//!   answering every request with a fixed `200 ok`, from two handler threads looping on
//!   `recv_timeout`: the same number of handler threads as ours has event loops. tiny_http
//!   itself adds an accept thread and one thread per open connection, which read and parse the
//!   requests; the handler threads write the responses.
//! - **ours ×1 loop** (a reference): the same endpoint with `event_loops(1)`, and
//!   **tiny_http ×1** (its like-for-like ceiling, one handler thread); in `plain` also
//!   **tiny_http ×4**, with four handler threads.
//!
//! Each scenario runs `wrk -t2 -c64 -d<D>s --latency` against each server in turn, for several
//! rounds; the order of the servers rotates from round to round so that drift in the machine's
//! load hits all of them. A ratio is computed per round (ours over the ceiling of the same
//! round) and the summary gives the median of each figure over the rounds. The headline ratio is
//! ours over tiny_http ×2; ours ×1 loop over tiny_http ×1 is the same comparison at one thread.
//!
//! Scenarios:
//!
//! 1. `plain`: 64 keep-alive connections, the endpoint with its default options.
//! 2. `slowloris`: the same while 500 more connections to the server under test have each sent
//!    part of a request head and then nothing. They are opened before the run and held until it
//!    ends (a holder thread re-opens any the server closes and counts them). 500 + 64 exceed the
//!    endpoint's default `max_connections` (256), and its default `head_read_timeout` (5 s)
//!    would drop the 500 within a run, so the endpoints here are built with
//!    `max_connections(1024)` and `head_read_timeout(60 s)`.
//! 3. `slowloris-default`: ours only, with the default options (256 connections, 5 s to send a
//!    head), under the same 500 slowloris connections, re-opened as soon as they are closed:
//!    what a probe sees when the defaults meet that attack.
//!
//! Thread counts are of this whole process (`/proc/self/status`), sampled before the slowloris
//! connections are opened and in the middle of the wrk run; during a slowloris run they include
//! the one thread that holds the slowloris connections. Server CPU is this process's CPU time
//! (user + system, every thread: servers, checker, slowloris holder) during the wrk run, per
//! 1000 requests answered. `2xx/s` is `requests/s` less the share of non-`2xx` answers.
//!
//! Before every run, [`prime`] opens and answers 64 connections one by one, so that tiny_http's
//! thread pool has a thread for each of wrk's connections (see there why); the `in flight`
//! column (requests/s × wrk's mean latency, by Little's law) shows whether all 64 connections
//! were served. With `ENDPOINT_BENCH_PIN=1`, this process (every server) is pinned to CPU 0 and
//! wrk to CPU 1 (`taskset`), so that each server gets one core and never shares it with wrk.
//!
//! Run with `cargo bench -p lifecycle-benchmarks --bench endpoint`; `wrk` must be on the `PATH`.
//! Environment: `ENDPOINT_BENCH_ROUNDS` (default 3), `ENDPOINT_BENCH_SECONDS` (per wrk run,
//! default 10), `ENDPOINT_BENCH_SCENARIOS` (comma-separated, default
//! `plain,slowloris,slowloris-default`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lifecycle::health::{self, EndpointOptions};
use lifecycle::{HealthChecker, HealthEndpoint, Service, StartContext};

/// Our endpoint's event loops by default, and so the ceiling's handler threads.
const OURS_LOOPS: usize = 2;
/// Registered checks behind the endpoint.
const CHECKS: usize = 10;
/// wrk's connections and threads.
const CONNECTIONS: usize = 64;
const WRK_THREADS: usize = 2;
/// Slowloris connections held during the `slowloris` scenarios.
const SLOWLORIS: usize = 500;
/// What each slowloris connection sends: the start of a head, never its end.
const PARTIAL_HEAD: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// A bare tiny_http server answering `200 ok` to everything from `handlers` threads.
struct Tiny {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Tiny {
    fn start(handlers: usize) -> Tiny {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("tiny_http binds"));
        let addr = server.server_addr().to_ip().expect("an IP listener");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..handlers)
            .map(|i| {
                let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
                thread::Builder::new()
                    .name(format!("tiny handler {i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok(Some(request)) =
                                server.recv_timeout(Duration::from_millis(100))
                            {
                                let _ = request.respond(tiny_http::Response::from_string("ok"));
                            }
                        }
                    })
                    .expect("spawn a tiny_http handler")
            })
            .collect();
        Tiny {
            server,
            stop,
            threads,
            addr,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Connections that sent part of a head and nothing more, held open by a thread that re-opens
/// any the server closes (or answers).
struct Slowloris {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
    alive: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

fn open_slow(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.write_all(PARTIAL_HEAD).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

impl Slowloris {
    fn hold(addr: SocketAddr, n: usize) -> Slowloris {
        let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| open_slow(addr)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(AtomicUsize::new(streams.iter().flatten().count()));
        let thread = {
            let (stop, reopened, alive) =
                (Arc::clone(&stop), Arc::clone(&reopened), Arc::clone(&alive));
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let mut count = 0;
                    for slot in &mut streams {
                        let open = match slot {
                            Some(s) => match s.read(&mut buf) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                                // Closed, reset, or answered (a 503 when over the limit).
                                _ => false,
                            },
                            None => false,
                        };
                        if !open {
                            *slot = open_slow(addr);
                            reopened.fetch_add(1, Ordering::Relaxed);
                        }
                        count += usize::from(slot.is_some());
                    }
                    alive.store(count, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Slowloris {
            stop,
            reopened,
            alive,
            thread,
        }
    }

    /// Stops holding; returns how many connections had to be re-opened.
    fn release(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.reopened.load(Ordering::Relaxed)
    }
}

/// This process's thread count.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Waits (at most 8 s) until the threads tiny_http spawned for the connections of a previous
/// run have ended (its idle pool threads end 5 s after their last connection), so that each
/// run's thread counts are its own. Then a little more, for the sockets to settle.
fn settle(baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while threads() > baseline && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
}

/// CPU time this process has used so far (user + system, all threads), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Opens [`CONNECTIONS`] keep-alive connections one after the other, each answered before the
/// next is opened, then closes them all.
///
/// tiny_http serves each connection on a thread of a pool that spawns a thread only when it has
/// no idle one; when 64 connections arrive at once at a pool whose idle threads have ended, it
/// can spawn too few and leave most of them waiting, unserved, for the whole run (observed: runs
/// at a third of the usual rate with 4–5 requests in flight instead of 64, and a p99 of 80 µs).
/// Served one by one, every connection gets its own thread; closed, those threads wait idle for
/// 5 s, long enough for wrk's connections to find them. Done for every server alike.
fn prime(addr: SocketAddr, path: &str) {
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let Ok(mut s) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        held.push(s);
    }
}

/// Asks `path` once on a fresh connection; returns the status line.
fn status_line(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_owned()
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    rps: f64,
    p99_us: f64,
    mean_us: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: String,
    threads_mid: usize,
    /// CPU time of this process (the servers) during the run, per 1000 requests answered.
    cpu_ms_per_1k: f64,
}

impl Run {
    /// Requests in flight on average (Little's law): 64 when every wrk connection is served.
    fn in_flight(&self) -> f64 {
        self.rps * self.mean_us / 1e6
    }

    /// Requests per second answered `2xx`.
    fn ok_rps(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.rps * (self.requests - self.non_2xx.min(self.requests)) as f64 / self.requests as f64
    }
}

fn to_us(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => f64::NAN,
    }
}

fn parse_wrk(out: &str) -> Run {
    let mut run = Run::default();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse().unwrap_or(f64::NAN),
            ["99%", v] => run.p99_us = to_us(v),
            // `Latency  avg  stdev  max  +/-stdev` (not `Latency Distribution`).
            ["Latency", avg, _, _, _] => run.mean_us = to_us(avg),
            [n, "requests", "in", ..] => run.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => run.socket_errors = rest.join(" "),
            _ => {}
        }
    }
    run
}

fn wrk(url: &str, seconds: u64, pin: bool) -> Run {
    let mut command = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let child = command
        .args([
            &format!("-t{WRK_THREADS}"),
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk (is it installed?)");
    let cpu_before = cpu_ticks();
    thread::sleep(Duration::from_millis(seconds * 500));
    let threads_mid = threads();
    let out = child.wait_with_output().expect("wrk ends");
    let cpu = (cpu_ticks() - cpu_before) as f64 / ticks_per_second();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "wrk failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut run = parse_wrk(&stdout);
    run.threads_mid = threads_mid;
    run.cpu_ms_per_1k = cpu * 1e3 / (run.requests.max(1) as f64 / 1e3);
    if run.rps.is_nan() || !stdout.contains("Requests/sec:") {
        panic!("cannot read wrk's output:\n{stdout}");
    }
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

struct Target {
    label: &'static str,
    url: String,
    addr: SocketAddr,
    path: &'static str,
}

/// Runs every target `rounds` times (order rotating per round); with `slowloris`, holds that
/// many slowloris connections to the target under test during its runs. Returns the runs per
/// target, in the targets' order.
fn scenario(
    name: &str,
    baseline: usize,
    targets: &[Target],
    rounds: usize,
    seconds: u64,
    slowloris: usize,
    pin: bool,
) -> Vec<Vec<Run>> {
    println!("\n## {name}\n");
    println!(
        "| round | server | requests/s | 2xx/s | p99 | in flight (rps × mean latency) | non-2xx | socket errors | server CPU ms per 1k requests | threads before | threads mid-run | slowloris held mid-run | re-opened |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut runs = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let t = &targets[i];
            settle(baseline);
            let before = threads();
            let holder = (slowloris > 0).then(|| Slowloris::hold(t.addr, slowloris));
            let held = holder.as_ref().map(|h| Arc::clone(&h.alive));
            prime(t.addr, t.path);
            let mut run = wrk(&t.url, seconds, pin);
            let held_mid = held.map(|h| h.load(Ordering::Relaxed));
            let reopened = holder.map(Slowloris::release);
            println!(
                "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} | {:.1} | {} | {} | {} | {} |",
                round + 1,
                t.label,
                run.rps,
                run.ok_rps(),
                fmt_us(run.p99_us),
                run.in_flight(),
                run.non_2xx,
                if run.socket_errors.is_empty() {
                    "none".to_owned()
                } else {
                    run.socket_errors.clone()
                },
                run.cpu_ms_per_1k,
                before,
                run.threads_mid,
                held_mid.map_or("-".to_owned(), |h| h.to_string()),
                reopened.map_or("-".to_owned(), |r| r.to_string()),
            );
            run.socket_errors.clear();
            runs[i].push(run);
        }
    }
    runs
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Prints medians per target and the per-round ratios of the `ratios` pairs of targets
/// (numerator, denominator), by index.
fn summary(name: &str, targets: &[Target], runs: &[Vec<Run>], ratios: &[(usize, usize)]) {
    println!("\n### {name}: medians over rounds\n");
    println!(
        "| server | requests/s (median) | 2xx/s (median) | p99 (median) | server CPU ms per 1k requests (median) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (t, r) in targets.iter().zip(runs) {
        let rps = median(r.iter().map(|x| x.rps).collect());
        let ok = median(r.iter().map(Run::ok_rps).collect());
        let p99 = median(r.iter().map(|x| x.p99_us).collect());
        let cpu = median(r.iter().map(|x| x.cpu_ms_per_1k).collect());
        println!(
            "| {} | {rps:.0} | {ok:.0} | {} | {cpu:.1} |",
            t.label,
            fmt_us(p99)
        );
    }
    if ratios.is_empty() {
        return;
    }
    println!();
    println!(
        "| ratio | requests/s (median of rounds) | (min – max) | p99 (median of rounds) | (min – max) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for &(top, bottom) in ratios {
        let (t, r) = (&targets[bottom], &runs[bottom]);
        let rps: Vec<f64> = runs[top]
            .iter()
            .zip(r)
            .map(|(a, b)| a.rps / b.rps)
            .collect();
        let p99: Vec<f64> = runs[top]
            .iter()
            .zip(r)
            .map(|(a, b)| a.p99_us / b.p99_us)
            .collect();
        let (rlo, rhi) = min_max(&rps);
        let (plo, phi) = min_max(&p99);
        println!(
            "| {} / {} | {:.2} | {rlo:.2} – {rhi:.2} | {:.2} | {plo:.2} – {phi:.2} |",
            targets[top].label,
            t.label,
            median(rps.clone()),
            median(p99.clone()),
        );
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs the target without it: do
    // nothing then (this needs wrk and takes minutes).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = env_or("ENDPOINT_BENCH_ROUNDS", 3);
    let seconds: u64 = env_or("ENDPOINT_BENCH_SECONDS", 10);
    let scenarios: String = env_or(
        "ENDPOINT_BENCH_SCENARIOS",
        "plain,slowloris,slowloris-default".to_owned(),
    );
    let scenarios: Vec<&str> = scenarios.split(',').map(str::trim).collect();
    let pin = env_or("ENDPOINT_BENCH_PIN", 0) == 1;
    if pin {
        // Before any thread is spawned: every thread of this process inherits it.
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the pointer is to a live local.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(
                rc,
                0,
                "sched_setaffinity: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    let ctx = StartContext::background();
    let checker = Arc::new(HealthChecker::new("1.0.0", "bench"));
    for i in 0..CHECKS {
        checker
            .register(health::from_fn(format!("check-{i:02}"), || Ok(())))
            .expect("register");
    }
    checker.start(&ctx).expect("checker starts");
    let polled = checker
        .wait_for_poll(Duration::from_secs(10))
        .expect("checks polled within 10 s");
    assert!(polled.is_ready().is_passing(), "checks not ready");
    let local = "127.0.0.1:0".parse().unwrap();
    let wide = EndpointOptions::new()
        .max_connections(1024)
        .head_read_timeout(Duration::from_secs(60));
    let ours = HealthEndpoint::new(local, Arc::clone(&checker));
    let ours_wide = HealthEndpoint::with_options(local, Arc::clone(&checker), wide.clone());
    let ours1 = HealthEndpoint::with_options(
        local,
        Arc::clone(&checker),
        EndpointOptions::new().event_loops(1),
    );
    let ours1_wide = HealthEndpoint::with_options(local, Arc::clone(&checker), wide.event_loops(1));
    let endpoints = [&ours, &ours_wide, &ours1, &ours1_wide];
    for e in endpoints {
        e.start(&ctx).expect("endpoint starts");
    }
    let tiny1 = Tiny::start(1);
    let tiny2 = Tiny::start(OURS_LOOPS);
    let tiny4 = Tiny::start(4);

    let ours_addr = ours.local_addr().unwrap();
    let wide_addr = ours_wide.local_addr().unwrap();
    let ours1_addr = ours1.local_addr().unwrap();
    let wide1_addr = ours1_wide.local_addr().unwrap();
    for (addr, path) in [
        (ours_addr, "/readyz"),
        (wide_addr, "/readyz"),
        (ours1_addr, "/readyz"),
        (wide1_addr, "/readyz"),
        (tiny1.addr, "/"),
        (tiny2.addr, "/"),
        (tiny4.addr, "/"),
    ] {
        let status = status_line(addr, path);
        assert!(status.starts_with("HTTP/1.1 200"), "{addr}{path}: {status}");
    }
    println!(
        "wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{seconds}s --latency; {rounds} rounds; {CHECKS} checks; {} CPUs; {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        if pin {
            "servers pinned to CPU 0, wrk to CPU 1"
        } else {
            "not pinned"
        }
    );
    let target = |label, addr: SocketAddr, path: &'static str| Target {
        label,
        url: format!("http://{addr}{path}"),
        addr,
        path,
    };

    // This process's threads with every server idle: the checker's poller and workers, the four
    // endpoints' event loops, and each tiny_http's accept thread, minimum pool and handlers.
    let baseline = threads();
    println!("threads with every server idle: {baseline}");
    // Warm-up, not reported.
    for t in [
        target("ours", ours_addr, "/readyz"),
        target("ours", ours1_addr, "/readyz"),
        target("tiny", tiny1.addr, "/"),
        target("tiny", tiny2.addr, "/"),
        target("tiny", tiny4.addr, "/"),
    ] {
        wrk(&t.url, 2, pin);
    }

    if scenarios.contains(&"plain") {
        let targets = [
            target("ours", ours_addr, "/readyz"),
            target("tiny_http ×2", tiny2.addr, "/"),
            target("ours ×1 loop", ours1_addr, "/readyz"),
            target("tiny_http ×1", tiny1.addr, "/"),
            target("tiny_http ×4", tiny4.addr, "/"),
        ];
        let runs = scenario("plain", baseline, &targets, rounds, seconds, 0, pin);
        summary(
            "plain",
            &targets,
            &runs,
            &[(0, 1), (2, 3), (0, 2), (0, 3), (0, 4)],
        );
    }
    if scenarios.contains(&"slowloris") {
        let targets = [
            target("ours (1024 conns, 60 s head)", wide_addr, "/readyz"),
            target("tiny_http ×2", tiny2.addr, "/"),
            target("ours ×1 loop (1024, 60 s)", wide1_addr, "/readyz"),
            target("tiny_http ×1", tiny1.addr, "/"),
        ];
        let runs = scenario(
            "slowloris",
            baseline,
            &targets,
            rounds,
            seconds,
            SLOWLORIS,
            pin,
        );
        summary(
            "slowloris",
            &targets,
            &runs,
            &[(0, 1), (2, 3), (0, 2), (0, 3)],
        );
    }
    if scenarios.contains(&"slowloris-default") {
        let targets = [target("ours (defaults)", ours_addr, "/readyz")];
        let runs = scenario(
            "slowloris-default",
            baseline,
            &targets,
            rounds,
            seconds,
            SLOWLORIS,
            pin,
        );
        summary("slowloris-default", &targets, &runs, &[]);
    }

    for e in endpoints {
        e.close().expect("endpoint closes");
    }
    tiny1.stop();
    tiny2.stop();
    tiny4.stop();
    checker.close().expect("checker closes");
}

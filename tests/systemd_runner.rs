//! The runner under systemd, as systemd sees it: a child process (this test binary again,
//! running only [`child`]) runs a `Runner` with `NOTIFY_SOCKET` naming a real `AF_UNIX`
//! datagram socket bound here (at a path, or at an abstract name) and `WATCHDOG_USEC` set; every
//! datagram it sends is received in order and checked: the start (statuses, then `READY=1`),
//! a slow start (`EXTEND_TIMEOUT_USEC` repeated while it is within its start timeout), the
//! watchdog (which a failing readiness does not stop, and which stops once liveness fails:
//! the checker closed, or a liveness check failing, after which it resumes once the check
//! passes again), and the shutdown (`STOPPING=1`, the drain, the closes, a slow close extended too).
//!
//! The child's services wait for files this test creates, so every step happens when the test
//! has seen what it must see before it, never after a sleep. Every wait is bounded.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::notify::{extensions, pings, steps, NotifySocket, Received, TempDir, EXTEND, PING};
use common::process::Proc;
use common::WATCHDOG;
use lifecycle::health::CheckOptions;
use lifecycle::{HealthChecker, HealthReporter, Result, Runner, Service, StartContext, Worker};

/// The variable that makes [`child`] run, and says what.
const ROLE: &str = "LIFECYCLE_TEST_SYSTEMD_ROLE";
/// The directory of the files through which the test steers the child.
const DIR: &str = "LIFECYCLE_TEST_SYSTEMD_DIR";
/// The child's watchdog: `WATCHDOG=1` every 100 ms.
const WATCHDOG_USEC: &str = "200000";
/// The slow service's start timeout, and the bound of an extension during its start: that
/// timeout, the runner's 1 s grace and its 1 s hand-over.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_START_EXTENSION: u64 = 22_000_000;
/// The close timeout, and the bound of an extension during a close: it and the hand-over.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CLOSE_EXTENSION: u64 = 11_000_000;

/// In a child process started by a test below: runs a runner as its role says. Run as a plain
/// test, it does nothing.
#[test]
fn child() {
    let Some(role) = common::child_role(ROLE, Stderr) else {
        return;
    };
    match role.as_str() {
        "services" => services(PathBuf::from(std::env::var(DIR).unwrap())),
        "bare" => bare(),
        "wedge" => wedge(PathBuf::from(std::env::var(DIR).unwrap())),
        "absent" => absent(),
        other => panic!("unknown role {other:?}"),
    }
    eprintln!("child done");
}

/// db (whose readiness fails while the file `db-down` exists), slow (whose start waits for
/// `go-slow`, and close for `go-close`), api; with health on an endpoint, a termination delay,
/// and signals handled. The checker is closed under the runner once `kill-checker` exists.
fn services(dir: PathBuf) {
    let checker = Arc::new(
        HealthChecker::builder("test", "test")
            .interval(Duration::from_millis(20))
            .build(),
    );
    let runner = Runner::new()
        .start_timeout(START_TIMEOUT)
        .close_timeout(CLOSE_TIMEOUT)
        .shutdown_timeout(Duration::from_secs(20))
        .termination_delay(Duration::from_millis(300))
        .health(checker.clone())
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .service(Db(dir.join("db-down")))
        .service(Slow(dir.clone()))
        .service(idle("api"));
    let handle = runner.handle();
    let control = std::thread::Builder::new()
        .name("test control".into())
        .spawn(move || {
            if !handle.wait_running(WATCHDOG) {
                eprintln!("no run phase");
                return;
            }
            eprintln!("health at {}", handle.health_addr().unwrap());
            let kill = dir.join("kill-checker");
            let deadline = Instant::now() + 4 * WATCHDOG;
            while !handle.is_shutting_down() && Instant::now() < deadline {
                if kill.exists() {
                    let _ = Service::close(&*checker);
                    eprintln!("checker closed");
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
    let report = runner.run();
    control.join().unwrap();
    eprintln!("run: {:?}", report.error());
}

/// One service, no health: the watchdog pings while the run runs.
fn bare() {
    let report = Runner::new().service(idle("w")).run();
    assert!(report.is_success(), "{:?}", report.error());
}

/// One service and a liveness check, `ticker`, whose health fails while the file `wedged`
/// exists (after two polls in a row): a worker loop that stops ticking, and starts again.
fn wedge(dir: PathBuf) {
    let checker = HealthChecker::builder("test", "test")
        .interval(Duration::from_millis(20))
        .build();
    let wedged = dir.join("wedged");
    let ticker = lifecycle::health::from_fn("ticker", move || {
        if wedged.exists() {
            Err(lifecycle::Error::msg("the loop has not ticked"))
        } else {
            Ok(())
        }
    });
    let options = CheckOptions::new().liveness(true).failure_threshold(2);
    checker.register_with(ticker, options).unwrap();
    let report = Runner::new()
        .health(Arc::new(checker))
        .service(idle("w"))
        .run();
    assert!(report.is_success(), "{:?}", report.error());
}

/// Not under systemd: the run sends nothing and has no watchdog thread.
fn absent() {
    let notifier = lifecycle::systemd::Notifier::get();
    assert!(!notifier.is_enabled());
    let threads = Arc::new(std::sync::Mutex::new(None));
    let seen = threads.clone();
    let watch = Worker::new("watch", move |stop| {
        *seen.lock().unwrap() = Some(common::procfs::threads_named("sd watchdog"));
        stop.wait();
        Ok(())
    });
    let runner = Runner::new()
        .handle_signals(false)
        .health(Arc::new(HealthChecker::new("t", "t")))
        .service(watch);
    let handle = runner.handle();
    let stopper = std::thread::spawn(move || {
        assert!(handle.wait_running(WATCHDOG));
        handle.shutdown();
    });
    assert!(runner.run().is_success());
    stopper.join().unwrap();
    assert_eq!(*threads.lock().unwrap(), Some(0), "no watchdog thread");
    assert_eq!((notifier.sent(), notifier.dropped()), (0, 0));
}

fn idle(name: &str) -> Worker<()> {
    Worker::new(name, |stop| {
        stop.wait();
        Ok(())
    })
}

/// Ready unless its file exists: a database that goes down and comes back.
struct Db(PathBuf);

impl HealthReporter for Db {
    fn name(&self) -> &str {
        "db"
    }
    fn ready(&self) -> Result<()> {
        if self.0.exists() {
            Err(lifecycle::Error::msg("the database is down"))
        } else {
            Ok(())
        }
    }
}

impl Service for Db {
    fn start(&self, _: &StartContext) -> Result<()> {
        Ok(())
    }
    fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Starts once `go-slow` exists in its directory, closes once `go-close` does.
struct Slow(PathBuf);

/// Waits until `file` exists, at most `bound`.
fn wait_for_file(file: &Path, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    while !file.exists() {
        if Instant::now() >= deadline {
            return Err(lifecycle::Error::msg(format!("no {}", file.display())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl HealthReporter for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn ready(&self) -> Result<()> {
        Ok(())
    }
}

impl Service for Slow {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        let go = self.0.join("go-slow");
        while !go.exists() {
            ctx.check("slow")?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
    fn close(&self) -> Result<()> {
        wait_for_file(&self.0.join("go-close"), CLOSE_TIMEOUT)
    }
}

/// A logger that writes each line to standard error, where the test reads it.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!("[{}] {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

/// This test binary, run as [`child`] with `role` and `env`, and without the variables of
/// systemd unless `env` sets them.
fn spawn_child(role: &str, env: &[(&str, &str)]) -> Proc {
    let exe = std::env::current_exe().expect("test binary");
    let args = ["--exact", "child", "--nocapture", "--test-threads=1"];
    Proc::spawn_with(&exe, &args, |c: &mut Command| {
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            c.env_remove(var);
        }
        c.env(ROLE, role).envs(env.iter().copied());
    })
}

/// The child in `role`, notifying `socket` with the watchdog on, and the directory of the
/// files through which the test controls it.
fn spawn_controlled(role: &str, socket: &NotifySocket) -> (TempDir, Proc) {
    let dir = TempDir::new("control");
    let dir_value = dir.0.to_str().unwrap().to_owned();
    let env = [
        ("NOTIFY_SOCKET", socket.value.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
        (DIR, dir_value.as_str()),
    ];
    (dir, spawn_child(role, &env))
}

/// The next two extensions and what came with them: no step between them, each until the same
/// bound (so smaller than the one before), none more than `max`.
fn extended_again(r: &mut Received, max: u64) -> Vec<String> {
    let got = r.count(EXTEND, 2);
    assert_eq!(steps(&got), Vec::<&str>::new());
    let values = extensions(&got);
    assert!(
        values[0] > values[1],
        "each until the same bound: {values:?}"
    );
    assert!(values.iter().all(|&v| v <= max), "{values:?}");
    got
}

/// Sends SIGTERM, then expects exactly `expected` steps until the child says it shut down
/// cleanly, and its clean exit.
fn terminates_cleanly(mut p: Proc, r: &mut Received, expected: &[&str]) {
    p.signal(libc::SIGTERM);
    let got = r.until("STATUS=shut down cleanly");
    assert_eq!(steps(&got), expected);
    p.wait_for("child done");
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

/// Touches `name` in `dir`.
fn create(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

/// The `services` role, end to end, through `socket`; with `kill_checker`, liveness fails in
/// the run phase.
fn runs_under_systemd(socket: &NotifySocket, kill_checker: bool) {
    let (dir, mut p) = spawn_controlled("services", socket);
    let mut r = Received::new(socket);

    // The start: db, then slow, which waits for the test.
    let got = r.until("STATUS=starting slow (1/3 ready)");
    assert_eq!(
        steps(&got),
        [
            "STATUS=starting db (0/3 ready)",
            "STATUS=starting slow (1/3 ready)"
        ]
    );
    assert!(
        !extensions(&got).is_empty(),
        "the start is extended: {got:#?}"
    );
    // While slow starts, its extension is sent again (every second), each until its bound.
    let slow_start = extended_again(&mut r, MAX_START_EXTENSION);
    assert!(
        pings(&slow_start) > 0,
        "the watchdog pings during the start"
    );
    create(&dir.0, "go-slow");

    let got = r.until("READY=1\nSTATUS=running");
    assert_eq!(
        steps(&got),
        [
            "STATUS=starting api (2/3 ready)",
            "STATUS=starting: polling health (3/3 ready)",
            "READY=1\nSTATUS=running",
        ]
    );
    let line = p.wait_for("health at ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(common::http::get(addr, "/livez").status, 200);

    // The run phase: pings, and nothing else.
    let got = r.count(PING, 3);
    assert_eq!(steps(&got), Vec::<&str>::new());
    assert_eq!(extensions(&got), Vec::<u64>::new());
    // The database goes down: readiness fails, liveness does not, and the pings go on.
    create(&dir.0, "db-down");
    common::http::wait_status(addr, "/readyz", 503);
    assert_eq!(common::http::get(addr, "/livez").status, 200);
    let got = r.count(PING, 3);
    assert_eq!(steps(&got), Vec::<&str>::new());
    std::fs::remove_file(dir.0.join("db-down")).unwrap();
    common::http::wait_status(addr, "/readyz", 200);

    if kill_checker {
        // The checker no longer polls: /livez fails, and so do the pings.
        create(&dir.0, "kill-checker");
        p.wait_for("checker closed");
        assert_eq!(common::http::get(addr, "/livez").status, 503);
        p.wait_for("liveness fails (the health checker is Closed");
        // At most one ping that judged liveness before the close is still on its way.
        let before = r.socket.pending();
        r.all.extend(before.iter().cloned());
        assert_eq!(steps(&before), Vec::<&str>::new());
        // Ten intervals without a ping.
        let late = r.socket.next_within(Duration::from_secs(1));
        assert_eq!(
            late, None,
            "no ping while liveness fails; before: {before:?}"
        );
    }

    // The shutdown, on SIGTERM as systemd sends it: the drain, then api closes.
    p.signal(libc::SIGTERM);
    let got = r.until("STATUS=closing slow (1/3 done)");
    assert_eq!(
        steps(&got),
        [
            "STOPPING=1\nSTATUS=shutting down (signal)",
            "STATUS=draining 300ms",
            "STATUS=closing api (0/3 done)",
            "STATUS=closing slow (1/3 done)",
        ]
    );
    assert!(
        !extensions(&got).is_empty(),
        "the stop is extended: {got:#?}"
    );
    if kill_checker {
        assert_eq!(pings(&got), 0, "{got:#?}");
    } else {
        assert!(
            pings(&got) > 0,
            "the watchdog pings through the drain: {got:#?}"
        );
    }
    // slow's close waits for the test: extended again, each until its bound.
    let slow_close = extended_again(&mut r, MAX_CLOSE_EXTENSION);
    assert_eq!(pings(&slow_close) > 0, !kill_checker, "{slow_close:#?}");
    create(&dir.0, "go-close");

    let got = r.until_with(|d| d.starts_with("STATUS=shut down"), "the end");
    let mut expected = vec![
        "STATUS=closing db (2/3 done)",
        "STATUS=closing health endpoint",
        "STATUS=closing health checker",
    ];
    if kill_checker {
        // The checker was closed under the runner: however its second close ends.
        expected.push(steps(&got).last().copied().unwrap_or_default());
    } else {
        expected.push("STATUS=shut down cleanly");
    }
    assert_eq!(steps(&got), expected);
    assert!(
        extensions(&r.all).iter().all(|&v| v <= MAX_START_EXTENSION),
        "{:#?}",
        r.all
    );
    p.wait_for("child done");
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    // Nothing after the end but the last pings of the run.
    let after = r.socket.pending();
    assert!(after.iter().all(|d| d == PING), "{after:?}");
}

#[test]
fn a_run_notifies_a_path_socket_its_start_watchdog_and_shutdown() {
    runs_under_systemd(&NotifySocket::at_path(), false);
}

#[test]
fn a_run_notifies_an_abstract_socket_and_its_watchdog_stops_with_liveness() {
    runs_under_systemd(&NotifySocket::abstract_name(), true);
}

#[test]
fn a_signal_during_a_slow_start_stops_it_as_a_shutdown() {
    let socket = NotifySocket::at_path();
    let (_dir, mut p) = spawn_controlled("services", &socket);
    let mut r = Received::new(&socket);
    r.until("STATUS=starting slow (1/3 ready)");
    p.signal(libc::SIGTERM);
    // Never ready: the start in progress is cancelled, and the shutdown closes what started.
    let got = r.until("STATUS=shut down cleanly");
    assert_eq!(
        steps(&got),
        [
            "STOPPING=1\nSTATUS=cancelling slow (1/3 ready): signal",
            "STATUS=shutting down (signal)",
            "STATUS=closing db (0/1 done)",
            "STATUS=closing health endpoint",
            "STATUS=closing health checker",
            "STATUS=shut down cleanly",
        ]
    );
    let values = extensions(&got);
    assert!(!values.is_empty(), "the stop is extended: {got:#?}");
    assert!(
        values.iter().all(|&v| v <= MAX_START_EXTENSION),
        "{values:?}"
    );
    p.wait_for("no run phase");
    p.wait_for("child done");
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

#[test]
fn without_health_the_watchdog_pings_while_the_run_runs() {
    let socket = NotifySocket::abstract_name();
    let env = [
        ("NOTIFY_SOCKET", socket.value.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ];
    let p = spawn_child("bare", &env);
    let mut r = Received::new(&socket);
    let got = r.until("READY=1\nSTATUS=running");
    assert_eq!(
        steps(&got),
        ["STATUS=starting w (0/1 ready)", "READY=1\nSTATUS=running"]
    );
    let got = r.count(PING, 3);
    assert_eq!(steps(&got), Vec::<&str>::new());
    terminates_cleanly(
        p,
        &mut r,
        &[
            "STOPPING=1\nSTATUS=shutting down (signal)",
            "STATUS=closing w (0/1 done)",
            "STATUS=shut down cleanly",
        ],
    );
}

#[test]
fn the_watchdog_stops_while_a_liveness_check_fails_and_resumes_after() {
    let socket = NotifySocket::at_path();
    let (dir, mut p) = spawn_controlled("wedge", &socket);
    let mut r = Received::new(&socket);
    let got = r.until("READY=1\nSTATUS=running");
    assert_eq!(
        steps(&got),
        [
            "STATUS=starting w (0/1 ready)",
            "STATUS=starting: polling health (1/1 ready)",
            "READY=1\nSTATUS=running",
        ]
    );
    let got = r.count(PING, 3);
    assert_eq!(steps(&got), Vec::<&str>::new());

    // The loop stops ticking: once the check fails twice in a row, liveness fails, and the
    // pings stop.
    create(&dir.0, "wedged");
    let line = p.wait_for("liveness fails (");
    assert!(line.contains("ticker"), "named: {line}");
    assert!(line.contains("the loop has not ticked"), "why: {line}");
    // At most the pings that judged liveness before it failed are still on their way.
    let before = r.socket.pending();
    r.all.extend(before.iter().cloned());
    assert!(before.iter().all(|d| d == PING), "{before:?}");
    // Ten intervals without a ping.
    let late = r.socket.next_within(Duration::from_secs(1));
    assert_eq!(
        late, None,
        "no ping while liveness fails; before: {before:?}"
    );

    // It ticks again: the next poll passes, and the pings resume, the first of them right
    // after the gap.
    std::fs::remove_file(dir.0.join("wedged")).unwrap();
    p.wait_for("liveness passes again");
    let got = r.count(PING, 3);
    assert_eq!(got.first().map(String::as_str), Some(PING), "{got:#?}");
    assert_eq!(steps(&got), Vec::<&str>::new());
    assert_eq!(extensions(&got), Vec::<u64>::new());

    terminates_cleanly(
        p,
        &mut r,
        &[
            "STOPPING=1\nSTATUS=shutting down (signal)",
            "STATUS=closing w (0/1 done)",
            "STATUS=closing health checker",
            "STATUS=shut down cleanly",
        ],
    );
    // Nothing after the end but the last pings of the run.
    let after = r.socket.pending();
    assert!(after.iter().all(|d| d == PING), "{after:?}");
}

#[test]
fn not_under_systemd_a_run_sends_nothing_and_has_no_watchdog() {
    let mut p = spawn_child("absent", &[("WATCHDOG_USEC", WATCHDOG_USEC)]);
    p.wait_for("child done");
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

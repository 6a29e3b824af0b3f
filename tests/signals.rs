//! The demo as a real child process with real signals: signals it inherited as ignored stay
//! ignored, SIGHUP is left alone, and a standard error stuck on a full pipe (a log shipper that
//! stopped reading) with debug logging neither stops probes nor a shutdown, nor the exit at
//! once on a second signal. The end of a run logs one summary line per service.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::http;
use common::process::{example, Proc};
use common::{eventually, WATCHDOG};
use lifecycle::Runner;

/// A port free on 127.0.0.1 a moment ago, for a child whose log cannot be read for its address.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The demo, whose standard error is piped and read, with `signal` inherited as ignored.
fn demo_ignoring(signal: libc::c_int, args: &[&str]) -> Proc {
    let mut all = vec!["--api-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::spawn_with(&example("demo"), &all, |command| {
        // SAFETY: between fork and exec, only the async-signal-safe signal(2).
        unsafe {
            command.pre_exec(move || {
                libc::signal(signal, libc::SIG_IGN);
                Ok(())
            });
        }
    })
}

#[test]
fn sigint_inherited_ignored_stays_ignored() {
    let mut p = demo_ignoring(libc::SIGINT, &[]);
    p.wait_for("SIGINT was inherited ignored: it stays ignored");
    p.wait_for("; running");
    // Standard signals pending together are delivered lowest number first: a handled SIGINT
    // would begin the shutdown before SIGTERM.
    p.signal(libc::SIGINT);
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("SIGTERM: shutting down")));
    assert!(!log.iter().any(|l| l.contains("SIGINT: ")), "{log:#?}");
}

#[test]
fn sighup_under_nohup_is_ignored_and_the_program_keeps_serving() {
    let mut p = demo_ignoring(libc::SIGHUP, &[]);
    let line = p.wait_for("health endpoint: listening on http://");
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    p.wait_for("; running");
    // Readiness passes a moment after that line: wait for it.
    wait_status(addr, "/readyz", 200);
    p.signal(libc::SIGHUP);
    // An ignored signal is discarded when it is sent: the program still serves, ready.
    assert_eq!(http::get(addr, "/readyz").status, 200);
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("SIGTERM: shutting down")));
}

/// With upgrades off (the fleet example does not turn them on; the demo does, see
/// tests/process_upgrade.rs), SIGHUP keeps its default: the process ends by it.
#[test]
fn sighup_is_not_handled_it_keeps_its_default() {
    let mut p = Proc::spawn(&example("fleet"), &["--services", "3"]);
    p.wait_for("; running");
    p.signal(libc::SIGHUP);
    let (status, log) = p.wait_exit();
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "log:\n{}",
        log.join("\n")
    );
}

#[test]
fn the_end_of_a_run_logs_one_summary_line_per_service() {
    let mut p = Proc::spawn(
        &example("demo"),
        &[
            "--api-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--hang-close",
            "worker",
            "--close-timeout",
            "0.2",
        ],
    );
    p.wait_for("; running");
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(1), "log:\n{}", log.join("\n"));
    let summary: Vec<&str> = (log.iter())
        .filter_map(|l| l.split_once("summary: ").map(|(_, s)| s))
        .collect();
    assert_eq!(summary.len(), 4, "{summary:#?}");
    assert!(summary[0].starts_with("3 service(s), 1 error(s), 1 abandoned thread(s)"));
    assert!(summary[1].starts_with("pool: closed in "), "{}", summary[1]);
    assert!(
        summary[2].starts_with("worker: close failed: "),
        "{}",
        summary[2]
    );
    assert!(
        summary[2].contains("timed out after 200ms"),
        "{}",
        summary[2]
    );
    assert!(summary[3].starts_with("api: closed in "), "{}", summary[3]);
}

/// The demo with debug logging into a pipe, on known ports; once it runs, the test stops
/// reading the pipe and fills it: a log sink that got stuck. A watchdog bounds its exit.
struct Stuck {
    child: Child,
    health: SocketAddr,
    /// The read end, never read once the pipe is full, and a copy of the write end to fill it.
    _read: OwnedFd,
    write: OwnedFd,
}

impl Stuck {
    fn spawn(args: &[&str]) -> Stuck {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors, owned from here on.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (health, api) = (free_addr(), free_addr());
        let (health_arg, api_arg) = (health.to_string(), api.to_string());
        let mut all = vec!["--health-addr", &health_arg, "--api-addr", &api_arg];
        all.extend_from_slice(args);
        let child = Command::new(example("demo"))
            .args(&all)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(write.try_clone().expect("dup")))
            .spawn()
            .expect("spawn the demo");
        let mut demo = Stuck {
            child,
            health,
            _read: read,
            write,
        };
        demo.read_until("; running");
        demo.fill();
        demo
    }

    /// Reads the log until a line contains `needle` (under the watchdog).
    fn read_until(&mut self, needle: &str) {
        let fd = self._read.as_raw_fd();
        let deadline = Instant::now() + WATCHDOG;
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&log).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "watchdog: no {needle:?} in the log"
            );
            // SAFETY: read(2) into a buffer owned here, from a descriptor owned here.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n > 0, "the log ended before {needle:?}");
            log.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// Fills the pipe without blocking, then makes it blocking again, as the child's standard
    /// error is: from now on every write to it blocks.
    fn fill(&self) {
        let fd = self.write.as_raw_fd();
        // SAFETY: fcntl(2) and write(2) on a descriptor owned here, with a valid buffer.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let chunk = [b'x'; 4096];
            while libc::write(fd, chunk.as_ptr().cast(), chunk.len()) > 0 {}
            while libc::write(fd, chunk.as_ptr().cast(), 1) > 0 {}
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child not reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the exit at most `bound`; kills the child and fails past it.
    #[track_caller]
    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        let mut status = None;
        while status.is_none() && Instant::now() < deadline {
            status = self.child.try_wait().expect("try_wait");
            if status.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        status.unwrap_or_else(|| {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the demo did not exit within {bound:?} of the signal");
        })
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A kubelet-like probe of `path`: a fresh connection, one request, 1 s timeouts; its status,
/// or `None` if it got no answer.
fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    http::parse(&raw).map(|r| r.status)
}

/// How many of `count` probes of `path` were answered 200.
fn probes(addr: SocketAddr, path: &str, count: usize) -> usize {
    (0..count)
        .filter(|_| probe(addr, path) == Some(200))
        .count()
}

/// Waits until a probe of `path` is answered `status` (the child may not listen yet).
#[track_caller]
fn wait_status(addr: SocketAddr, path: &str, status: u16) {
    eventually(&format!("{path} answers {status}"), || {
        probe(addr, path) == Some(status)
    });
}

#[test]
fn with_standard_error_stuck_probes_pass_and_sigterm_exits_within_the_shutdown_timeout() {
    let mut demo = Stuck::spawn(&["--shutdown-timeout", "5"]);
    wait_status(demo.health, "/readyz", 200);
    assert_eq!(probes(demo.health, "/livez", 100), 100, "liveness probes");
    assert_eq!(probes(demo.health, "/readyz", 100), 100, "readiness probes");
    demo.signal(libc::SIGTERM);
    // The shutdown timeout, and a margin for the process to end.
    let status = demo.wait_exit(Duration::from_secs(5) + Duration::from_secs(5));
    // It exits by itself, with 1: the demo's own services log as they close, so their closes
    // block on the stuck sink and are abandoned within their shares of the shutdown timeout;
    // the library's lines never block it, and the endpoint and checker still close.
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[test]
fn with_standard_error_stuck_a_second_signal_exits_at_once() {
    let mut demo = Stuck::spawn(&["--termination-delay", "20", "--shutdown-timeout", "60"]);
    wait_status(demo.health, "/readyz", 200);
    demo.signal(libc::SIGTERM);
    // The drain has begun once readiness fails.
    wait_status(demo.health, "/readyz", 503);
    demo.signal(libc::SIGTERM);
    // Well before the 20 s drain ends.
    let status = demo.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(Runner::SECOND_SIGNAL_EXIT_CODE),
        "{status:?}"
    );
}

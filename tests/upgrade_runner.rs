//! Upgrades in place, end to end, between real processes: a child process (this test binary
//! again, running only [`child`]) runs a `Runner` with a health endpoint on 127.0.0.1:0; an
//! upgrade starts the same executable with the same arguments and environment, so the new
//! process is this binary running [`child`] in the same role, and
//! [`upgraded_from`](lifecycle::systemd::upgraded_from) tells it it is the new one.
//!
//! The new process inherits the old one's standard error, so the log lines of every process
//! of a test come on one pipe, each prefixed by its writer's pid (written in one `write`, so
//! lines of two processes never mix). This process is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): a new process outliving the old one becomes its child, so its
//! exit status is read with `waitpid`, and no orphan is left to a PID 1 that may not reap.
//! Every pid a test learns is killed when it ends ([`Family`]'s drop), pass or fail.
//!
//! What is checked here: the hand-over under a real `NOTIFY_SOCKET` (the sender of each
//! datagram told by `SO_PASSCRED`), with the health endpoint's socket and a named listener
//! (`systemd::listener("api", ..)`) on the same ports; the PID file; the refusals (SIGHUP
//! during the start and the shutdown; SIGHUP with upgrades off keeps its default action, while
//! `RunHandle::upgrade` still works). The failures (the timeout, a failing new process,
//! SIGTERM during an upgrade, a new process given up on late, the listener's blocking mode)
//! are in `upgrade_runner_failures`; the child program and [`Family`] in
//! [`common::upgrading`].
//!
//! Every wait is bounded (the [`WATCHDOG`]); the child's steps wait for files this test creates
//! or for signals it sends, never for time to pass.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::notify::{NotifySocket, PING};
use common::upgrading::{serving_with_pid_file, signal, wait_gone, Family, Role, WATCHDOG_USEC};
use common::WATCHDOG;

/// In a child process started by a test below (or by an upgrade of one): see
/// [`common::upgrading::child`]. Run as a plain test, it does nothing.
#[test]
fn child() {
    common::upgrading::child();
}

/// The id of the process whose `api` answered a connection to `addr`.
fn api_answer(addr: SocketAddr) -> libc::pid_t {
    use std::io::Read;
    let mut conn = common::http::connect(addr);
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a pid: {text:?}"))
}

/// Every datagram a [`NotifySocket`] with credentials received, with its sender, in order.
struct Datagrams<'a> {
    socket: &'a NotifySocket,
    all: Vec<(libc::pid_t, String)>,
}

impl Datagrams<'_> {
    /// Receives until a datagram for which `found` holds (given its sender and text); returns
    /// it. Fails the test if it has not come within the watchdog.
    #[track_caller]
    fn until(&mut self, what: &str, found: impl Fn(libc::pid_t, &str) -> bool) -> (i32, String) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((pid, d)) = self.socket.next_from_within(left) else {
                panic!("no {what} within {WATCHDOG:?}; in all: {:#?}", self.all);
            };
            self.all.push((pid, d.clone()));
            if found(pid, &d) {
                return (pid, d);
            }
        }
    }

    /// Every datagram already waiting, without waiting, kept.
    fn drain(&mut self) {
        while let Some(d) = self.socket.next_from_within(Duration::from_millis(1)) {
            self.all.push(d);
        }
    }

    /// What `pid` sent, in order.
    fn from(&self, pid: libc::pid_t) -> Vec<&str> {
        (self.all.iter())
            .filter(|(p, _)| *p == pid)
            .map(|(_, d)| d.as_str())
            .collect()
    }
}

/// 1. SIGHUP under a real `NOTIFY_SOCKET` with the watchdog on: the old process tells systemd
///    `MAINPID=` of the new one, sends nothing after it (no `STOPPING=1`, no ping), and exits
///    0; the new one pings the watchdog as its own (`WATCHDOG_PID`), serves `/readyz` on the
///    same port, and on SIGTERM sends `STOPPING=1` and exits 0.
#[test]
fn sighup_hands_over_to_the_new_process_as_systemd_sees_it() {
    let socket = NotifySocket::at_path();
    socket.pass_credentials();
    let env = [
        ("NOTIFY_SOCKET", socket.value.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ];
    let mut f = Family::spawn(Role::Serve, &env);
    let mut d = Datagrams {
        socket: &socket,
        all: Vec::new(),
    };
    let old = f.first_pid();
    d.until("the old READY=1", |p, m| {
        p == old && m == "READY=1\nSTATUS=running"
    });
    let addr = f.serving(old);
    let api = f.api(old);
    assert_eq!(api_answer(api), old);
    d.until("a ping of the old process", |p, m| p == old && m == PING);

    let new = f.sighup_upgrade(old);
    assert_ne!(new, old);
    let (_, handed) = d.until("MAINPID=", |_, m| m.starts_with("MAINPID="));
    assert_eq!(
        handed,
        format!("MAINPID={new}\nSTATUS=upgraded: pid {new} serves; this process drains and exits")
    );
    assert_eq!(d.all.last().unwrap().0, old, "MAINPID= is the old one's");
    f.wait_for(&format!(
        "{old} [INFO] upgrade: pid {new} is ready: handing over to it"
    ));
    assert_eq!(f.serving(new), addr, "the same port");
    assert_eq!(f.api(new), api, "the named listener, handed over");
    assert_eq!(common::http::get(addr, "/readyz").status, 200);

    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert!(f.logged(&format!(
        "{old} run ended: upgraded: pid {new} serves; success true"
    )));
    d.drain();
    let sent = d.from(old);
    assert_eq!(
        sent.iter().rposition(|m| m.starts_with("MAINPID=")),
        Some(sent.len() - 1),
        "nothing from the old process after MAINPID=: {sent:#?}"
    );
    assert!(
        !sent.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 from the old process: {sent:#?}"
    );

    // The new process serves, and pings as the watchdog's own process.
    d.until("a ping of the new process", |p, m| p == new && m == PING);
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(api_answer(api), new);

    signal(new, libc::SIGTERM);
    d.until("the new process's STOPPING=1", |p, m| {
        p == new && m.starts_with("STOPPING=1\n")
    });
    d.until("the new process's end", |p, m| {
        p == new && m == "STATUS=shut down cleanly"
    });
    let status = wait_gone(new, WATCHDOG).expect("the new process, an orphan, reaped here");
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

/// 2. The PID file holds the first process's id once it serves, the new one's after an upgrade
///    (the old process leaves it), and is removed when the new process's run ends.
#[test]
fn the_pid_file_follows_the_upgrade_and_is_removed_at_the_end() {
    let (mut f, pid_file, old, addr) = serving_with_pid_file(Role::Serve, &[]);
    let read = || pid_file.read();

    let new = f.sighup_upgrade(old);
    assert_eq!(f.serving(new), addr);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(
        read(),
        Some(format!("{new}\n")),
        "the new one's, left by the old one"
    );

    signal(new, libc::SIGTERM);
    let status = wait_gone(new, WATCHDOG).expect("reaped here");
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(read(), None, "removed at the end");
    let left: Vec<_> = std::fs::read_dir(&pid_file.files.0).unwrap().collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");
}

/// 3a. SIGHUP during the start is refused with a log line; the start goes on, and the same
///     process serves; SIGHUP during the shutdown (a slow close) is refused too, and the
///     shutdown ends cleanly.
#[test]
fn sighup_during_the_start_is_refused_and_the_run_goes_on() {
    let mut f = Family::spawn(Role::Slow, &[]);
    let old = f.first_pid();
    f.wait_for(&format!("{old} gate: waiting for go"));
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: the program is starting or shutting down"
    ));
    f.create("go");
    let addr = f.serving(old);
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert!(!f.logged("upgrade: started pid"), "{}", f.dump());

    signal(old, libc::SIGTERM);
    f.wait_for(&format!("{old} gate: closing: waiting for go-close"));
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: the program is starting or shutting down"
    ));
    f.create("go-close");
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert!(!f.logged("upgrade: started pid"), "{}", f.dump());
    assert!(f.logged(&format!("{old} run ended: signal; success true")));
}

/// 3b. With upgrades off, `RunHandle::upgrade` upgrades all the same; and SIGHUP keeps its
///     default action: the new process dies of it.
#[test]
fn run_handle_upgrades_with_sighup_off_and_sighup_keeps_its_default() {
    let mut f = Family::spawn(Role::Handle, &[]);
    let old = f.first_pid();
    let addr = f.serving(old);
    f.create("upgrade-now");
    f.wait_for(&format!("{old} asking for an upgrade"));
    let line = f.wait_for(&format!("{old} [INFO] upgrade: started pid "));
    let new = f.started_in(&line);
    f.wait_for(&format!(
        "{old} [INFO] upgrade: pid {new} is ready: handing over to it"
    ));
    assert_eq!(f.serving(new), addr);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(common::http::get(addr, "/readyz").status, 200);

    signal(new, libc::SIGHUP);
    let status = wait_gone(new, WATCHDOG).expect("reaped here");
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "{status}; log:\n{}",
        f.dump()
    );
}

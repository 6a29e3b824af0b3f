//! The demo's zero-downtime upgrade, with real processes under real load: SIGHUP starts the demo
//! again with its listening sockets, the new process takes over, the old one drains and exits 0;
//! no request fails and no connection is refused meanwhile. A new process that fails to start
//! leaves the old one serving. Twenty upgrades leak no descriptor.
//!
//! The first demo is this test's child; each later one is started by the one before, and is
//! adopted by this test process when its parent exits (the test process makes itself a child
//! subreaper, Linux), so that every exit status is read with `waitpid`. Every process a test
//! saw is killed on drop ([`Pids`]). Every wait is bounded by the watchdog.

mod common;
mod demo;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::time::Instant;

use common::load::{Load, Tally, Target};
use common::process::{example, Proc};
use common::{eventually, http, WATCHDOG};
use demo::{api_addr, demo, health_addr};

/// The pids of the demo processes a test has seen, killed (SIGKILL) with their descendants and
/// reaped on drop unless reaped already: a failing test leaves no demo running.
struct Pids {
    live: Vec<libc::pid_t>,
}

impl Pids {
    /// Tracks `first`, this test's child; makes this process the subreaper of the processes
    /// its children start, so that an upgrade's new process is adopted when its parent exits.
    fn new(first: libc::pid_t) -> Pids {
        // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER takes one integer argument.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
        Pids { live: vec![first] }
    }

    fn track(&mut self, pid: libc::pid_t) {
        if !self.live.contains(&pid) {
            self.live.push(pid);
        }
    }

    /// Waits (under the watchdog) for `pid` to exit, and reaps it; returns its exit code
    /// (`None` if a signal ended it).
    #[track_caller]
    fn reap(&mut self, pid: libc::pid_t) -> Option<i32> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name(format!("waitpid {pid}"))
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waitpid(2) on a pid of a child (or an adopted orphan) of ours.
                let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
                let _ = tx.send((rc, status));
            })
            .expect("spawn a waiter");
        let (rc, status) = rx
            .recv_timeout(WATCHDOG)
            .unwrap_or_else(|_| panic!("watchdog: process {pid} did not exit"));
        assert_eq!(
            rc,
            pid,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        self.live.retain(|&p| p != pid);
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    /// Sends SIGTERM to `pid`, the last process serving, and reaps it: it exits 0.
    #[track_caller]
    fn end(&mut self, pid: libc::pid_t) {
        signal(pid, libc::SIGTERM);
        assert_eq!(
            self.reap(pid),
            Some(0),
            "the last process exits 0 on SIGTERM"
        );
    }

    /// Upgrades `current` (see [`upgrade`]) until a new process answers on `api`; tracks it,
    /// reaps `current` (which exits 0), and returns the new process's id.
    #[track_caller]
    fn upgrade(&mut self, p: &mut Proc, current: libc::pid_t, api: SocketAddr) -> libc::pid_t {
        upgrade(p, current);
        let next = new_pid(api, current);
        self.track(next);
        assert_eq!(
            self.reap(current),
            Some(0),
            "the old process {current} exits 0"
        );
        next
    }
}

impl Drop for Pids {
    /// Kills the processes tracked, and their descendants (an upgrade's new process not seen
    /// yet), all found before the first is killed.
    fn drop(&mut self) {
        let mut all = self.live.clone();
        let mut i = 0;
        while i < all.len() {
            let more: Vec<_> = (children(all[i]).into_iter())
                .filter(|c| !all.contains(c))
                .collect();
            all.extend(more);
            i += 1;
        }
        for &pid in &all {
            // SAFETY: kill(2) and waitpid(2) on processes of ours not reaped yet: their pids
            // cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The demo `p` once it runs: its pids tracked ([`Pids::new`]), its health endpoint's address
/// and its API's.
#[track_caller]
fn running(p: &mut Proc) -> (Pids, SocketAddr, SocketAddr) {
    let pids = Pids::new(p.pid());
    let health = health_addr(p);
    let api = api_addr(p);
    p.wait_for("; running");
    (pids, health, api)
}

/// Sends `signal` to `pid`.
fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) on a process of ours not reaped yet.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// Sends SIGHUP to `pid` (the serving process, whose log `p` reads) until it begins an upgrade.
///
/// The runner takes upgrades from the line "from now on SIGHUP upgrades the program in place",
/// a moment after "; running" (in the new process of an upgrade, once it has told the old one
/// that it serves): a SIGHUP before is refused, with a log line, and sent again.
#[track_caller]
fn upgrade(p: &mut Proc, pid: libc::pid_t) {
    loop {
        signal(pid, libc::SIGHUP);
        let line = p.wait_for_any(&["SIGHUP: upgrading:", "SIGHUP: upgrade refused"]);
        if line.contains("SIGHUP: upgrading:") {
            return;
        }
    }
}

/// The pid that answers the API's `/pid` on a fresh connection.
fn served_by(api: SocketAddr) -> libc::pid_t {
    let reply = http::get(api, "/pid");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body.trim().parse().expect("a pid")
}

/// Waits until a process other than `old` answers `/pid`; returns its pid.
#[track_caller]
fn new_pid(api: SocketAddr, old: libc::pid_t) -> libc::pid_t {
    let mut new = old;
    eventually("a new process answers /pid", || {
        new = served_by(api);
        new != old
    });
    new
}

/// The processes whose parent is `pid`.
fn children(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// How many descriptors `pid` has open.
fn fds(pid: libc::pid_t) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// The load: the API's `/jobs` and `/pid`, and the health endpoint's `/readyz`.
fn load(api: SocketAddr, health: SocketAddr) -> Load {
    let targets = [
        Target {
            addr: api,
            path: "/jobs",
        },
        Target {
            addr: api,
            path: "/pid",
        },
        Target {
            addr: health,
            path: "/readyz",
        },
    ];
    Load::start(&targets, 2, 100_000)
}

#[track_caller]
fn assert_clean(tally: &Tally) {
    assert_eq!(tally.failures(), 0, "failed requests: {tally:#?}");
    assert!(tally.ok > 0, "no request answered: {tally:#?}");
}

#[test]
fn three_upgrades_under_load_fail_no_request_and_each_old_process_exits_0() {
    let pid_file = std::env::temp_dir().join(format!("demo-upgrade-{}.pid", std::process::id()));
    let mut p = demo(&["--pid-file", pid_file.to_str().unwrap()]);
    let (mut pids, health, api) = running(&mut p);
    http::wait_status(health, "/readyz", 200);
    let load = load(api, health);
    let mut current = p.pid();
    let mut new = Vec::new();
    for _ in 0..3 {
        // Each upgrade meets a load in full swing (and the last new process serves some).
        load.wait_requests(300);
        let next = pids.upgrade(&mut p, current, api);
        new.push(next);
        current = next;
    }
    load.wait_requests(300);
    let tally = load.stop();
    eprintln!("3 upgrades under load: {tally:?}");
    assert_clean(&tally);
    assert_eq!(tally.refused, 0, "{tally:#?}");
    assert_eq!(new.iter().collect::<BTreeSet<_>>().len(), 3, "{new:?}");
    let known: BTreeSet<u32> = new
        .iter()
        .map(|&p| p as u32)
        .chain([p.pid() as u32])
        .collect();
    let answered: BTreeSet<u32> = tally.pids.keys().copied().collect();
    assert!(answered.is_subset(&known), "{answered:?} vs {known:?}");
    assert!(children(current).is_empty(), "{:?}", children(current));
    pids.end(current);
}

#[test]
fn a_new_process_that_fails_to_start_leaves_the_old_one_serving() {
    let mut p = demo(&["--fail-upgraded", "pool"]);
    let (mut pids, health, api) = running(&mut p);
    http::wait_status(health, "/readyz", 200);
    let load = load(api, health);
    for _ in 0..2 {
        load.wait_requests(300);
        let pid = p.pid();
        upgrade(&mut p, pid);
        // The new process's start fails (its runner logs the error)...
        p.wait_for("injected start failure in a process started by an upgrade");
        // ... and the old one logs the failed upgrade and has no child left.
        p.wait_for("this process goes on serving");
        eventually("the failed new process is gone", || {
            children(p.pid()).is_empty()
        });
        assert_eq!(served_by(api), p.pid(), "the old process serves on");
    }
    load.wait_requests(300);
    let tally = load.stop();
    assert_clean(&tally);
    assert_eq!(tally.pids.keys().collect::<Vec<_>>(), [&(p.pid() as u32)]);
    pids.end(p.pid());
}

#[test]
fn a_new_process_not_ready_within_the_upgrade_timeout_is_killed_and_the_old_one_serves_on() {
    let mut p = demo(&["--slow-start-upgraded", "pool", "--upgrade-timeout", "0.5"]);
    let (mut pids, _health, api) = running(&mut p);
    let pid = p.pid();
    upgrade(&mut p, pid);
    p.wait_for("pool: slow start, waiting until cancelled (--slow-start-upgraded)");
    p.wait_for("this process goes on serving");
    eventually("the new process is gone", || children(p.pid()).is_empty());
    assert_eq!(served_by(api), p.pid(), "the old process serves on");
    pids.end(p.pid());
}

#[test]
fn twenty_upgrades_leak_no_descriptor_and_leave_no_process() {
    let mut p = demo(&[]);
    let (mut pids, health, api) = running(&mut p);
    http::wait_status(health, "/readyz", 200);
    let mut current = p.pid();
    let mut counts = Vec::new();
    let began = Instant::now();
    for _ in 0..20 {
        let next = pids.upgrade(&mut p, current, api);
        current = next;
        // The first new process's count is the bound: a connection just closed may still be
        // held for a moment, never for good.
        let bound = counts.first().copied().unwrap_or(usize::MAX);
        eventually("the descriptors do not grow", || fds(current) <= bound);
        counts.push(fds(current));
        assert!(children(current).is_empty(), "{:?}", children(current));
    }
    eprintln!(
        "20 upgrades in {:?}; descriptors: {counts:?}",
        began.elapsed()
    );
    pids.end(current);
}

#[test]
fn a_plain_shutdown_answers_keep_alive_requests_with_connection_close_then_drains() {
    let mut p = demo(&[]);
    let (mut pids, _health, api) = running(&mut p);
    let mut clients: Vec<http::Client> = (0..4).map(|_| http::Client::connect(api)).collect();
    for client in &mut clients {
        let reply = client.get("/jobs");
        assert_eq!((reply.status, reply.header("Connection")), (200, None));
    }
    signal(p.pid(), libc::SIGTERM);
    // The hand-off is over: tiny_http takes no more connections; those open are answered.
    p.wait_for("api: stopped accepting on");
    for client in &mut clients {
        let reply = client.get("/pid");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body.trim(), p.pid().to_string());
        assert_eq!(reply.header("Connection"), Some("close"), "{reply:?}");
    }
    // Each client closes, as told: the drain ends with the last, not at its bound.
    drop(clients);
    let line = p.wait_for_any(&["api: served", "connections still open"]);
    assert!(line.contains("api: served"), "{line}");
    assert_eq!(pids.reap(p.pid()), Some(0));
}

#[test]
fn the_load_counts_every_request_of_a_steady_demo_as_ok() {
    let mut p = demo(&[]);
    let (mut pids, health, api) = running(&mut p);
    http::wait_status(health, "/readyz", 200);
    let targets = [
        Target {
            addr: api,
            path: "/pid",
        },
        Target {
            addr: health,
            path: "/readyz",
        },
        Target {
            addr: api,
            path: "/nothing",
        },
    ];
    // Each client stops by itself at its cap.
    let tally = Load::start(&targets, 2, 30).finish();
    assert_eq!(tally.ok, 80, "{tally:#?}");
    assert_eq!(tally.bad_status.get(&404), Some(&40), "{tally:#?}");
    assert_eq!(tally.failures(), 40, "{tally:#?}");
    assert_eq!(tally.pids.keys().collect::<Vec<_>>(), [&(p.pid() as u32)]);
    pids.end(p.pid());
}

/// The demo given `listener` as its socket `api` in the socket-activation format (descriptor 3,
/// `LISTEN_PID` its own, set by the shell it is `exec`'d from), its health endpoint on a port
/// of its own.
fn demo_sharing(listener: &std::net::TcpListener) -> Proc {
    let fd = listener.as_raw_fd();
    let demo = example("demo");
    let script = r#"LISTEN_PID=$$ exec "$0" "$@""#;
    let args = [
        "-c",
        script,
        demo.to_str().unwrap(),
        "--health-addr",
        "127.0.0.1:0",
    ];
    Proc::spawn_with(&"/bin/sh".into(), &args, |command| {
        command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "api");
        let inherit = move || {
            // SAFETY: async-signal-safe calls on descriptors of this (forked) process: the
            // listener's, put (without close-on-exec) at 3.
            let rc = unsafe {
                match fd {
                    3 => libc::fcntl(3, libc::F_SETFD, 0),
                    _ => libc::dup2(fd, 3),
                }
            };
            match rc {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        };
        // SAFETY: `inherit` only makes async-signal-safe calls.
        unsafe { command.pre_exec(inherit) };
    })
}

#[test]
fn of_two_demos_sharing_the_api_socket_the_one_that_closes_loses_no_request() {
    // What an upgrade does to the API, without the runner's part: two processes accept from
    // one socket, and one of them closes (its hand-off, then its drain) under load.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let api = listener.local_addr().unwrap();
    let mut old = demo_sharing(&listener);
    old.wait_for("; running");
    let mut pids = Pids::new(old.pid());
    let targets = [
        Target {
            addr: api,
            path: "/jobs",
        },
        Target {
            addr: api,
            path: "/pid",
        },
    ];
    let load = Load::start(&targets, 2, 100_000);
    let mut new = demo_sharing(&listener);
    pids.track(new.pid());
    new.wait_for("; running");
    drop(listener); // the two demos hold it
    old.signal(libc::SIGTERM);
    old.wait_for("api: stopped accepting on");
    assert_eq!(pids.reap(old.pid()), Some(0));
    assert_eq!(served_by(api), new.pid(), "the other one serves on");
    let tally = load.stop();
    assert_clean(&tally);
    assert_eq!(tally.refused, 0, "{tally:#?}");
    new.signal(libc::SIGTERM);
    assert_eq!(pids.reap(new.pid()), Some(0));
}

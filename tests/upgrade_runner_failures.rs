//! Upgrades in place that fail, end to end, between real processes (the harness, and how the
//! processes of a test are run, watched and killed: [`common::upgrading`]).
//!
//! What is checked: a new process that is never ready (killed at the upgrade timeout,
//! counted, the old one serving throughout and taking the next SIGHUP); one that fails its
//! start (reaped, counted); a SIGTERM to the old process while its new one starts (both end,
//! no orphan); a new process given up on late in its start (it never begins its run phase;
//! the PID file names the old process); and a failed new process leaves the old one's
//! listener non-blocking.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::upgrading::{
    proc_state, serving_with_pid_file, signal, wait_gone, Family, PidFile, Role, REWRITE_BOUND,
    TIMEOUT_MS,
};
use common::WATCHDOG;

/// In a child process started by a test below (or by an upgrade of one): see
/// [`common::upgrading::child`]. Run as a plain test, it does nothing.
#[test]
fn child() {
    common::upgrading::child();
}

/// `/metrics` of the endpoint at `addr`: its line for `lifecycle_upgrades_total` with `outcome`.
fn upgrades_counted(addr: SocketAddr, outcome: &str) -> Option<String> {
    let reply = common::http::get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    let prefix = format!("lifecycle_upgrades_total{{outcome=\"{outcome}\"}} ");
    (reply.body.lines())
        .find(|l| l.starts_with(&prefix))
        .map(str::to_owned)
}

/// 4. A new process never ready within the upgrade timeout (1 s) is killed; the old one logs
///    it, serves `/readyz` on fresh connections throughout, counts it at `/metrics`, and
///    takes the next SIGHUP.
#[test]
fn a_new_process_not_ready_in_time_is_killed_and_the_old_one_serves_on() {
    let mut f = Family::spawn(Role::Hang, &[(TIMEOUT_MS, "1000")]);
    let old = f.first_pid();
    let addr = f.serving(old);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 0")
    );

    let new = f.sighup_upgrade(old);
    let failed = format!("{old} [ERROR] upgrade failed: pid {new} was not ready within 1s");
    let deadline = Instant::now() + WATCHDOG;
    let mut polls = 0;
    let line = loop {
        // Fresh connections, as a load balancer's probes: every one answered by a ready
        // process on the same port.
        let reply = common::http::get(addr, "/readyz");
        assert_eq!(reply.status, 200, "poll {polls}; log:\n{}", f.dump());
        polls += 1;
        // Paced, not to run out of ephemeral ports: this waits for nothing.
        std::thread::sleep(Duration::from_millis(2));
        if let Some(line) = f.poll_for(&failed) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no {failed:?}; log:\n{}",
            f.dump()
        );
    };
    assert!(line.contains("; killed ("), "{line}");
    assert!(line.ends_with("this process goes on serving"), "{line}");
    assert!(
        f.logged(&format!("{new} gate: hanging")),
        "it was in its start"
    );
    assert_eq!(proc_state(new), None, "the new process is gone (reaped)");
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 1")
    );
    assert_eq!(
        upgrades_counted(addr, "handed_over").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"handed_over\"} 0")
    );

    // A second attempt is taken, and fails the same way.
    let second = f.sighup_upgrade(old);
    assert_ne!(second, new);
    f.wait_for(&format!(
        "{old} [ERROR] upgrade failed: pid {second} was not ready within 1s"
    ));
    assert_eq!(proc_state(second), None);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 2")
    );

    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

/// 5. A new process whose start fails exits at once: the old one logs its exit, reaps it (no
///    zombie), counts it, and serves on; its PID file still holds its own id.
#[test]
fn a_new_process_that_fails_its_start_is_reaped_and_counted() {
    let (mut f, pid_file, old, addr) = serving_with_pid_file(Role::Fail, &[]);
    let read = || pid_file.read();
    let new = f.sighup_upgrade(old);
    let line = f.wait_for(&format!("{old} [ERROR] upgrade failed: pid {new} "));
    assert!(
        line.contains(&format!("pid {new} exit status: 1 before it was ready")),
        "{line}"
    );
    assert!(f.logged(&format!("{new} run ended: start failed; success false")));
    // Reaped by the old process, its parent, before it logged the failure: no zombie.
    assert_eq!(proc_state(new), None, "log:\n{}", f.dump());
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 1")
    );
    assert_eq!(read(), Some(format!("{old}\n")), "the old one's still");

    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(read(), None, "removed at the end");
}

/// 6. SIGTERM to the old process while its upgrade's new process is still starting: the old
///    one shuts down cleanly (exit 0), and the new one is killed and reaped before it exits:
///    no orphan left.
#[test]
fn sigterm_during_an_upgrade_ends_both_processes() {
    let mut f = Family::spawn(Role::Hang, &[]);
    let old = f.first_pid();
    f.serving(old);
    let new = f.sighup_upgrade(old);
    f.wait_for(&format!("{new} gate: hanging"));
    // One upgrade at a time.
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: an upgrade is in progress (one at a time)"
    ));
    let began = Instant::now();
    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    f.wait_for(&format!(
        "{old} [INFO] upgrade: given up on: the program is shutting down"
    ));
    assert_eq!(
        wait_gone(new, Duration::from_secs(1)),
        None,
        "reaped by the old process, not left to this one; log:\n{}",
        f.dump()
    );
    assert!(
        began.elapsed() < Duration::from_secs(7),
        "{:?}",
        began.elapsed()
    );
    assert!(
        f.logged(&format!("{old} run ended: signal; success true")),
        "{}",
        f.dump()
    );
}

/// What [`given_up_late`] saw.
struct Late {
    f: Family,
    old: libc::pid_t,
    new: libc::pid_t,
    /// The status of every `/readyz` asked on a fresh connection meanwhile, in order.
    answers: Vec<u16>,
    /// Whether the PID file named the new process at some point.
    named_new: bool,
    /// The PID file's text once the new process is gone.
    file: Option<String>,
    _files: PidFile,
}

/// An upgrade whose new process starts at once, writes its PID file, then waits (at least the
/// check timeout, 1 s) for a poll of its readiness check, which does not answer, past the
/// upgrade timeout (500 ms, so never ready in time, however fast the machine): it is given up
/// on. Asks `/readyz` on fresh connections, and reads the PID file, until it is gone.
fn given_up_late() -> Late {
    let (mut f, pid_file, old, addr) = serving_with_pid_file(Role::Late, &[(TIMEOUT_MS, "500")]);
    let read = || pid_file.read();

    let new = f.sighup_upgrade(old);
    let failed = format!("{old} [ERROR] upgrade failed: pid {new} was not ready within 500ms");
    let deadline = Instant::now() + WATCHDOG;
    let mut named_new = false;
    let mut answers = Vec::new();
    let (mut failed_seen, mut told) = (false, false);
    loop {
        answers.push(common::http::get(addr, "/readyz").status);
        named_new |= read() == Some(format!("{new}\n"));
        // Paced, not to run out of ephemeral ports: this waits for nothing.
        std::thread::sleep(Duration::from_millis(2));
        if !told && f.logged(&format!("{new} [INFO] SIGTERM: shutting down")) {
            told = true;
            // Its check answers from now on: its close does not wait for it.
            f.create("late-go");
        }
        failed_seen = failed_seen || f.poll_for(&failed).is_some();
        if failed_seen && proc_state(new).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "log:\n{}", f.dump());
    }
    // The old process may write its id again just after it logs the failure: waited for, a
    // while (a bound, not a speed requirement: the step takes microseconds).
    let named_old = Some(format!("{old}\n"));
    let until = Instant::now() + REWRITE_BOUND;
    let mut file = read();
    while file != named_old && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        file = read();
    }
    Late {
        f,
        old,
        new,
        answers,
        named_new,
        file,
        _files: pid_file,
    }
}

impl Late {
    /// Its SIGTERM ends the old process cleanly.
    fn end(mut self) {
        signal(self.old, libc::SIGTERM);
        let status = self.f.wait_first();
        assert!(status.success(), "{status}; log:\n{}", self.f.dump());
    }
}

/// 7. Once a new process that wrote its PID file is given up on and gone, the PID file should
///    name the old process, which serves on (the supervisor's `kill -HUP $(cat PATH)` needs
///    it). Its verdict needs the new process to have written the file before it was given up
///    on (500 ms): on a machine too slow for that, it passes without showing anything.
#[test]
fn a_new_process_given_up_on_after_writing_the_pid_file_leaves_the_old_one_named() {
    let mut late = given_up_late();
    let (old, new, named_new) = (late.old, late.new, late.named_new);
    assert_eq!(
        late.file,
        Some(format!("{old}\n")),
        "the PID file names the process that serves (it named pid {new} meanwhile: \
         {named_new}); log:\n{}",
        late.f.dump()
    );
    late.end();
}

/// 8. A new process given up on (SIGTERM at the upgrade timeout) before its run phase never
///    begins it: it never accepts on the socket it shares with the old process, never tells
///    the old one it serves; every fresh connection is answered ready, by the old process.
#[test]
fn a_new_process_given_up_on_never_begins_its_run_phase() {
    let mut late = given_up_late();
    let (old, new) = (late.old, late.new);
    let began = [
        format!("{new} serving at"),
        format!("{new} [INFO] upgrade: told pid {old} that this process serves"),
    ];
    let log = late.f.dump();
    for line in &began {
        assert!(!log.contains(line.as_str()), "{line:?}; log:\n{log}");
    }
    let not_ready: Vec<(usize, u16)> = (late.answers.iter().copied().enumerate())
        .filter(|(_, s)| *s != 200)
        .collect();
    assert!(
        not_ready.is_empty(),
        "fresh connections answered not ready, (index, status) of {}: {not_ready:?}; log:\n{log}",
        late.answers.len()
    );
    late.end();
}

/// Whether descriptor `fd` of process `pid` is non-blocking (`O_NONBLOCK` among the flags its
/// `/proc/PID/fdinfo` shows).
fn non_blocking(pid: libc::pid_t, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = (info.lines())
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| i64::from_str_radix(v.trim(), 8).unwrap())
        .expect("a flags line");
    flags & i64::from(libc::O_NONBLOCK) != 0
}

/// 9. A socket handed over by an upgrade shares its file status flags, `O_NONBLOCK` among
///    them, with the old process, which still accepts on it. A new process that takes `api` with `systemd::listener` and fails before it sets it
///    non-blocking again should leave the old process's listener as the old process set it:
///    non-blocking. Blocking, an accept loop that looks at its stop signal between
///    `WouldBlock`s waits in `accept` instead, until a client comes (its close times out).
#[test]
fn a_failed_upgrade_leaves_the_old_listener_non_blocking() {
    let mut f = Family::spawn(Role::Fail, &[]);
    let old = f.first_pid();
    let (fd, api) = f.api_fd(old);
    f.serving(old);
    assert!(non_blocking(old, fd), "set so by the old process");
    let new = f.sighup_upgrade(old);
    assert_eq!(f.api(new), api, "the new process took it");
    f.wait_for(&format!("{old} [ERROR] upgrade failed: pid {new} "));
    assert!(
        non_blocking(old, fd),
        "the old process's api listener was made blocking by the new one; log:\n{}",
        f.dump()
    );
    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

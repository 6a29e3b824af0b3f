//! The notifier as systemd sees it: a real `AF_UNIX` datagram socket, bound here at a path or
//! an abstract name (`common/notify.rs`), as `NOTIFY_SOCKET` of a child process (this test binary again, running
//! only [`child`]), whose datagrams are received and checked exactly.
//!
//! A child process, because the notifier reads its environment once per process: each case
//! gets a process whose environment was set before it started, as systemd sets it.

#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::notify::NotifySocket as Receiver;
use common::process::Proc;
use common::WATCHDOG;
use lifecycle::systemd::Notifier;

/// The variable that makes [`child`] do something, and says what.
const ROLE: &str = "LIFECYCLE_TEST_NOTIFY_ROLE";
/// How many notifications the flood sends.
const FLOOD: u32 = 1000;

/// In a child process started by a test below: sends what its role says through the public
/// API, checking what the API answers. Run as a plain test, it does nothing.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let n = Notifier::get();
    assert!(std::ptr::eq(n, Notifier::get()), "one notifier per process");
    match role.as_str() {
        "sequence" => {
            assert!(n.is_enabled());
            assert!(n.status("starting db (1/2)"));
            assert!(n.extend_timeout(Duration::from_millis(2500)));
            assert!(n.extend_timeout(Duration::MAX));
            assert!(n.ready());
            assert!(n.status(&format!("watchdog {:?}", n.watchdog_interval())));
            assert_eq!(n.watchdog(), n.watchdog_interval().is_some());
            assert!(n.main_pid(std::process::id()));
            assert!(n.status("two\nlines"));
            assert!(n.shutting_down());
            assert_eq!(n.dropped(), 0);
        }
        "flood" => {
            let (tx, logged) = crossbeam_channel::unbounded();
            log::set_boxed_logger(Box::new(Lines(tx))).unwrap();
            log::set_max_level(log::LevelFilter::Debug);
            // The parent reads nothing meanwhile: its queue fills, and each send must still
            // return at once.
            let began = Instant::now();
            let sent = (0..FLOOD).filter(|i| n.status(&i.to_string())).count() as u64;
            let took = began.elapsed();
            assert!(n.dropped() > 0, "the queue never filled");
            assert_eq!((n.sent(), sent + n.dropped()), (sent, u64::from(FLOOD)));
            eprintln!("flood: sent {sent} dropped {} in {took:?}", n.dropped());
            // The first drop is logged at warn level (through the crate's log thread).
            let deadline = Instant::now() + WATCHDOG;
            loop {
                let (level, line) = (logged.recv_deadline(deadline))
                    .expect("the first drop logged within the watchdog");
                if line.contains("systemd: notification STATUS dropped") {
                    assert_eq!(level, log::Level::Warn, "{line}");
                    break;
                }
            }
        }
        "absent" => {
            assert!(!n.is_enabled());
            assert!(!n.ready() && !n.status("x") && !n.watchdog() && !n.shutting_down());
            assert!(!n.extend_timeout(Duration::from_secs(1)) && !n.main_pid(1));
            assert_eq!(n.watchdog_interval(), None);
            assert_eq!((n.sent(), n.dropped()), (0, 0));
        }
        other => panic!("unknown role {other:?}"),
    }
    eprintln!("child done");
}

/// A logger that hands each line to a channel.
struct Lines(crossbeam_channel::Sender<(log::Level, String)>);

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let _ = self.0.send((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

/// This test binary, run as [`child`] with `role`, `env` set and `NOTIFY_SOCKET`,
/// `WATCHDOG_USEC` and `WATCHDOG_PID` unset unless `env` sets them. With `own_pid`, it
/// runs under `sh`, which sets `WATCHDOG_PID` to its own id and then becomes the child with
/// `exec`, keeping that id, as systemd sets it to the service's.
fn spawn_child(role: &str, env: &[(&str, &str)], own_pid: bool) -> Proc {
    let exe = std::env::current_exe().expect("test binary");
    let exe = exe.to_str().unwrap().to_owned();
    let test_args = ["--exact", "child", "--nocapture", "--test-threads=1"];
    let configure = |c: &mut Command| {
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            c.env_remove(var);
        }
        c.env(ROLE, role).envs(env.iter().copied());
    };
    if own_pid {
        let mut args = vec!["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", exe.as_str()];
        args.extend(test_args);
        Proc::spawn_with(&PathBuf::from("/bin/sh"), &args, configure)
    } else {
        Proc::spawn_with(&PathBuf::from(&exe), &test_args, configure)
    }
}

/// Waits for the child to pass and exit.
#[track_caller]
fn passes(mut p: Proc) -> Vec<String> {
    p.wait_for("child done");
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    log
}

/// The datagrams of the `sequence` role, in order, with the watchdog at `interval`.
#[track_caller]
fn receives_the_sequence(r: &Receiver, p: Proc, interval: Option<Duration>) {
    let pid = p.pid();
    let mut expected = vec![
        "STATUS=starting db (1/2)".to_owned(),
        "EXTEND_TIMEOUT_USEC=2500000".to_owned(),
        format!("EXTEND_TIMEOUT_USEC={}", u64::MAX),
        "READY=1".to_owned(),
        format!("STATUS=watchdog {interval:?}"),
    ];
    if interval.is_some() {
        expected.push("WATCHDOG=1".to_owned());
    }
    expected.extend([
        format!("MAINPID={pid}"),
        "STATUS=two lines".to_owned(),
        "STOPPING=1".to_owned(),
    ]);
    let got: Vec<String> = expected.iter().map(|_| r.next()).collect();
    assert_eq!(got, expected);
    passes(p);
    r.assert_empty();
}

#[test]
fn a_path_socket_receives_the_exact_notifications_with_the_watchdog_for_any_pid() {
    let r = Receiver::at_path();
    let env = [
        ("NOTIFY_SOCKET", r.value.as_str()),
        ("WATCHDOG_USEC", "3000000"),
    ];
    let p = spawn_child("sequence", &env, false);
    receives_the_sequence(&r, p, Some(Duration::from_millis(1500)));
}

#[test]
fn an_abstract_socket_receives_them_with_the_watchdog_for_this_pid() {
    let r = Receiver::abstract_name();
    let env = [
        ("NOTIFY_SOCKET", r.value.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    let p = spawn_child("sequence", &env, true);
    receives_the_sequence(&r, p, Some(Duration::from_millis(500)));
}

#[test]
fn a_watchdog_for_another_process_is_off() {
    let r = Receiver::abstract_name();
    let env = [
        ("NOTIFY_SOCKET", r.value.as_str()),
        ("WATCHDOG_USEC", "1000000"),
        ("WATCHDOG_PID", "1"),
    ];
    let p = spawn_child("sequence", &env, false);
    receives_the_sequence(&r, p, None);
}

#[test]
fn a_full_queue_drops_notifications_without_blocking() {
    let r = Receiver::at_path();
    let p = spawn_child("flood", &[("NOTIFY_SOCKET", r.value.as_str())], false);
    // Nothing is read until the child has exited: had a send blocked, it would not have.
    let log = passes(p);
    let line = (log.iter().find(|l| l.starts_with("flood: sent ")))
        .unwrap_or_else(|| panic!("no flood line; log:\n{}", log.join("\n")));
    let sent: u32 = line.split(' ').nth(2).unwrap().parse().unwrap();
    assert!(sent > 0 && sent < FLOOD, "{line}");
    // What was sent is what the queue took, in order; the rest was dropped, not retried.
    for i in 0..sent {
        assert_eq!(r.next(), format!("STATUS={i}"));
    }
    r.assert_empty();
}

#[test]
fn without_notify_socket_nothing_is_sent() {
    passes(spawn_child(
        "absent",
        &[("WATCHDOG_USEC", "1000000")],
        false,
    ));
}

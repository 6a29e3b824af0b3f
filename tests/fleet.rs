//! `examples/fleet.rs` as a real child process: 50 services, `ready` on standard output once
//! they run, a real SIGTERM, exit code 0; and its usage error.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::process::{example, run_to_end};
use common::WATCHDOG;

#[test]
fn fifty_services_print_ready_once_and_exit_0_on_sigterm() {
    let mut child = Command::new(example("fleet"))
        .args(["--services", "50"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleet");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines, rx) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let first = rx.recv_timeout(WATCHDOG);
    if !matches!(&first, Ok(line) if line.contains("ready")) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("watchdog: no `ready` line on stdout, got {first:?}");
    }
    // SAFETY: kill(2) with the pid of our child, not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");

    // The child closes its stdout as it exits; the watchdog kills it if it does not.
    let rest: Vec<String> = match reader_end(&rx) {
        Some(rest) => rest,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: fleet did not exit after SIGTERM");
        }
    };
    let status = child.wait().expect("wait for fleet");
    reader.join().expect("stdout reader");
    let stderr = log.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(rest.is_empty(), "`ready` is the only stdout line: {rest:?}");
    assert_eq!(stderr, "", "nothing at warn or above on a clean run");
}

/// The lines after the first, until stdout closes; `None` at the watchdog.
fn reader_end(rx: &crossbeam_channel::Receiver<String>) -> Option<Vec<String>> {
    let deadline = std::time::Instant::now() + WATCHDOG;
    let mut rest = Vec::new();
    loop {
        match rx.recv_deadline(deadline) {
            Ok(line) => rest.push(line),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Some(rest),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
        }
    }
}

#[test]
fn help_lists_the_flags_and_a_usage_error_exits_2() {
    let help = run_to_end(&example("fleet"), &["--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    for flag in ["--services N", "--chain", "-h, --help"] {
        assert!(help.stdout.contains(flag), "--help lists {flag}: {help:?}");
    }
    for args in [&["--bogus"][..], &["--services", "0"], &["--services"]] {
        let out = run_to_end(&example("fleet"), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            out.stdout, "",
            "{args:?}: a usage error prints nothing on stdout"
        );
    }
}

//! The demo as a real child process, with real signals: exit codes, close order, rollback, a
//! second signal during a hung shutdown, a port already taken, and a clean run's log. Its
//! probes are in `process_probes.rs`, its flags in `process_cli.rs`.

mod common;
mod demo;

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;

use common::http;
use common::process::services_in;
use demo::{api_addr, demo, health_addr};
use lifecycle::Runner;

#[test]
fn sigterm_after_ready_exits_0_and_closes_in_reverse_order() {
    let mut p = demo(&[]);
    p.wait_for("; running");
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    let started = services_in(&log, ": starting");
    let closing = services_in(&log, ": closing");
    assert_eq!(started, ["pool", "worker", "api"]);
    // The services in reverse, then the health endpoint and its checker, last.
    assert_eq!(
        closing,
        ["api", "worker", "pool", "health endpoint", "health checker"]
    );
    assert!(log.iter().any(|l| l.contains("shut down cleanly (signal)")));
}

#[test]
fn sigint_works_like_sigterm() {
    let mut p = demo(&[]);
    p.wait_for("; running");
    p.signal(libc::SIGINT);
    let (status, _) = p.wait_exit();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_signal_during_a_hung_shutdown_exits_at_once_with_130() {
    let mut p = demo(&["--hang-close", "worker", "--close-timeout", "600"]);
    p.wait_for("; running");
    p.signal(libc::SIGINT);
    p.wait_for("worker: close hangs");
    p.signal(libc::SIGINT);
    let (status, log) = p.wait_exit();
    assert_eq!(
        status.code(),
        Some(Runner::SECOND_SIGNAL_EXIT_CODE),
        "signal: {:?}; log:\n{}",
        status.signal(),
        log.join("\n")
    );
    assert!(log.iter().any(|l| l.contains("second termination signal")));
}

#[test]
fn a_service_that_fails_to_start_gives_exit_1_and_is_named() {
    let p = demo(&["--fail", "worker"]);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        log.iter()
            .any(|l| l.contains("worker: start failed: injected start failure")),
        "log:\n{}",
        log.join("\n")
    );
    // The pool, started before, was closed; the api never started.
    assert_eq!(
        services_in(&log, ": closing"),
        ["pool", "health endpoint", "health checker"]
    );
    assert!(services_in(&log, ": starting").iter().all(|s| s != "api"));
}

#[test]
fn a_signal_during_startup_rolls_back_cleanly() {
    let mut p = demo(&["--slow-start", "api"]);
    p.wait_for("api: slow start");
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert_eq!(
        services_in(&log, ": closing"),
        ["worker", "pool", "health endpoint", "health checker"]
    );
    assert!(log.iter().any(|l| l.contains("shut down cleanly (signal)")));
}

#[test]
fn a_hung_close_is_abandoned_at_its_timeout_and_the_rest_still_close() {
    let mut p = demo(&["--hang-close", "worker", "--close-timeout", "0.2"]);
    p.wait_for("; running");
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(log
        .iter()
        .any(|l| l.contains("worker: close timed out after 200ms")));
    assert!(log.iter().any(|l| l.contains("pool: closed in")));
}

#[test]
fn the_api_s_bind_error_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let (status, log) = demo(&["--api-addr", &addr]).wait_exit();
    assert_eq!(status.code(), Some(1), "log:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("api: start failed")
            && l.contains(&format!("cannot listen on {addr}: "))),
        "log:\n{}",
        log.join("\n")
    );
    // The pool and the worker, started before, were closed.
    assert_eq!(
        services_in(&log, ": closing"),
        ["worker", "pool", "health endpoint", "health checker"]
    );
    drop(taken);
}

/// Whether `line` begins with env_logger's timestamp to the millisecond, as in
/// `[2026-12-01T22:13:05.958Z INFO  demo] ...`.
fn has_millisecond_timestamp(line: &str) -> bool {
    let pattern = "[dddd-dd-ddTdd:dd:dd.dddZ ";
    line.len() > pattern.len()
        && line.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

#[test]
fn a_clean_run_logs_no_failure_and_stamps_lines_to_the_millisecond() {
    let mut p = demo(&[]);
    let health = health_addr(&mut p);
    let api = api_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(health, "/readyz", 200);
    assert_eq!(http::get(api, "/readyz").status, 200);
    assert_eq!(http::get(api, "/jobs").status, 200);
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    let all = log.join("\n");
    assert_eq!(status.code(), Some(0), "log:\n{all}");
    assert!(
        log.iter().any(|l| l.contains("shut down cleanly (signal)")),
        "{all}"
    );
    for line in &log {
        assert!(
            has_millisecond_timestamp(line),
            "not a millisecond timestamp: {line}"
        );
    }
    // Nothing failed: no service is said to fail before it has started, the shutdown's
    // readiness change is not a failure ("runner: ready failed"), and nothing warns.
    let alarming: Vec<&String> = log
        .iter()
        .filter(|l| {
            ["failing", "failed", "runner: ready", " WARN ", " ERROR "]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(alarming.is_empty(), "{alarming:#?}\nlog:\n{all}");
}

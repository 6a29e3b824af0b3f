//! The demo as a real child process, with real signals: exit codes, close order, rollback, and
//! a second signal during a hung shutdown.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;

use common::process::{example, services_in, Proc};
use common::{http, prom};
use lifecycle::Runner;

fn demo(args: &[&str]) -> Proc {
    let mut all = vec!["--api-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::spawn(&example("demo"), &all)
}

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
    let mut p = demo(&["--hang-close", "worker", "--stop-timeout", "600"]);
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
    let mut p = demo(&["--hang-close", "worker", "--stop-timeout", "0.2"]);
    p.wait_for("; running");
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(log
        .iter()
        .any(|l| l.contains("worker: close timed out after 200ms")));
    assert!(log.iter().any(|l| l.contains("pool: closed in")));
}

/// The health endpoint's address, from the line it logs when it starts listening.
fn health_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_for("health endpoint: listening on http://");
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

#[test]
fn during_the_termination_delay_readiness_fails_and_liveness_passes() {
    // The delay is only a window to look through; the test waits for events, not for time.
    let mut p = demo(&["--termination-delay", "30", "--shutdown-timeout", "60"]);
    let addr = health_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    p.signal(libc::SIGTERM);
    p.wait_for("draining for");
    let ready = http::get(addr, "/readyz?verbose");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("[-]runner failed"), "{}", ready.body);
    assert_eq!(http::get(addr, "/livez").status, 200);
    // Nothing has been closed yet: the API's readiness still passes on its own.
    assert_eq!(http::get(addr, "/readyz/api").status, 200);
    // A second signal ends the wait at once.
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(Runner::SECOND_SIGNAL_EXIT_CODE));
    assert!(services_in(&log, ": closing").is_empty(), "{log:?}");
}

#[test]
fn probes_answer_from_the_start_and_pass_once_everything_is_ready() {
    let mut p = demo(&["--slow-start", "api"]);
    let addr = health_addr(&mut p);
    p.wait_for("api: slow start");
    // Starting: not ready, but alive.
    let r = http::get(addr, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["checks"]["runner:ready"][0]["status"], "fail");
    assert_eq!(http::get(addr, "/livez").status, 200);
    p.signal(libc::SIGTERM);
    let (status, _) = p.wait_exit();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_demo_exposes_its_own_metrics_and_the_lifecycle_s() {
    let mut p = demo(&[]);
    let addr = health_addr(&mut p);
    let line = p.wait_for("api: listening on http://");
    let api: SocketAddr = line.rsplit("http://").next().unwrap().parse().unwrap();
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    assert_eq!(http::get(api, "/jobs").status, 200);
    assert_eq!(http::get(api, "/nothing").status, 404);

    let reply = http::get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    if let Some(families) = prom::parse("prometheus", &reply.body) {
        let v = |name: &str, labels: &[(&str, &str)]| prom::value(&families, name, labels);
        assert_eq!(
            v(
                "demo_api_requests_total",
                &[("path", "/jobs"), ("status", "200")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "demo_api_requests_total",
                &[("path", "other"), ("status", "404")]
            ),
            Some(1.0)
        );
        assert!(v("demo_worker_jobs_total", &[]).is_some());
        assert!(v("demo_worker_job_failures_total", &[]).is_some());
        assert_eq!(v("pool_size", &[]), Some(4.0));
        assert!(v("pool_idle_connections", &[]).is_some_and(|n| (0.0..=4.0).contains(&n)));
        for service in ["pool", "worker", "api"] {
            assert_eq!(
                v(
                    "lifecycle_service_state",
                    &[("service", service), ("state", "started")]
                ),
                Some(1.0),
                "{service}"
            );
        }
    }
    p.signal(libc::SIGTERM);
    let (status, _) = p.wait_exit();
    assert_eq!(status.code(), Some(0));
}

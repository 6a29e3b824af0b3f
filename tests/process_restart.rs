//! The demo's restartable worker as a real child process: `--crash worker` makes each instance
//! fail after a few seconds, and the program stays up and ready, restarting it; `--crash-loop
//! worker` makes every instance fail at once, and the program spends its restart budget and
//! exits with `Runner::RESTART_BUDGET_EXIT_CODE`. Every wait is for a log line or the exit,
//! each bounded by the watchdog.

mod common;
mod demo;

use common::http;
use common::process::{example, run_to_end};
use demo::{demo, health_addr};
use lifecycle::Runner;

#[test]
fn a_worker_that_crashes_now_and_then_is_restarted_and_the_program_stays_ready() {
    let mut p = demo(&["--crash", "worker"]);
    let health = health_addr(&mut p);
    p.wait_for("; running");
    p.wait_for("worker: restarting in");
    p.wait_for("worker: restarted, ready in");
    // Ready again (the worker's restart is over): the endpoint says so.
    http::wait_status(health, "/readyz", 200);
    let metrics = http::get(health, "/metrics").body;
    assert!(
        metrics.contains("lifecycle_service_restarts_total{service=\"worker\"} "),
        "{metrics}"
    );
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("summary: worker: closed") && l.contains("restarted")),
        "log:\n{}",
        log.join("\n")
    );
}

#[test]
fn a_worker_that_fails_at_once_every_time_spends_the_budget_and_exits_75() {
    let mut p = demo(&["--crash-loop", "worker"]);
    // One line per restart, each within the watchdog, until the budget is spent (10 in 60 s,
    // with the default backoff: about 25 s).
    for _ in 0..10 {
        p.wait_for("worker: restarting in");
    }
    p.wait_for("restart budget is spent");
    let (status, log) = p.wait_exit();
    assert_eq!(
        status.code(),
        Some(Runner::RESTART_BUDGET_EXIT_CODE),
        "log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("(restart budget spent)")),
        "log:\n{}",
        log.join("\n")
    );
}

#[test]
fn a_sigterm_during_a_backoff_wait_ends_it_and_nothing_restarts() {
    let mut p = demo(&["--crash-loop", "worker"]);
    // By the fifth restart the backoff is over a second (100 ms doubling, jittered down to
    // 80 %); once the failed instance has closed, the program waits it out, and the signal
    // comes then.
    for _ in 0..5 {
        p.wait_for("worker: restarting in");
        p.wait_for("worker: the failed instance closed in");
    }
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    let shown = log.join("\n");
    assert_eq!(status.code(), Some(0), "log:\n{shown}");
    // From the signal on, nothing restarts: the wait ends and the program shuts down.
    let after: Vec<&String> = (log.iter())
        .skip_while(|l| !l.contains("SIGTERM: shutting down"))
        .collect();
    assert!(!after.is_empty(), "log:\n{shown}");
    assert!(
        !after
            .iter()
            .any(|l| l.contains("worker: starting a fresh instance")),
        "log:\n{shown}"
    );
    assert!(
        log.iter().any(|l| l.contains("shut down cleanly (signal)")),
        "log:\n{shown}"
    );
}

#[test]
fn only_the_worker_can_crash_the_others_are_a_usage_error() {
    let out = run_to_end(&example("demo"), &["--crash", "api"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("--crash \"api\": only the worker is restartable"),
        "{out:?}"
    );
}

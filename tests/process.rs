//! The demo as a real child process, with real signals: exit codes, close order, rollback, a
//! second signal during a hung shutdown; its flags as the README lists them, its usage errors,
//! a clean run's log, and its two ports answering the health routes alike.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;

use common::process::{example, run_to_end, services_in, Proc};
use common::{eventually, http, prom};
use lifecycle::Runner;

/// The demo with both ports on `127.0.0.1:0`, then `args` (a flag given twice: the last wins).
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

/// The health endpoint's address, from the line it logs when it starts listening.
fn health_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_for("health endpoint: listening on http://");
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

/// The API's address, from the line it logs when it starts listening (after the health
/// endpoint's: read that one first).
fn api_addr(p: &mut Proc) -> SocketAddr {
    let line = p.wait_for("api: listening on http://");
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

#[test]
fn during_the_termination_delay_readiness_fails_and_liveness_passes() {
    // The delay is only a window to look through; the test waits for events, not for time.
    let mut p = demo(&["--termination-delay", "30", "--shutdown-timeout", "60"]);
    let addr = health_addr(&mut p);
    let api = api_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    p.signal(libc::SIGTERM);
    p.wait_for("draining for");
    let ready = http::get(addr, "/readyz?verbose");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("[-]runner failed"), "{}", ready.body);
    assert_eq!(http::get(addr, "/livez").status, 200);
    // The API still runs, and its port says the same.
    assert_eq!(http::get(api, "/readyz").status, 503);
    assert_eq!(http::get(api, "/livez").status, 200);
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
    let api = api_addr(&mut p);
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

/// The rows of the README's table of the demo's flags: each row's flags (`--fail` of
/// `` `--fail NAME` ``; `-h` and `--help` of `` `-h`, `--help` ``) and its default (empty if none).
fn readme_flags() -> Vec<(Vec<String>, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## The demo\n")
        .nth(1)
        .expect("README.md has a section \"## The demo\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<(Vec<String>, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row of flag, default, what: {row}");
            let flags = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|f| f.split(' ').next().unwrap_or(f).to_owned())
                .collect();
            (flags, cells[1].trim_matches('`').to_owned())
        })
        .collect();
    assert!(rows.len() >= 9, "the README's table of flags: {rows:?}");
    rows
}

/// The words of a line of `--help`, flags among them (`-h, --help` is two).
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn help_prints_every_flag_of_the_readme_with_its_default() {
    let out = run_to_end(&example("demo"), &["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stderr, "", "--help writes to standard output only");
    assert!(out.stdout.starts_with("usage: demo "), "{}", out.stdout);
    let flags = readme_flags();
    for (row, default) in &flags {
        let line = out
            .stdout
            .lines()
            .find(|l| row.iter().all(|f| words(l).contains(&f.as_str())))
            .unwrap_or_else(|| panic!("--help has no line for {row:?}:\n{}", out.stdout));
        if !default.is_empty() {
            assert!(
                line.ends_with(&format!("[default: {default}]")),
                "--help says another default than the README's {default:?} for {row:?}: {line}"
            );
        }
    }
    // And the other way: every flag that --help describes is in the README.
    let documented: Vec<&String> = flags.iter().flat_map(|(row, _)| row).collect();
    for line in out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
    {
        let flag = words(line)[0];
        assert!(
            documented.iter().any(|f| *f == flag),
            "--help describes {flag}, the README's table does not: {line}"
        );
    }
    assert_eq!(run_to_end(&example("demo"), &["-h"]).stdout, out.stdout);
}

/// Runs the demo with `args`, which must be a usage error: exit code 2, no panic, the usage line,
/// and a message with every one of `named`; returns its standard error.
#[track_caller]
fn usage_error(args: &[&str], named: &[&str]) -> String {
    let out = run_to_end(&example("demo"), args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    assert!(
        out.stderr.contains("\nusage: demo "),
        "{args:?}: {}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "{args:?}");
    let message = out.stderr.lines().next().unwrap_or_default();
    for name in named {
        assert!(
            message.contains(name),
            "{args:?}: no {name:?} in {message:?}"
        );
    }
    out.stderr
}

#[test]
fn an_unknown_service_or_a_bad_duration_is_a_usage_error() {
    usage_error(
        &["--fail", "nosuch"],
        &["--fail", "nosuch", "pool", "worker", "api"],
    );
    usage_error(
        &["--hang-close", "Pool"],
        &["--hang-close", "Pool", "pool", "worker", "api"],
    );
    // Too large for a `Duration`, negative, not a number, NaN.
    for bad in ["1e30", "-1", "abc", "NaN"] {
        usage_error(&["--close-timeout", bad], &["--close-timeout", bad]);
    }
    usage_error(&["--shutdown-timeout=inf"], &["--shutdown-timeout", "inf"]);
    usage_error(&["--close-timeout"], &["--close-timeout"]);
    usage_error(&["--stop-timeout", "1"], &["--stop-timeout"]);
    usage_error(&["--api-addr", "localhost"], &["--api-addr", "localhost"]);
}

#[test]
fn a_host_name_works_as_the_health_address() {
    if ("localhost", 0)
        .to_socket_addrs()
        .map_or(true, |mut a| a.next().is_none())
    {
        eprintln!("skipped: `localhost` does not resolve on this machine");
        return;
    }
    let mut p = demo(&["--health-addr", "localhost:0"]);
    let addr = health_addr(&mut p);
    assert!(addr.ip().is_loopback(), "{addr}");
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
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

/// Asks `path` of both ports; returns the health endpoint's answer once both answer the same
/// status, content type and body.
///
/// Both render the checker's cached snapshot, which every poll (each second) replaces, with
/// new times in the bodies: a pair asked across a poll can differ. So a pair that differs is
/// asked again, until one matches within the watchdog; every pair that differs is printed.
#[track_caller]
fn alike(health: SocketAddr, api: SocketAddr, path: &str) -> http::Reply {
    let mut last = None;
    eventually(&format!("{path} answers alike on both ports"), || {
        let (h, a) = (http::get(health, path), http::get(api, path));
        let same = h.status == a.status
            && h.header("content-type") == a.header("content-type")
            && h.body == a.body;
        if !same {
            eprintln!(
                "{path}: the health port's answer ({} {:?}) and the API's ({} {:?}) differ",
                h.status, h.body, a.status, a.body
            );
        }
        last = Some(h);
        same
    });
    last.expect("an answer")
}

/// The names of the families of a `/metrics` answer (Python's parser; the `# TYPE` lines where
/// it is skipped on purpose).
fn family_names(body: &str) -> BTreeSet<String> {
    match prom::parse("prometheus", body) {
        Some(families) => families.into_iter().map(|f| f.name).collect(),
        None => body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|t| t.split(' ').next())
            .map(str::to_owned)
            .collect(),
    }
}

#[test]
fn the_health_port_and_the_api_s_answer_the_health_routes_alike() {
    let mut p = demo(&[]);
    let health = health_addr(&mut p);
    let api = api_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(health, "/readyz", 200);
    for path in [
        "/readyz",
        "/livez",
        "/healthz",
        "/readyz?verbose",
        "/readyz/pool",
    ] {
        let answer = alike(health, api, path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    assert_eq!(http::get(api, "/readyz/nosuch").status, 404);
    assert_eq!(http::get(api, "/jobs").status, 200);

    let (h, a) = (http::get(health, "/metrics"), http::get(api, "/metrics"));
    assert_eq!((h.status, a.status), (200, 200));
    assert_eq!(h.header("content-type"), a.header("content-type"));
    let names = family_names(&h.body);
    assert!(names.contains("lifecycle_service_state"), "{names:?}");
    assert!(names.contains("demo_worker_jobs"), "{names:?}");
    assert_eq!(
        names,
        family_names(&a.body),
        "/metrics: health port, API port"
    );

    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
}

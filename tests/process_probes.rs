//! The demo's probes, as a real child process with real signals: what they answer from the
//! start, during the termination delay (`/livez` and `/healthz` pass, `/readyz` fails), and
//! once its API can no longer accept connections (its readiness fails); its metrics; and its
//! two ports answering the health routes alike.

mod common;
mod demo;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::process::services_in;
use common::{eventually, http, prom, WATCHDOG};
use demo::{api_addr, demo, demo_with, health_addr};
use lifecycle::Runner;

#[test]
fn during_the_termination_delay_readyz_fails_and_livez_and_healthz_pass() {
    // The delay is only a window to look through; the test waits for events, not for time.
    let mut p = demo(&["--termination-delay", "30", "--shutdown-timeout", "60"]);
    let addr = health_addr(&mut p);
    let api = api_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    http::wait_status(addr, "/healthz", 200);
    p.signal(libc::SIGTERM);
    p.wait_for("draining for");
    let ready = http::get(addr, "/readyz?verbose");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("[-]runner failed"), "{}", ready.body);
    assert_eq!(http::get(addr, "/livez").status, 200);
    // kube-apiserver's semantics: only /readyz counts the runner's traffic gate, so a liveness
    // probe pointed at /healthz does not kill a draining program.
    let health = http::get(addr, "/healthz?verbose");
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(!health.body.contains("runner"), "{}", health.body);
    assert_eq!(http::get(addr, "/healthz").json()["status"], "pass");
    assert_eq!(http::get(addr, "/healthz/runner").status, 404);
    assert_eq!(http::get(addr, "/readyz/runner").status, 503);
    // The API still runs, and its port says the same.
    assert_eq!(http::get(api, "/readyz").status, 503);
    assert_eq!(http::get(api, "/livez").status, 200);
    assert_eq!(http::get(api, "/healthz").status, 200);
    // Nothing has been closed yet: the API's readiness still passes on its own.
    assert_eq!(http::get(addr, "/readyz/api").status, 200);
    // A second signal ends the wait at once.
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(Runner::SECOND_SIGNAL_EXIT_CODE));
    assert!(services_in(&log, ": closing").is_empty(), "{log:?}");
}

/// The demo's limit on open file descriptors in
/// [`readiness_follows_the_api_once_it_runs_out_of_file_descriptors`]: room for its own (about
/// ten) and a few dozen connections.
const FD_LIMIT: libc::rlim_t = 64;

/// Sets the child's soft limit on open file descriptors to `limit` (at most its hard limit),
/// in the child, before it runs the program.
fn fd_limit(limit: libc::rlim_t) -> impl FnOnce(&mut Command) {
    move |command| {
        let set = move || {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit(2) and setrlimit(2) only read and write `rl`; both are
            // async-signal-safe, as code between fork and exec must be.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
                    return Err(io::Error::last_os_error());
                }
                rl.rlim_cur = limit.min(rl.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: `set` allocates nothing, takes no lock and calls only async-signal-safe
        // functions.
        unsafe { command.pre_exec(set) };
    }
}

/// Asks `HEAD /livez` on `stream`, kept alive, and reads the answer's head (an answer to `HEAD`
/// has no body); `false` if the connection ends first.
fn answered(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"HEAD /livez HTTP/1.1\r\nHost: test\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return false,
            Ok(_) => head.push(byte[0]),
            Err(e) if http::is_reset(&e) => return false,
            Err(e) => panic!("reading the API's answer (watchdog {WATCHDOG:?}): {e}"),
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    true
}

/// Opens connections to the API one at a time, each kept open once it is answered, until one
/// is not: refused, or closed unanswered. Returns the ones answered, still open.
#[track_caller]
fn hold_connections_until_refused(api: SocketAddr, most: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    while held.len() < most {
        let Ok(mut stream) = TcpStream::connect(api) else {
            return held;
        };
        stream.set_read_timeout(Some(WATCHDOG)).unwrap();
        stream.set_write_timeout(Some(WATCHDOG)).unwrap();
        if !answered(&mut stream) {
            return held;
        }
        held.push(stream);
    }
    panic!("the API still accepts after {most} connections: the descriptor limit did not apply");
}

#[test]
fn readiness_follows_the_api_once_it_runs_out_of_file_descriptors() {
    // Each connection that tiny_http accepts holds two of the demo's descriptors (the socket
    // and a clone of it) while it is open. Of two limits one apart, one leaves no descriptor
    // for the accept after the last connection it can hold (the accept fails with `EMFILE`),
    // the other a single one (the accept succeeds, and the clone fails: tiny_http panics).
    // Either way tiny_http's accept loop ends for good and closes its listening socket.
    for limit in [FD_LIMIT, FD_LIMIT + 1] {
        readiness_follows_the_api_with(limit);
    }
}

/// The demo, limited to `limit` open file descriptors, its API's connections held open until
/// it cannot accept another: the API's readiness then fails, and the demo shuts down.
fn readiness_follows_the_api_with(limit: libc::rlim_t) {
    // The delay is a window to look through.
    let args = ["--termination-delay", "60", "--shutdown-timeout", "120"];
    let mut p = demo_with(&args, fd_limit(limit));
    let health = health_addr(&mut p);
    let api = api_addr(&mut p);
    p.wait_for("; running");
    http::wait_status(health, "/readyz", 200);
    assert_eq!(http::get(health, "/readyz/api").status, 200);

    let mut held = hold_connections_until_refused(api, limit as usize);
    assert!(
        !held.is_empty(),
        "limit {limit}: the API answered no connection"
    );
    eventually("the API's port refuses connections", || {
        http::connect_fails(api)
    });
    // The connections already open are still answered, through the drain.
    assert!(
        answered(&mut held[0]),
        "limit {limit}: an open connection was not answered"
    );
    // Closing them gives the demo descriptors back, to answer probes with; the API still
    // cannot accept.
    drop(held);
    let why = http::wait_status(health, "/readyz/api", 503);
    assert!(
        why.body.contains("not accepting connections"),
        "limit {limit}: {}",
        why.body
    );
    assert!(
        http::connect_fails(api),
        "limit {limit}: the API accepts again"
    );
    assert_eq!(http::get(health, "/readyz").status, 503);
    assert_eq!(http::get(health, "/livez").status, 200);
    // The API shut the program down: its error is the run's, and the drain has begun.
    let fatal = p.wait_for("fatal: ");
    assert!(
        fatal.contains("api: ") && fatal.contains("not accepting connections"),
        "limit {limit}: {fatal}"
    );
    p.wait_for("shutting down (fatal error)");
    p.wait_for("draining for");
    // The drain would last a minute more: the child is killed when `p` is dropped.
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

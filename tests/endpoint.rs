//! The health endpoint over real sockets on 127.0.0.1: routes, status codes, the JSON and verbose
//! bodies, exclusion, hidden reasons, informational checks and traffic gates, a hung reporter,
//! and consistent answers while checks flap.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fixture::{Fixture, Switch};
use common::http;
use common::{eventually, WATCHDOG};
use crossbeam_channel::Receiver;
use lifecycle::health::{CheckOptions, EndpointOptions, Probe};
use lifecycle::{
    Error, HealthChecker, HealthEndpoint, HealthReporter, Result, Service, StartContext,
};

/// A reporter whose `ready()` blocks until released, counting its calls.
struct Hang {
    calls: AtomicUsize,
    release: Receiver<()>,
}

impl HealthReporter for Hang {
    fn name(&self) -> &str {
        "hang"
    }
    fn ready(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.release.recv();
        Ok(())
    }
}

/// A started checker (polling every 20 ms, timing calls out at 100 ms) with no check yet, and
/// an endpoint serving it.
fn fixture(options: EndpointOptions) -> Fixture {
    let checker = HealthChecker::builder("1.2.3", "deadbeef")
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(100))
        // Far above the interval: a loaded machine must not turn an answer into "stale".
        .stale_after(WATCHDOG)
        .build();
    Fixture::serving(checker, options)
}

#[test]
fn readiness_follows_the_checks_and_names_the_failing_one() {
    let f = fixture(EndpointOptions::new());
    let db = Switch::new("db", false);
    let cache = Switch::new("cache", true);
    f.checker.register(db.clone()).unwrap();
    f.checker.register(cache).unwrap();

    let r = f.readyz_after_poll();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/health+json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    assert_eq!(j["status"], "fail");
    assert_eq!(j["version"], "1.2.3");
    assert_eq!(j["releaseId"], "deadbeef");
    assert_eq!(j["checks"]["db:ready"][0]["status"], "fail");
    assert!(j["checks"]["db:ready"][0]["output"]
        .as_str()
        .unwrap()
        .contains("refused the connection"));
    assert!(
        j["checks"]["db:ready"][0]["consecutiveFailures"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(j["checks"]["cache:ready"][0]["status"], "pass");

    db.set(true);
    let r = f.readyz_after_poll();
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "pass");
    assert!(j["checks"]["db:ready"][0]["time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // Aliases and the everything-endpoint.
    assert_eq!(http::get(f.addr(), "/ready").status, 200);
    let h = http::get(f.addr(), "/healthz").json();
    assert!(h["checks"]["db:health"].is_array() && h["checks"]["db:ready"].is_array());
    assert_eq!(http::get(f.addr(), "/health").status, 200);
}

#[test]
fn verbose_exclude_and_single_check() {
    let f = fixture(EndpointOptions::new());
    f.checker.register(Switch::new("db", false)).unwrap();
    f.checker.register(Switch::new("api", true)).unwrap();
    assert_eq!(f.readyz_after_poll().status, 503);

    let v = http::get(f.addr(), "/readyz?verbose");
    assert_eq!(v.status, 503);
    assert_eq!(v.header("content-type"), Some("text/plain; charset=utf-8"));
    let lines: Vec<&str> = v.body.lines().collect();
    assert!(lines.contains(&"[+]api ok"), "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("[-]db failed: ") && l.contains("refused")));
    assert_eq!(lines.last(), Some(&"readyz check failed"));

    let x = http::get(f.addr(), "/readyz?verbose&exclude=db");
    assert_eq!(x.status, 200, "{}", x.body);
    assert!(x.body.contains("[-]db excluded: failed"));
    assert!(x.body.ends_with("readyz check passed\n"));
    assert_eq!(
        http::get(f.addr(), "/readyz?exclude=db").json()["status"],
        "pass"
    );

    assert_eq!(http::get(f.addr(), "/readyz/api").status, 200);
    let one = http::get(f.addr(), "/readyz/db");
    assert_eq!(one.status, 503);
    assert_eq!(one.json()["checks"].as_object().unwrap().len(), 1);
    assert_eq!(http::get(f.addr(), "/readyz/nope").status, 404);
}

#[test]
fn liveness_does_not_depend_on_checks() {
    let f = fixture(EndpointOptions::new());
    f.checker.register(Switch::new("db", false)).unwrap();
    assert_eq!(f.readyz_after_poll().status, 503);
    let l = http::get(f.addr(), "/livez");
    assert_eq!(l.status, 200);
    assert_eq!(l.json()["status"], "pass");
    assert!(http::get(f.addr(), "/livez?verbose")
        .body
        .ends_with("livez check passed\n"));
    // Once the checker stops polling, nothing vouches for the process any more.
    f.checker.close().unwrap();
    assert_eq!(http::get(f.addr(), "/livez").status, 503);
    assert_eq!(http::get(f.addr(), "/readyz").status, 503);
}

#[test]
fn methods_paths_and_head() {
    let f = fixture(EndpointOptions::new());
    assert_eq!(http::get(f.addr(), "/nope").status, 404);
    assert_eq!(http::get(f.addr(), "/readyz/").status, 404);
    let post = http::request(f.addr(), "POST", "/readyz");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(http::request(f.addr(), "DELETE", "/livez").status, 405);
    // A method it does not recognise is not implemented (RFC 9110 §9.1).
    let brew = http::request(f.addr(), "BREW", "/livez");
    assert_eq!(brew.status, 501);
    assert_eq!(http::request(f.addr(), "BREW", "/nope").status, 501);
    let get = http::get(f.addr(), "/livez");
    let head = http::request(f.addr(), "HEAD", "/livez");
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
}

#[test]
fn reasons_can_be_hidden() {
    let f = fixture(EndpointOptions::new().hide_reasons(true));
    f.checker.register(Switch::new("db", false)).unwrap();
    let r = f.readyz_after_poll();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(!r.body.contains("10.0.0.7"), "{}", r.body);
    assert_eq!(
        r.json()["checks"]["db:ready"][0]["output"],
        "reason withheld"
    );
    let v = http::get(f.addr(), "/readyz?verbose");
    assert!(v.body.contains("[-]db failed: reason withheld"));
    assert!(!v.body.contains("10.0.0.7"));
}

#[test]
fn informational_checks_warn_but_pass() {
    let f = fixture(EndpointOptions::new());
    f.checker
        .register_with(
            Switch::new("flaky", false),
            CheckOptions::new().informational(true),
        )
        .unwrap();
    f.checker.register(Switch::new("core", true)).unwrap();
    let r = f.readyz_after_poll();
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "warn", "{j}");
    assert_eq!(j["checks"]["flaky:ready"][0]["status"], "warn");
}

#[test]
fn a_traffic_gate_counts_toward_readyz_only() {
    let f = fixture(EndpointOptions::new());
    // A switch's health asks its readiness again: a closed gate fails both of its probes.
    let gate = Switch::new("gate", false);
    f.checker
        .register_with(gate.clone(), CheckOptions::new().traffic_gate(true))
        .unwrap();
    f.checker.register(Switch::new("db", true)).unwrap();

    let r = f.readyz_after_poll();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["checks"]["gate:ready"][0]["status"], "fail");
    let v = http::get(f.addr(), "/readyz?verbose");
    assert!(v.body.contains("[-]gate failed: "), "{}", v.body);
    assert_eq!(http::get(f.addr(), "/readyz/gate").status, 503);

    // /healthz leaves the gate out, its readiness and its health.
    let h = http::get(f.addr(), "/healthz");
    assert_eq!(h.status, 200, "{}", h.body);
    let j = h.json();
    assert_eq!(j["status"], "pass", "{j}");
    assert_eq!(j["checks"]["db:health"][0]["status"], "pass", "{j}");
    let names: Vec<&String> = j["checks"].as_object().unwrap().keys().collect();
    assert!(names.iter().all(|n| !n.starts_with("gate:")), "{names:?}");
    let hv = http::get(f.addr(), "/healthz?verbose");
    assert_eq!(hv.status, 200, "{}", hv.body);
    assert!(!hv.body.contains("gate"), "{}", hv.body);
    assert!(hv.body.ends_with("healthz check passed\n"), "{}", hv.body);
    let one = http::get(f.addr(), "/healthz/gate");
    assert_eq!(one.status, 404, "{}", one.body);
    assert!(one.body.contains("traffic gate"), "{}", one.body);

    // The snapshot counts it the same way.
    let snap = f.checker.snapshot();
    assert!(snap.check("gate").unwrap().is_traffic_gate());
    assert!(!snap.check("db").unwrap().is_traffic_gate());
    assert!(!snap.check("gate").unwrap().health().is_passing());
    assert!(snap.is_ready().failure("gate").is_some());
    assert!(snap.is_healthy().is_passing(), "{:?}", snap.is_healthy());

    // A check that is not a gate still fails /healthz.
    let disk = Switch::new("disk", false);
    f.checker.register(disk.clone()).unwrap();
    f.wait_for_poll();
    assert_eq!(http::get(f.addr(), "/healthz").status, 503);
    disk.set(true);
    gate.set(true);
    let r = f.readyz_after_poll();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(http::get(f.addr(), "/healthz").status, 200);
}

#[test]
fn a_reporter_that_never_returns_is_reported_and_never_blocks_answers() {
    let f = fixture(EndpointOptions::new());
    let (release, rx) = crossbeam_channel::bounded::<()>(0);
    let hang = Arc::new(Hang {
        calls: AtomicUsize::new(0),
        release: rx,
    });
    f.checker.register(hang.clone()).unwrap();
    f.checker.register(Switch::new("ok", true)).unwrap();

    // Within one interval plus the timeout (bounded here by a watchdog), readiness fails naming
    // it, and every request meanwhile is answered.
    let r = f.readyz_after_poll();
    assert_eq!(r.status, 503, "{r:?}");
    let out = r.json()["checks"]["hang:ready"][0]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(out.contains("timed out after"), "{out}");
    for _ in 0..20 {
        assert_eq!(http::get(f.addr(), "/livez").status, 200);
        assert_eq!(http::get(f.addr(), "/readyz/ok").status, 200);
    }
    assert_eq!(f.checker.snapshot().stuck_calls(), 1);
    assert_eq!(hang.calls.load(Ordering::SeqCst), 1, "no pile-up of calls");
    drop(release);
    // The released call's result reaches the poller in its own time: until it does, the
    // check's polls still find it stuck (a poll of a stuck check is its timeout again).
    http::wait_status(f.addr(), "/readyz", 200);
}

#[test]
fn answers_are_consistent_snapshots_while_checks_flap() {
    let f = fixture(EndpointOptions::new());
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let reporters: Vec<_> = names
        .iter()
        .map(|n| f.checker.register(Switch::new(n, true)).unwrap())
        .collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Flap every check through active pushes as fast as possible.
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let r = &reporters[i % reporters.len()];
                let status = if i.is_multiple_of(3) {
                    Err(Error::msg("flap"))
                } else {
                    Ok(())
                };
                r.report(Probe::Ready, status).unwrap();
                i += 1;
            }
        });
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..150 {
                        let r = http::get(f.addr(), "/readyz");
                        let j = r.json();
                        let checks = j["checks"].as_object().unwrap();
                        let any_fail = checks.values().any(|c| c[0]["status"] != "pass");
                        let expected = if any_fail { "fail" } else { "pass" };
                        assert_eq!(j["status"], expected, "inconsistent body: {j}");
                        assert_eq!(r.status, if any_fail { 503 } else { 200 });
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
    });
}

#[test]
fn close_returns_with_idle_keep_alive_clients_connected() {
    let f = fixture(EndpointOptions::new());
    let mut clients: Vec<_> = (0..20).map(|_| http::connect(f.addr())).collect();
    // Make them real keep-alive clients: one answered request each, then idle.
    for c in &mut clients {
        use std::io::Write;
        c.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(c, &mut buf).unwrap();
        assert!(n > 0);
    }
    f.endpoint.close().unwrap();
    for c in &mut clients {
        // The server closed them: EOF (or reset), not a timeout.
        let rest = http::read_until_closed(c);
        assert!(rest.is_empty());
    }
    assert!(http::connect_fails(f.addr()));
}

#[test]
fn repeated_answers_follow_changes_and_staleness() {
    // Plain `/readyz` and `/healthz` answers are reused while nothing changes; they must still
    // follow every change, including a check going stale with no new publication at all.
    // Polls only when asked (`wait_for_poll`, which also makes the poller publish anew): while
    // paused and not asked, nothing is published.
    let checker = Arc::new(
        HealthChecker::builder("1.2.3", "deadbeef")
            .interval(Duration::from_secs(60))
            .timeout(Duration::from_millis(100))
            .stale_after(Duration::from_secs(1))
            .build(),
    );
    let endpoint = HealthEndpoint::new("127.0.0.1:0".parse().unwrap(), checker.clone());
    let db = Switch::new("db", true);
    checker.register(db.clone()).unwrap();
    checker.start(&StartContext::background()).unwrap();
    endpoint.start(&StartContext::background()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    // Polls, then asks; retried, since an answer more than the staleness bound (1 s) after its
    // poll, on a machine held up meanwhile, reads stale.
    let after_poll = |path: &str, want: u16, also: &dyn Fn(&str) -> bool| {
        let mut last = None;
        eventually(&format!("{path} answers {want} after a poll"), || {
            checker.wait_for_poll(WATCHDOG).expect("a poll");
            let r = http::get(addr, path);
            let done = r.status == want && also(&r.body);
            last = Some(r);
            done
        });
        last.expect("an answer")
    };
    let polled = |b: &str| !b.contains("not checked yet");
    after_poll("/readyz", 200, &polled);
    // Asked again and again, the same answer.
    let first = http::get(addr, "/healthz");
    assert_eq!(first.status, 200);
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/readyz").status, 200);
    }

    // A change is published: the answer follows.
    db.set(false);
    after_poll("/readyz", 503, &|b| b.contains("refused"));
    db.set(true);
    after_poll("/readyz", 200, &polled);

    // Paused, the checker publishes nothing more; the check goes stale with time alone.
    checker.pause();
    // Answered (and kept) while the check is still fresh, unless this thread was held up.
    http::get(addr, "/readyz");
    http::get(addr, "/healthz");
    let stale = |r: &http::Reply| r.status == 503 && r.body.contains("stale");
    let r = http::wait_until(addr, "/readyz", "/readyz goes stale", stale);
    assert!(r.json()["checks"]["db:ready"][0]["output"]
        .as_str()
        .unwrap()
        .contains("stale: last polled"));
    http::wait_until(addr, "/healthz", "/healthz goes stale", stale);
    http::wait_until(addr, "/ready", "/ready goes stale", stale);
    checker.resume();
    after_poll("/readyz", 200, &polled);

    endpoint.close().unwrap();
    checker.close().unwrap();
}

#[test]
fn event_loops_from_one_to_many_serve_and_out_of_range_fails_to_start() {
    for loops in [1, 3] {
        let f = fixture(EndpointOptions::new().event_loops(loops));
        assert_eq!(f.readyz_after_poll().status, 200);
        // More keep-alive clients than loops, each asking twice: every loop serves some.
        let mut clients: Vec<_> = (0..2 * loops)
            .map(|_| http::Client::connect(f.addr()))
            .collect();
        for _ in 0..2 {
            for c in &mut clients {
                assert_eq!(c.get("/livez").status, 200, "{loops} loops");
            }
        }
        f.endpoint.close().unwrap();
        for c in &mut clients {
            assert!(c.until_closed().is_empty());
        }
    }
    for loops in [0, 17] {
        let checker = Arc::new(HealthChecker::new("1", "x"));
        let endpoint = HealthEndpoint::with_options(
            "127.0.0.1:0".parse().unwrap(),
            checker,
            EndpointOptions::new().event_loops(loops),
        );
        let e = endpoint.start(&StartContext::background()).unwrap_err();
        assert!(e.to_string().contains("event_loops"), "{e}");
        assert!(endpoint.local_addr().is_none());
    }
}

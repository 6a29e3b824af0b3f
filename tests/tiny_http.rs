//! `health::TinyHttpRoutes` answers the health routes from a program's own tiny_http server
//! exactly as the `HealthEndpoint` does, from the same checker, and gives every other request
//! back to the program.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lifecycle::health::{self, EndpointOptions, TinyHttpRoutes};
use lifecycle::{HealthChecker, HealthEndpoint, Service, StartContext};

use common::http::{request_with, Reply};
use common::WATCHDOG;

/// What a Prometheus server's scrape asks for.
#[cfg(feature = "metrics")]
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// The headers a front must send alike. The others legitimately differ: tiny_http adds `Date`
/// and `Server`, and says `Connection` its own way.
const COMPARED: &[&str] = &[
    "content-type",
    "content-length",
    "cache-control",
    "allow",
    "retry-after",
];

/// A checker with a passing check (`db`), a failing one (`cache`) and a closed traffic gate
/// (`gate`), polled once and then not again for an hour, so that every answer below comes from
/// one snapshot; served by a `HealthEndpoint` and by the program's tiny_http server.
struct Fixture {
    checker: Arc<HealthChecker>,
    endpoint: HealthEndpoint,
    program: Program,
}

impl Fixture {
    fn start() -> Fixture {
        let checker = Arc::new(
            HealthChecker::builder("1.2.3", "abc123")
                .interval(Duration::from_secs(3600))
                .build(),
        );
        checker.register(health::from_fn("db", || Ok(()))).unwrap();
        checker
            .register(health::from_fn("cache", || Err("cache unreachable".into())))
            .unwrap();
        checker
            .register_with(
                health::from_fn("gate", || Err("closed for maintenance".into())),
                health::CheckOptions::new().traffic_gate(true),
            )
            .unwrap();
        let options = EndpointOptions::new();
        let routes = TinyHttpRoutes::new(checker.clone());
        #[cfg(feature = "metrics")]
        let (options, routes) = {
            let metrics = lifecycle::metrics::Metrics::new();
            (options.metrics(metrics.clone()), routes.metrics(metrics))
        };
        let local = "127.0.0.1:0".parse().unwrap();
        let endpoint = HealthEndpoint::with_options(local, checker.clone(), options);
        checker.start(&StartContext::background()).unwrap();
        endpoint.start(&StartContext::background()).unwrap();
        let program = Program::serve(routes);
        checker.wait_for_poll(WATCHDOG).unwrap();
        Fixture {
            checker,
            endpoint,
            program,
        }
    }

    /// Asks both ports the same; asserts the same status, compared headers and body, and
    /// returns the endpoint's answer.
    #[track_caller]
    fn check(&self, method: &str, target: &str, accept: Option<&str>) -> Reply {
        let endpoint = ask(self.endpoint.local_addr().unwrap(), method, target, accept);
        let tiny = ask(self.program.addr, method, target, accept);
        let what = format!("{method} {target} (Accept: {accept:?})");
        assert_eq!(endpoint.status, tiny.status, "{what}: status");
        for name in COMPARED {
            assert_eq!(endpoint.header(name), tiny.header(name), "{what}: {name}");
        }
        assert_eq!(endpoint.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(
            without_endpoint_counters(&endpoint.body),
            without_endpoint_counters(&tiny.body),
            "{what}: body"
        );
        endpoint
    }

    fn close(self) -> Vec<String> {
        let seen = self.program.close();
        self.endpoint.close().unwrap();
        self.checker.close().unwrap();
        seen
    }
}

/// `body` without the lines of the endpoint's connection counters, which `/metrics` reads live
/// from the endpoint: its own port counts the scrape's connection as open, the program's does
/// not.
/// A scrape without the samples that change between two scrapes for reasons of their own: the
/// endpoint's connection counters, and the process's resources (descriptors, threads, memory,
/// CPU time), which the two ports' own connections and threads move. Their descriptors (`#`
/// lines) are kept, and so is `process_start_time_seconds`.
fn without_endpoint_counters(body: &str) -> String {
    const MOVING: [&str; 6] = [
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_virtual_memory_bytes ",
        "process_resident_memory_bytes ",
        "process_threads ",
    ];
    body.lines()
        .filter(|l| !l.contains("lifecycle_health_endpoint_"))
        .filter(|l| !MOVING.iter().any(|m| l.starts_with(m)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The program's own tiny_http server: its loop hands every request to the routes and answers
/// what they give back itself, `404` with a body of its own, noting the request target.
struct Program {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Program {
    fn serve(routes: TinyHttpRoutes) -> Program {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("program http".into())
            .spawn(move || {
                let mut seen = Vec::new();
                // Ends at `unblock`.
                for request in serving.incoming_requests() {
                    let Some(request) = routes.respond(request) else {
                        continue;
                    };
                    seen.push(request.url().to_owned());
                    let answer = tiny_http::Response::from_string("the program's 404\n")
                        .with_status_code(404);
                    let _ = request.respond(answer);
                }
                seen
            })
            .unwrap();
        Program {
            addr,
            server,
            thread: Some(thread),
        }
    }

    /// Stops the loop and returns the targets of the requests it answered itself.
    fn close(mut self) -> Vec<String> {
        self.server.unblock();
        let thread = self.thread.take().expect("not closed yet");
        thread.join().expect("the program's loop panicked")
    }
}

impl Drop for Program {
    /// A failed assertion still ends and joins the loop.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.server.unblock();
            let _ = thread.join();
        }
    }
}

/// Asks `method target` on a fresh connection, with an `Accept` header if given (and an empty
/// body for a POST).
#[track_caller]
fn ask(addr: SocketAddr, method: &str, target: &str, accept: Option<&str>) -> Reply {
    let mut headers = Vec::new();
    if let Some(accept) = accept {
        headers.push(("Accept", accept));
    }
    if method == "POST" {
        headers.push(("Content-Length", "0"));
    }
    request_with(addr, method, target, &headers)
}

/// The routes are shared by the threads of a program's server.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<TinyHttpRoutes>();
};

#[test]
fn both_ports_answer_alike() {
    let fixture = Fixture::start();
    for (target, status) in [
        ("/livez", 200),
        ("/readyz", 503),
        ("/ready", 503),
        ("/healthz", 503),
        ("/health", 503),
        ("/readyz/db", 200),
        ("/readyz/gate", 503),
        ("/healthz/gate", 404),
        ("/healthz/nope", 404),
        ("/readyz?verbose", 503),
        ("/readyz?exclude=cache", 503),
        // The gate counts toward readiness only.
        ("/healthz?exclude=cache", 200),
        ("/healthz?verbose&exclude=cache", 200),
        ("/livez?verbose", 200),
    ] {
        let answer = fixture.check("GET", target, None);
        assert_eq!(answer.status, status, "GET {target}");
        // The same answer from the answer cache, on both ports.
        fixture.check("GET", target, None);
    }
    let verbose = fixture.check("GET", "/readyz?verbose", None);
    let text = verbose.body.clone();
    assert!(
        text.contains("[-]cache failed: ") && text.contains("cache unreachable"),
        "{text}"
    );

    let refused = fixture.check("POST", "/readyz", None);
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));

    for target in ["/livez", "/readyz", "/healthz?verbose"] {
        let got = fixture.check("GET", target, None);
        let head = fixture.check("HEAD", target, None);
        assert!(head.body.is_empty(), "HEAD {target} has a body");
        assert_eq!(head.status, got.status, "HEAD {target}");
        let length = got.body.len().to_string();
        assert_eq!(
            head.header("content-length"),
            Some(&*length),
            "HEAD {target}"
        );
    }

    // Both ports scrape the same `Metrics`, whose every sample here but the endpoint's
    // connection counters is read from the checker's snapshot (states, failures, poll
    // durations, build info) or fixed (the process's start time): with no producers, nothing
    // else changes from one scrape to the next, so the bodies are compared whole but for those.
    #[cfg(feature = "metrics")]
    for accept in [None, Some(OPENMETRICS)] {
        let scrape = fixture.check("GET", "/metrics", accept);
        assert_eq!(scrape.status, 200);
        let text = scrape.body.clone();
        assert!(
            text.contains("lifecycle_health_check_status{check=\"cache\""),
            "{text}"
        );
        let head = fixture.check("HEAD", "/metrics", accept);
        assert!(head.body.is_empty());
    }

    assert!(
        fixture.close().is_empty(),
        "a health route reached the program"
    );
}

#[test]
fn other_requests_reach_the_program() {
    let fixture = Fixture::start();
    let addr = fixture.program.addr;
    let mut targets = vec!["/jobs", "/readyz/", "/livez/more"];
    #[cfg(not(feature = "metrics"))]
    targets.push("/metrics");
    for target in &targets {
        let answer = ask(addr, "GET", target, None);
        assert_eq!(answer.status, 404, "{target}");
        assert_eq!(answer.body, "the program's 404\n", "{target}");
    }
    // Whatever the method: only the path makes a health route.
    let posted = ask(addr, "POST", "/jobs", None);
    assert_eq!(posted.body, "the program's 404\n");
    targets.push("/jobs");
    assert_eq!(fixture.close(), targets);
}

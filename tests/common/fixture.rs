//! A started [`HealthChecker`] + [`HealthEndpoint`] on 127.0.0.1:0, for tests that go through
//! the public API over real sockets. Needs `mod http` (common/http.rs) at the crate root.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle::{
    EndpointOptions, Error, HealthChecker, HealthEndpoint, HealthReporter, Result, Service,
    StartContext,
};

use crate::http::{self, Client, WATCHDOG};

/// A reporter whose readiness a test sets.
pub struct Switch {
    name: String,
    pub ready: AtomicBool,
}

impl Switch {
    pub fn new(name: &str, ready: bool) -> Arc<Switch> {
        Arc::new(Switch {
            name: name.into(),
            ready: AtomicBool::new(ready),
        })
    }
}

impl HealthReporter for Switch {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::msg("db at 10.0.0.7:5432 refused the connection"))
        }
    }
}

pub struct Fixture {
    pub checker: Arc<HealthChecker>,
    pub endpoint: HealthEndpoint,
}

impl Fixture {
    /// A started checker with one passing check `db`, and a started endpoint serving it.
    pub fn new(options: EndpointOptions) -> Fixture {
        let checker = Arc::new(
            HealthChecker::builder("1.2.3", "deadbeef")
                .interval(Duration::from_millis(50))
                // Generous: a loaded machine must not turn the check into a timeout.
                .timeout(Duration::from_secs(10))
                .build(),
        );
        checker.register(Switch::new("db", true)).unwrap();
        let endpoint =
            HealthEndpoint::with_options("127.0.0.1:0".parse().unwrap(), checker.clone(), options);
        checker.start(&StartContext::background()).unwrap();
        endpoint.start(&StartContext::background()).unwrap();
        Fixture { checker, endpoint }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// Waits (under the watchdog) until `/readyz`, asked on `client`, passes with `db` polled.
    #[track_caller]
    pub fn wait_ready_on(&self, client: &mut Client) {
        self.wait_ready_with(|| client.get("/readyz"));
    }

    /// Like [`wait_ready_on`](Fixture::wait_ready_on), each time on a fresh connection.
    #[track_caller]
    pub fn wait_ready(&self) {
        self.wait_ready_with(|| http::get(self.addr(), "/readyz"));
    }

    #[track_caller]
    fn wait_ready_with(&self, mut get: impl FnMut() -> http::Reply) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let r = get();
            if r.status == 200 && !r.body.contains("not checked yet") {
                return;
            }
            assert!(Instant::now() < deadline, "never ready: {r:?}");
            self.checker.poll_now();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.endpoint.close();
        let _ = self.checker.close();
    }
}

/// Asserts that `r` is a well-formed `/readyz` (or `/livez`, per `description`) answer: 200 or
/// 503 with a health+json body whose status agrees with the code.
#[track_caller]
pub fn assert_health_json(r: &http::Reply, description: &str) {
    assert!(r.status == 200 || r.status == 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/health+json"));
    let j = r.json();
    assert_eq!(j["description"], description, "{j}");
    let passing = j["status"] == "pass" || j["status"] == "warn";
    assert_eq!(
        r.status == 200,
        passing,
        "status code and body disagree: {j}"
    );
}

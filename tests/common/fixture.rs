//! A started [`HealthChecker`] and [`HealthEndpoint`] on 127.0.0.1:0, for tests that go through
//! the public API over real sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lifecycle::health::EndpointOptions;
use lifecycle::{
    Error, HealthChecker, HealthEndpoint, HealthReporter, Result, Service, StartContext,
};

use super::http::{self, Client, Reply};
use super::WATCHDOG;

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

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
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
        let checker = HealthChecker::builder("1.2.3", "deadbeef")
            .interval(Duration::from_millis(50))
            // Generous: a loaded machine must not turn the check into a timeout.
            .timeout(Duration::from_secs(10))
            .build();
        checker.register(Switch::new("db", true)).unwrap();
        Fixture::serving(checker, options)
    }

    /// `checker` and an endpoint serving it, both started.
    pub fn serving(checker: HealthChecker, options: EndpointOptions) -> Fixture {
        let checker = Arc::new(checker);
        let endpoint =
            HealthEndpoint::with_options("127.0.0.1:0".parse().unwrap(), checker.clone(), options);
        checker.start(&StartContext::background()).unwrap();
        endpoint.start(&StartContext::background()).unwrap();
        Fixture { checker, endpoint }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// Waits (under the watchdog) until every check has been polled since this call.
    #[track_caller]
    pub fn wait_for_poll(&self) {
        if let Err(e) = self.checker.wait_for_poll(WATCHDOG) {
            panic!("no poll of every check: {e}");
        }
    }

    /// `/readyz` on a fresh connection, once every check has been polled since this call: the
    /// answer shows that poll.
    #[track_caller]
    pub fn readyz_after_poll(&self) -> Reply {
        self.wait_for_poll();
        http::get(self.addr(), "/readyz")
    }

    /// Waits for a poll of every check, then asserts that `/readyz`, asked on `client`, passes.
    #[track_caller]
    pub fn wait_ready_on(&self, client: &mut Client) {
        self.wait_for_poll();
        let r = client.get("/readyz");
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Like [`wait_ready_on`](Fixture::wait_ready_on), on a fresh connection.
    #[track_caller]
    pub fn wait_ready(&self) {
        let r = self.readyz_after_poll();
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Closes the endpoint, then the checker; both must close cleanly.
    pub fn close(self) {
        self.endpoint.close().unwrap();
        self.checker.close().unwrap();
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
pub fn assert_health_json(r: &Reply, description: &str) {
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

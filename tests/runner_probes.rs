//! A `Runner`'s probes through a shutdown, as kube-apiserver's: from the moment it begins,
//! `/readyz` fails (the runner's `runner` check is a traffic gate), while `/livez` and
//! `/healthz` pass until a service closes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lifecycle::{Error, HealthReporter, Result, Runner, Service, StartContext};

use common::{http, WATCHDOG};

/// A service that is ready until its close returns, and whose close says that it has begun,
/// then waits for the test to let it end: until then nothing has closed, whatever the time.
struct Held {
    closed: AtomicBool,
    began: Sender<()>,
    release: Receiver<()>,
}

impl HealthReporter for Held {
    fn name(&self) -> &str {
        "held"
    }
    fn ready(&self) -> Result<()> {
        match self.closed.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err(Error::msg("closed")),
        }
    }
}

impl Service for Held {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        Ok(())
    }
    fn close(&self) -> Result<()> {
        let _ = self.began.send(());
        let released = self.release.recv_timeout(WATCHDOG);
        self.closed.store(true, Ordering::SeqCst);
        released.map_err(|_| Error::msg("not released within the watchdog"))
    }
}

#[test]
fn during_the_drain_livez_and_healthz_pass_and_readyz_fails() {
    let (began_tx, began) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded(1);
    let runner = Runner::new()
        .handle_signals(false)
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .termination_delay(Duration::from_secs(1))
        .service(Held {
            closed: AtomicBool::new(false),
            began: began_tx,
            release: release_rx,
        });
    let handle = runner.handle();
    let report = std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        assert!(handle.wait_running(WATCHDOG), "the run phase did not begin");
        let addr = handle.health_addr().expect("the endpoint listens");
        http::wait_status(addr, "/readyz", 200);
        http::wait_status(addr, "/healthz", 200);

        handle.shutdown();
        // The runner's gate closes at once: the shutdown has begun.
        let ready = http::wait_status(addr, "/readyz?verbose", 503);
        assert!(ready.body.contains("[-]runner failed"), "{}", ready.body);
        assert!(ready.body.contains("[+]held ok"), "{}", ready.body);
        assert_eq!(http::get(addr, "/readyz/runner").status, 503);
        // Liveness, and health, which leaves the traffic gate out.
        assert_eq!(http::get(addr, "/livez").status, 200);
        let health = http::get(addr, "/healthz");
        assert_eq!(health.status, 200, "{}", health.body);
        let json = health.json();
        assert_eq!(json["status"], "pass", "{json}");
        assert!(json["checks"].get("runner:ready").is_none(), "{json}");
        assert_eq!(json["checks"]["held:ready"][0]["status"], "pass", "{json}");
        let verbose = http::get(addr, "/healthz?verbose");
        assert_eq!(verbose.status, 200, "{}", verbose.body);
        assert!(!verbose.body.contains("runner"), "{}", verbose.body);
        let gate = http::get(addr, "/healthz/runner");
        assert_eq!(gate.status, 404, "{}", gate.body);
        assert!(gate.body.contains("/readyz/runner"), "{}", gate.body);
        if began.try_recv().is_ok() {
            // Not a failure: the held close keeps every answer above as it was in the drain.
            eprintln!("the drain ended before the probes were answered: a slow machine");
        }

        release.send(()).unwrap();
        run.join().expect("the runner's thread panicked")
    });
    assert!(report.is_success(), "{report:?}");
}

//! What a service's check says before the service has started, through the runner's endpoint:
//! `waiting for db, cache` (the needs not ready yet, as declared) while they start, `starting`
//! during its own start, `not started: it needs db, which failed to start` once a start it
//! needs has failed, `not started: shutting down` once a shutdown is asked for during the
//! start; and, once it has started, the service's own check. Starts and closes are held by
//! channels, so each answer is looked at while the runner is exactly where the test says.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lifecycle::{
    Error, HealthChecker, HealthReporter, Result, Runner, Service, ServiceOptions, ShutdownCause,
    StartContext, State, StateMachine,
};

use common::{http, WATCHDOG};

/// How long a held start or close waits for the test: longer than the test's own waits, so
/// that a test that fails says where.
const HOLD: Duration = Duration::from_secs(2 * WATCHDOG.as_secs());

/// A service whose start, and optionally whose close, the test holds: each says it has begun on
/// `began`, then waits for the test (at most [`HOLD`]). Ready once started.
struct Held {
    name: &'static str,
    sm: StateMachine,
    began: Sender<&'static str>,
    /// What the start returns, once the test sends it; `None`: the start returns at once.
    start: Option<Receiver<Result<()>>>,
    /// When the close may return; `None`: at once.
    close: Option<Receiver<()>>,
}

/// The test's ends of a [`Held`] service: what its start returns, and when its close returns.
struct Holds {
    start: Sender<Result<()>>,
    close: Sender<()>,
}

impl Held {
    /// A service named `name` reporting on `began`, with its start held if `hold_start`, and its
    /// close held if `hold_close`.
    fn new(
        name: &'static str,
        began: &Sender<&'static str>,
        hold_start: bool,
        hold_close: bool,
    ) -> (Held, Holds) {
        let (start_tx, start_rx) = crossbeam_channel::bounded(1);
        let (close_tx, close_rx) = crossbeam_channel::bounded(1);
        let held = Held {
            name,
            sm: StateMachine::new(),
            began: began.clone(),
            start: hold_start.then_some(start_rx),
            close: hold_close.then_some(close_rx),
        };
        let holds = Holds {
            start: start_tx,
            close: close_tx,
        };
        (held, holds)
    }
}

fn not_released(what: &str) -> Error {
    Error::msg(format!("{what} not released in {HOLD:?}"))
}

impl HealthReporter for Held {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Held {
    // The start ignores its context on purpose: it returns when the test says, so a shutdown
    // asked for meanwhile leaves the runner waiting for it, where the test looks.
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let _ = self.began.send(self.name);
            let Some(release) = &self.start else {
                return Ok(());
            };
            let outcome = release.recv_timeout(HOLD);
            outcome.unwrap_or_else(|_| Err(not_released("start")))?;
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            let _ = self.began.send(self.name);
            let Some(release) = &self.close else {
                return Ok(());
            };
            release
                .recv_timeout(HOLD)
                .map_err(|_| not_released("close"))?;
            Ok(())
        })
    }
}

/// A runner with an endpoint on port 0, and a checker that polls often, so that the answers
/// follow the runner closely.
fn runner() -> Runner {
    let checker = HealthChecker::builder("1.0.0", "abc")
        .interval(Duration::from_millis(10))
        .build();
    Runner::new()
        .handle_signals(false)
        .health(Arc::new(checker))
        .health_endpoint("127.0.0.1:0".parse().unwrap())
}

fn needs(names: &[&str]) -> ServiceOptions {
    ServiceOptions::new().needs(names.iter().copied())
}

/// The next service to begin a start or a close, under the watchdog.
fn next_began(began: &Receiver<&'static str>) -> &'static str {
    began
        .recv_timeout(WATCHDOG)
        .expect("a start or close began within the watchdog")
}

/// The line of `check` in a `/readyz?verbose` body.
fn line_of<'a>(body: &'a str, check: &str) -> Option<&'a str> {
    let passed = format!("[+]{check} ");
    let failed = format!("[-]{check} ");
    body.lines()
        .find(|l| l.starts_with(&passed) || l.starts_with(&failed))
}

/// Waits until `/readyz?verbose` shows `check` failing with a reason that ends with `reason`;
/// returns the body.
#[track_caller]
fn wait_failing(addr: SocketAddr, check: &str, reason: &str) -> String {
    let prefix = format!("[-]{check} failed: ");
    let what = format!("/readyz?verbose shows {prefix}...{reason}");
    let reply = http::wait_until(addr, "/readyz?verbose", &what, |r| {
        line_of(&r.body, check).is_some_and(|l| l.starts_with(&prefix) && l.ends_with(reason))
    });
    reply.body
}

#[test]
fn a_service_says_what_it_waits_for_then_its_check_is_its_own() {
    let (began_tx, began) = crossbeam_channel::unbounded();
    let (cache, cache_holds) = Held::new("cache", &began_tx, true, false);
    let (db, db_holds) = Held::new("db", &began_tx, true, false);
    let (api, _api_holds) = Held::new("api", &began_tx, false, false);
    // Declared in another order than they were added: the message keeps the declared one.
    let runner = runner()
        .service_with(cache, ServiceOptions::new().independent())
        .service_with(db, ServiceOptions::new().independent())
        .service_with(api, needs(&["db", "cache"]));
    let handle = runner.handle();
    // Moved in: a failing test drops them, so the runner is not left waiting for them.
    let report = std::thread::scope(move |s| {
        let run = s.spawn(|| runner.run());
        // Both independent starts are in progress, and held.
        let mut first = [next_began(&began), next_began(&began)];
        first.sort_unstable();
        assert_eq!(first, ["cache", "db"]);
        let addr = handle
            .health_addr()
            .expect("the endpoint listens before any start");

        let body = wait_failing(addr, "api", ": waiting for db, cache");
        assert!(
            line_of(&body, "db").unwrap().ends_with(": starting"),
            "{body}"
        );
        assert!(
            line_of(&body, "cache").unwrap().ends_with(": starting"),
            "{body}"
        );
        // The health+json form says it too.
        let json = http::get(addr, "/readyz").json();
        let output = json["checks"]["api:ready"][0]["output"]
            .as_str()
            .unwrap_or_default();
        assert!(output.ends_with("waiting for db, cache"), "{json}");
        let health = http::get(addr, "/healthz").json();
        assert_eq!(
            health["checks"]["api:ready"][0]["status"], "fail",
            "{health}"
        );

        // cache is ready: api waits for db alone.
        cache_holds.start.send(Ok(())).unwrap();
        let body = wait_failing(addr, "api", ": waiting for db");
        assert_eq!(line_of(&body, "cache"), Some("[+]cache ok"), "{body}");

        // db is ready: api starts, and every check is the service's own.
        db_holds.start.send(Ok(())).unwrap();
        assert_eq!(next_began(&began), "api");
        assert!(handle.wait_running(WATCHDOG), "the run phase did not begin");
        let ready = http::wait_status(addr, "/readyz?verbose", 200);
        for check in ["api", "db", "cache"] {
            let line = line_of(&ready.body, check);
            assert_eq!(
                line,
                Some(format!("[+]{check} ok").as_str()),
                "{}",
                ready.body
            );
        }
        handle.shutdown();
        run.join().expect("the runner's thread panicked")
    });
    assert!(report.is_success(), "{report:?}");
}

#[test]
fn after_a_failed_start_what_needs_it_says_it_will_not_start() {
    let (began_tx, began) = crossbeam_channel::unbounded();
    // other starts at once and is ready; its close, in the rollback, is held, so that the
    // endpoint can be asked meanwhile.
    let (other, other_holds) = Held::new("other", &began_tx, false, true);
    let (db, db_holds) = Held::new("db", &began_tx, true, false);
    let (api, _api_holds) = Held::new("api", &began_tx, false, false);
    let (web, _web_holds) = Held::new("web", &began_tx, false, false);
    let runner = runner()
        .service_with(other, ServiceOptions::new().independent())
        .service_with(db, ServiceOptions::new().independent())
        .service_with(api, needs(&["db"]))
        .service_with(web, needs(&["api"]));
    let handle = runner.handle();
    // Moved in: a failing test drops them, so the runner is not left waiting for them.
    let report = std::thread::scope(move |s| {
        let run = s.spawn(|| runner.run());
        let mut first = [next_began(&began), next_began(&began)];
        first.sort_unstable();
        assert_eq!(first, ["db", "other"]);
        let addr = handle
            .health_addr()
            .expect("the endpoint listens before any start");
        // The runner has seen other ready (its check is its own), db is held.
        let body = http::wait_until(addr, "/readyz?verbose", "other ready", |r| {
            line_of(&r.body, "other") == Some("[+]other ok")
        })
        .body;
        assert!(
            line_of(&body, "api").unwrap().ends_with(": waiting for db"),
            "{body}"
        );
        assert!(
            line_of(&body, "web")
                .unwrap()
                .ends_with(": waiting for api"),
            "{body}"
        );

        db_holds
            .start
            .send(Err(Error::msg("disk on fire")))
            .unwrap();
        // The rollback closes other, and waits there for the test.
        assert_eq!(next_began(&began), "other");
        let failed = "not started: it needs db, which failed to start";
        let body = wait_failing(addr, "api", failed);
        // web needs db through api: skipped because of db too, as the report says.
        let body = match line_of(&body, "web").is_some_and(|l| l.ends_with(failed)) {
            true => body,
            false => wait_failing(addr, "web", failed),
        };
        let db_line = line_of(&body, "db").unwrap();
        assert!(
            db_line.ends_with(": not started: its start failed"),
            "{body}"
        );
        other_holds.close.send(()).unwrap();
        run.join().expect("the runner's thread panicked")
    });
    assert!(!report.is_success(), "{report:?}");
    assert_eq!(*report.cause(), ShutdownCause::StartFailed, "{report:?}");
    for name in ["api", "web"] {
        let service = report.services().iter().find(|r| r.name() == name).unwrap();
        assert_eq!(service.state(), State::Unstarted, "{report:?}");
        assert_eq!(service.skipped_because(), Some("db"), "{report:?}");
    }
}

#[test]
fn a_shutdown_during_the_start_says_nothing_more_will_start() {
    let (began_tx, began) = crossbeam_channel::unbounded();
    let (db, db_holds) = Held::new("db", &began_tx, true, false);
    let (api, _api_holds) = Held::new("api", &began_tx, false, false);
    // api declares nothing: it needs every service added before it.
    // The runner waits for a cancelled start at most its close timeout: longer than the test.
    let runner = (runner().close_timeout(WATCHDOG))
        .shutdown_timeout(3 * WATCHDOG)
        .service(db)
        .service(api);
    let handle = runner.handle();
    // Moved in: a failing test drops them, so the runner is not left waiting for them.
    let report = std::thread::scope(move |s| {
        let run = s.spawn(|| runner.run());
        assert_eq!(next_began(&began), "db");
        let addr = handle
            .health_addr()
            .expect("the endpoint listens before any start");
        wait_failing(addr, "api", ": waiting for db");

        handle.shutdown();
        // db's start ignores the cancellation; the runner waits for it, and api will not start.
        let body = wait_failing(addr, "api", ": not started: shutting down");
        assert!(
            line_of(&body, "db").unwrap().ends_with(": starting"),
            "{body}"
        );
        db_holds.start.send(Ok(())).unwrap();
        run.join().expect("the runner's thread panicked")
    });
    assert_eq!(*report.cause(), ShutdownCause::Requested, "{report:?}");
    let api = report
        .services()
        .iter()
        .find(|r| r.name() == "api")
        .unwrap();
    assert_eq!(api.state(), State::Unstarted, "{report:?}");
    assert_eq!(api.skipped_because(), None, "{report:?}");
}

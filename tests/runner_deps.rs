//! Declared dependencies in the runner, through its public API: independent services start and
//! close at the same time (proved by a meeting that only happens when two calls run at once,
//! under the watchdog), a chain starts in order and closes in reverse, a failed start skips
//! the services that need it, unknown names and cycles are refused before anything starts,
//! and a shutdown asked for during the start cancels every start in progress.

mod common;

use std::sync::Arc;

use common::recorder::Events;
use common::WATCHDOG;
use lifecycle::{
    Error, ErrorKind, HealthReporter, Result, RunPhase, RunReport, Runner, Service, ServiceOptions,
    ShutdownCause, StartContext, State, StateMachine,
};
use parking_lot::{Condvar, Mutex};

fn runner() -> Runner {
    Runner::new().handle_signals(false)
}

/// A rendezvous of `n` parties: each [`arrive`](Meeting::arrive)s, and returns once all have,
/// or fails at the watchdog. It passes only if the `n` calls run at the same time.
struct Meeting {
    n: usize,
    arrived: Mutex<usize>,
    all: Condvar,
}

impl Meeting {
    fn new(n: usize) -> Arc<Meeting> {
        Arc::new(Meeting {
            n,
            arrived: Mutex::new(0),
            all: Condvar::new(),
        })
    }

    fn arrive(&self, who: &str) -> Result<()> {
        let mut arrived = self.arrived.lock();
        *arrived += 1;
        self.all.notify_all();
        let deadline = std::time::Instant::now() + WATCHDOG;
        while *arrived < self.n {
            if self.all.wait_until(&mut arrived, deadline).timed_out() {
                return Err(Error::msg(format!(
                    "{who}: met {} of {} within the watchdog: the calls did not run at once",
                    *arrived, self.n
                )));
            }
        }
        Ok(())
    }
}

type Call = Box<dyn Fn(&StartContext) -> Result<()> + Send + Sync>;

/// A service that records "NAME started" and "NAME closed", running `on_start` and `on_close`.
struct Svc {
    name: String,
    events: Events,
    sm: StateMachine,
    on_start: Call,
    on_close: Box<dyn Fn() -> Result<()> + Send + Sync>,
}

impl Svc {
    fn new(name: &str, events: &Events) -> Svc {
        Svc {
            name: name.to_owned(),
            events: events.clone(),
            sm: StateMachine::new(),
            on_start: Box::new(|_| Ok(())),
            on_close: Box::new(|| Ok(())),
        }
    }

    fn on_start(mut self, f: impl Fn(&StartContext) -> Result<()> + Send + Sync + 'static) -> Svc {
        self.on_start = Box::new(f);
        self
    }

    fn on_close(mut self, f: impl Fn() -> Result<()> + Send + Sync + 'static) -> Svc {
        self.on_close = Box::new(f);
        self
    }
}

impl HealthReporter for Svc {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Svc {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            (self.on_start)(ctx)?;
            self.events.push(format!("{} started", self.name));
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.events.push(format!("{} closed", self.name));
            (self.on_close)().map_err(Into::into)
        })
    }
}

fn needs(names: &[&'static str]) -> ServiceOptions {
    ServiceOptions::new().needs(names.iter().copied())
}

/// Runs `runner` until the run phase begins, then asks it to shut down; returns the report.
fn run_then_shut_down(runner: Runner) -> RunReport {
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(move || runner.run());
        handle.wait_running(WATCHDOG);
        handle.shutdown();
        run.join().unwrap()
    })
}

fn position(events: &[String], event: &str) -> usize {
    (events.iter().position(|e| e == event)).unwrap_or_else(|| panic!("no {event:?} in {events:?}"))
}

fn report_of<'a>(report: &'a RunReport, name: &str) -> &'a lifecycle::ServiceReport {
    (report.services().iter().find(|s| s.name() == name)).unwrap()
}

#[test]
fn independent_services_start_at_the_same_time_and_one_that_declares_nothing_waits_for_both() {
    let events = Events::default();
    let meeting = Meeting::new(2);
    let (m1, m2) = (meeting.clone(), meeting);
    let report = run_then_shut_down(
        runner()
            .service(Svc::new("a", &events).on_start(move |_| m1.arrive("a")))
            .service_with(
                Svc::new("b", &events).on_start(move |_| m2.arrive("b")),
                ServiceOptions::new().independent(),
            )
            // Declares nothing: needs every service added before it.
            .service(Svc::new("after", &events)),
    );
    assert!(report.is_success(), "{:?}", report.error());
    let events = events.take();
    let after = position(&events, "after started");
    assert!(position(&events, "a started") < after, "{events:?}");
    assert!(position(&events, "b started") < after, "{events:?}");
    // It closes first, then the two it needs.
    let after = position(&events, "after closed");
    assert!(after < position(&events, "a closed"), "{events:?}");
    assert!(after < position(&events, "b closed"), "{events:?}");
}

#[test]
fn an_empty_list_of_needs_is_independent() {
    let meeting = Meeting::new(2);
    let (m1, m2) = (meeting.clone(), meeting);
    let events = Events::default();
    let report = run_then_shut_down(
        runner()
            .service(Svc::new("a", &events).on_start(move |_| m1.arrive("a")))
            .service_with(
                Svc::new("b", &events).on_start(move |_| m2.arrive("b")),
                ServiceOptions::new().needs(std::iter::empty::<&str>()),
            ),
    );
    assert!(report.is_success(), "{:?}", report.error());
}

/// db <- repository <- api, added in the reverse order of the chain.
fn chain(events: &Events) -> Runner {
    runner()
        .service_with(Svc::new("api", events), needs(&["repository"]))
        .service_with(Svc::new("repository", events), needs(&["db"]))
        .service_with(Svc::new("db", events), ServiceOptions::new().independent())
}

#[test]
fn a_chain_starts_in_dependency_order_and_closes_in_reverse_whatever_the_list_order() {
    let events = Events::default();
    let report = run_then_shut_down(chain(&events));
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(
        events.take(),
        [
            "db started",
            "repository started",
            "api started",
            "api closed",
            "repository closed",
            "db closed"
        ]
    );
}

#[test]
fn a_failed_start_skips_what_needs_it_and_closes_the_started_in_reverse_dependency_order() {
    let events = Events::default();
    let report = runner()
        .service(Svc::new("base", &events))
        .service_with(Svc::new("mid", &events), needs(&["base"]))
        .service_with(
            Svc::new("bad", &events).on_start(|_| Err(Error::msg("no connection"))),
            needs(&["mid"]),
        )
        .service_with(Svc::new("top", &events), needs(&["bad"]))
        .service_with(Svc::new("above top", &events), needs(&["top"]))
        .run();
    assert_eq!(report.cause(), &ShutdownCause::StartFailed);
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].service(), Some("bad"));
    for name in ["top", "above top"] {
        let r = report_of(&report, name);
        assert_eq!(r.skipped_because(), Some("bad"), "{name}");
        assert_eq!(r.state(), State::Unstarted, "{name}");
        assert!(!r.started());
    }
    assert_eq!(report_of(&report, "bad").state(), State::StartFailed);
    assert_eq!(report_of(&report, "bad").skipped_because(), None);
    assert_eq!(report_of(&report, "mid").state(), State::Closed);
    assert_eq!(
        events.take(),
        ["base started", "mid started", "mid closed", "base closed"]
    );
}

#[test]
fn a_failed_start_cancels_an_independent_start_in_progress() {
    let events = Events::default();
    let report = runner()
        .service(Svc::new("waits", &events).on_start(|ctx| {
            // Until the runner cancels it.
            ctx.wait_timeout(WATCHDOG);
            ctx.check("waits")
        }))
        .service_with(
            Svc::new("bad", &events).on_start(|_| Err(Error::msg("broken"))),
            ServiceOptions::new().independent(),
        )
        .run();
    assert_eq!(report.cause(), &ShutdownCause::StartFailed);
    assert_eq!(report.errors(RunPhase::Start).len(), 1);
    assert!(report.abandoned_threads().is_empty());
    assert_eq!(report_of(&report, "waits").skipped_because(), None);
    assert!(events.take().is_empty());
}

#[test]
fn an_unknown_name_is_refused_before_anything_starts() {
    let events = Events::default();
    let report = runner()
        .service(Svc::new("db", &events))
        .service_with(Svc::new("api", &events), needs(&["dbb"]))
        .run();
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].has_kind(ErrorKind::InvalidInput), "{}", errors[0]);
    assert_eq!(errors[0].service(), Some("api"));
    assert!(errors[0].to_string().contains("\"dbb\""), "{}", errors[0]);
    assert!(events.take().is_empty());
}

#[test]
fn a_cycle_is_refused_naming_it_whole_before_anything_starts() {
    let events = Events::default();
    let report = runner()
        .service_with(
            Svc::new("free", &events),
            ServiceOptions::new().independent(),
        )
        .service_with(Svc::new("a", &events), needs(&["b"]))
        .service_with(Svc::new("b", &events), needs(&["c"]))
        .service_with(Svc::new("c", &events), needs(&["a", "free"]))
        .run();
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].has_kind(ErrorKind::InvalidInput), "{}", errors[0]);
    assert!(
        errors[0].to_string().contains("a -> b -> c -> a"),
        "{}",
        errors[0]
    );
    assert!(events.take().is_empty());
    assert!(report
        .services()
        .iter()
        .all(|s| s.state() == State::Unstarted));
}

#[test]
fn a_diamond_closes_each_service_after_all_that_need_it() {
    let events = Events::default();
    let report = run_then_shut_down(
        runner()
            .service(Svc::new("db", &events))
            .service_with(Svc::new("left", &events), needs(&["db"]))
            .service_with(Svc::new("right", &events), needs(&["db"]))
            .service_with(Svc::new("api", &events), needs(&["left", "right"])),
    );
    assert!(report.is_success(), "{:?}", report.error());
    let events = events.take();
    for side in ["left", "right"] {
        let started = position(&events, &format!("{side} started"));
        assert!(position(&events, "db started") < started, "{events:?}");
        assert!(started < position(&events, "api started"), "{events:?}");
        let closed = position(&events, &format!("{side} closed"));
        assert!(position(&events, "api closed") < closed, "{events:?}");
        assert!(closed < position(&events, "db closed"), "{events:?}");
    }
}

#[test]
fn independent_services_close_at_the_same_time() {
    let events = Events::default();
    let meeting = Meeting::new(3);
    let close = |m: &Arc<Meeting>, who: &'static str| {
        let m = m.clone();
        move || m.arrive(who)
    };
    let long = ServiceOptions::new().close_timeout(WATCHDOG * 2);
    let report = run_then_shut_down(
        runner()
            .shutdown_timeout(WATCHDOG * 4)
            .service(Svc::new("db", &events))
            .service_with(
                Svc::new("a", &events).on_close(close(&meeting, "a")),
                long.clone().needs(["db"]),
            )
            .service_with(
                Svc::new("b", &events).on_close(close(&meeting, "b")),
                long.clone().needs(["db"]),
            )
            .service_with(
                Svc::new("c", &events).on_close(close(&meeting, "c")),
                long.independent(),
            ),
    );
    assert!(report.is_success(), "{:?}", report.error());
    let events = events.take();
    assert!(position(&events, "a closed") < position(&events, "db closed"));
    assert!(position(&events, "b closed") < position(&events, "db closed"));
}

#[test]
fn a_shutdown_during_the_start_cancels_every_start_in_progress() {
    let events = Events::default();
    let meeting = Meeting::new(3);
    let wait = |m: &Arc<Meeting>, who: &'static str| {
        let m = m.clone();
        move |ctx: &StartContext| {
            m.arrive(who)?;
            ctx.wait_timeout(WATCHDOG);
            ctx.check(who)
        }
    };
    let runner = runner()
        .service(Svc::new("a", &events).on_start(wait(&meeting, "a")))
        .service_with(
            Svc::new("b", &events).on_start(wait(&meeting, "b")),
            ServiceOptions::new().independent(),
        )
        .service(Svc::new("needs both", &events));
    let handle = runner.handle();
    let report = std::thread::scope(|s| {
        let run = s.spawn(move || runner.run());
        // Both starts are in progress once the test meets them.
        meeting.arrive("the test").unwrap();
        handle.shutdown();
        run.join().unwrap()
    });
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(report.cause(), &ShutdownCause::Requested);
    assert!(report.abandoned_threads().is_empty());
    for name in ["a", "b"] {
        assert_eq!(report_of(&report, name).state(), State::Closed, "{name}");
    }
    assert_eq!(report_of(&report, "needs both").state(), State::Unstarted);
    assert!(events.take().is_empty());
}

fn path_names(report: &RunReport, phase: RunPhase) -> Vec<&str> {
    (report.critical_path(phase).iter())
        .map(lifecycle::PathStep::name)
        .collect()
}

#[test]
fn the_critical_path_of_a_chain_is_the_chain_and_of_its_shutdown_the_reverse() {
    let events = Events::default();
    let report = run_then_shut_down(chain(&events));
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(
        path_names(&report, RunPhase::Start),
        ["db", "repository", "api"]
    );
    assert_eq!(
        path_names(&report, RunPhase::Shutdown),
        ["api", "repository", "db"]
    );
    assert!(report.critical_path(RunPhase::Run).is_empty());
    for phase in [RunPhase::Start, RunPhase::Shutdown] {
        let path = report.critical_path(phase);
        assert_eq!(path[0].began(), std::time::Duration::ZERO);
        // Each step began once the one before it had ended.
        for pair in path.windows(2) {
            assert!(
                pair[1].began() >= pair[0].began() + pair[0].took(),
                "{path:?}"
            );
        }
    }
    // A start that failed has no critical path; its shutdown still has one.
    let report = runner()
        .service(Svc::new("db", &events))
        .service(Svc::new("bad", &events).on_start(|_| Err(Error::msg("no"))))
        .run();
    assert!(report.critical_path(RunPhase::Start).is_empty());
    assert_eq!(path_names(&report, RunPhase::Shutdown), ["db"]);
}

#[test]
fn with_nothing_declared_the_critical_path_is_every_service() {
    let events = Events::default();
    let report = run_then_shut_down(
        runner()
            .service(Svc::new("a", &events))
            .service(Svc::new("b", &events))
            .service(Svc::new("c", &events)),
    );
    assert_eq!(path_names(&report, RunPhase::Start), ["a", "b", "c"]);
    assert_eq!(path_names(&report, RunPhase::Shutdown), ["c", "b", "a"]);
}

#[test]
fn a_hung_close_is_cut_short_in_time_for_what_it_needs_and_takes_nothing_from_the_others() {
    let events = Events::default();
    let (release, hold) = crossbeam_channel::bounded::<()>(0);
    let report = run_then_shut_down(
        runner()
            // Two steps in the longest chain (hung, then db): each is guaranteed 1 s of 2 s.
            .shutdown_timeout(std::time::Duration::from_secs(2))
            .service(Svc::new("db", &events))
            .service_with(
                Svc::new("hung", &events).on_close(move || {
                    let _ = hold.recv();
                    Ok(())
                }),
                needs(&["db"]).close_timeout(WATCHDOG * 100),
            )
            .service_with(
                Svc::new("other", &events),
                ServiceOptions::new().independent(),
            ),
    );
    drop(release);
    let errors = report.errors(RunPhase::Shutdown);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].service(), Some("hung"));
    assert!(errors[0].has_kind(ErrorKind::TimedOut), "{}", errors[0]);
    assert!(errors[0].to_string().contains("cut short"), "{}", errors[0]);
    assert_eq!(report_of(&report, "db").state(), State::Closed);
    assert_eq!(report_of(&report, "other").state(), State::Closed);
    assert_eq!(report_of(&report, "hung").state(), State::CloseFailed);
}

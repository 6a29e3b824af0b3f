//! The runner in-process, driven through its handle (no real signals): ordered start, readiness
//! gating, rollback at every position, fatal errors, hung closes, the overall deadline, cleanups
//! and panics.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http;
use common::recorder::{Behavior, Events, Recorder};
use common::WATCHDOG;
use crossbeam_channel::{Receiver, Sender};
use lifecycle::{
    Error, ErrorKind, HealthReporter, Phase, Result, RunHandle, RunPhase, RunReport, Runner,
    Service, ServiceOptions, ShutdownCause, StartContext, StateMachine,
};

fn runner() -> Runner {
    Runner::new().handle_signals(false)
}

/// Runs `runner` on a thread, gives its handle to `during` once the run phase has begun (or
/// `None` if it never did), then returns the report.
fn run_with(runner: Runner, during: impl FnOnce(Option<&RunHandle>)) -> RunReport {
    let handle = runner.handle();
    std::thread::scope(|s| {
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        let running = {
            let h = handle.clone();
            let (tx, rx) = crossbeam_channel::bounded(1);
            s.spawn(move || tx.send(h.wait_running(WATCHDOG)).unwrap());
            rx.recv().unwrap()
        };
        during(if running { Some(&handle) } else { None });
        handle.shutdown();
        run.join().unwrap()
    })
}

/// Asks the runner to shut down when dropped, so that a failing assertion in a test cannot leave
/// the runner running and the test's thread scope waiting for it forever.
struct ShutdownOnDrop(RunHandle);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A service scripted per test: when it becomes ready, how its start and close behave.
struct Scripted {
    name: String,
    events: Events,
    sm: StateMachine,
    /// `ready()` fails this many times after the start before it succeeds.
    not_ready_polls: AtomicUsize,
    never_ready: bool,
    /// The start waits for its context to be cancelled, reporting on this channel first.
    start_waits: Option<Sender<()>>,
    /// The close blocks until this channel gets a message or disconnects.
    close_blocks: Option<Receiver<()>>,
}

impl Scripted {
    fn new(name: &str, events: &Events) -> Scripted {
        Scripted {
            name: name.into(),
            events: events.clone(),
            sm: StateMachine::new(),
            not_ready_polls: AtomicUsize::new(0),
            never_ready: false,
            start_waits: None,
            close_blocks: None,
        }
    }
}

impl HealthReporter for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()?;
        if self.never_ready {
            return Err(Error::msg("warming up forever"));
        }
        let left = self.not_ready_polls.load(Ordering::SeqCst);
        if left > 0 {
            self.not_ready_polls.store(left - 1, Ordering::SeqCst);
            return Err(Error::msg("warming up"));
        }
        if !self
            .events
            .0
            .lock()
            .contains(&format!("{} ready", self.name))
        {
            self.events.push(format!("{} ready", self.name));
        }
        Ok(())
    }
}

impl Service for Scripted {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            if let Some(tx) = &self.start_waits {
                self.events.push(format!("{} starting slowly", self.name));
                tx.send(()).unwrap();
                ctx.wait_timeout(Duration::MAX);
                ctx.check(&self.name)?;
            }
            self.events.push(format!("{} started", self.name));
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            if let Some(rx) = &self.close_blocks {
                self.events.push(format!("{} close hangs", self.name));
                let _ = rx.recv();
            }
            self.events.push(format!("{} closed", self.name));
            Ok(())
        })
    }
}

#[test]
fn starts_in_order_closes_in_reverse_and_reports_success() {
    let events = Events::default();
    let services: Vec<_> = (0..4)
        .map(|i| Recorder::new(&format!("s{i}"), Behavior::Healthy, &events))
        .collect();
    let report = run_with(runner().services(services.iter().cloned()), |h| {
        assert!(h.is_some(), "the run phase began");
        assert_eq!(
            events.take(),
            ["s0 started", "s1 started", "s2 started", "s3 started"]
        );
    });
    assert_eq!(
        events.take(),
        ["s3 closed", "s2 closed", "s1 closed", "s0 closed"]
    );
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(report.cause(), &ShutdownCause::Requested);
    assert!(report
        .services()
        .iter()
        .all(|s| s.started() && s.ready_in().is_some() && s.closed()));
    assert_eq!(report.exit_code(), std::process::ExitCode::SUCCESS);
}

#[test]
fn each_service_is_ready_before_the_next_starts() {
    let events = Events::default();
    let a = Scripted::new("a", &events);
    a.not_ready_polls.store(5, Ordering::SeqCst);
    let b = Scripted::new("b", &events);
    b.not_ready_polls.store(2, Ordering::SeqCst);
    let c = Scripted::new("c", &events);
    let report = run_with(runner().service(a).service(b).service(c), |h| {
        assert!(h.is_some())
    });
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(
        events.take(),
        [
            "a started",
            "a ready",
            "b started",
            "b ready",
            "c started",
            "c ready",
            "c closed",
            "b closed",
            "a closed"
        ]
    );
}

#[track_caller]
fn check_rollback(n: usize, k: usize, failure: Behavior) {
    let events = Events::default();
    let services: Vec<_> = (0..n)
        .map(|i| {
            let b = if i == k { failure } else { Behavior::Healthy };
            Recorder::new(&format!("s{i}"), b, &events)
        })
        .collect();
    let cleanups = Arc::new(AtomicUsize::new(0));
    let c = cleanups.clone();
    let report = run_with(
        runner()
            .services(services.iter().cloned())
            .cleanup("count", move || {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        |h| assert!(h.is_none(), "never ran"),
    );
    assert_eq!(report.cause(), &ShutdownCause::StartFailed);
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].service(), Some(format!("s{k}").as_str()));
    assert_eq!(errors[0].phase(), Some(Phase::Start));
    let mut expected: Vec<String> = (0..k).map(|i| format!("s{i} started")).collect();
    expected.push(match failure {
        Behavior::PanicOnStart => format!("s{k} start panic"),
        _ => format!("s{k} start failure"),
    });
    expected.extend((0..k).rev().map(|i| format!("s{i} closed")));
    assert_eq!(events.take(), expected);
    for (i, s) in services.iter().enumerate() {
        let want = if i < k {
            (1, 1)
        } else if i == k {
            (1, 0)
        } else {
            (0, 0)
        };
        assert_eq!((s.starts(), s.closes()), want, "s{i}");
    }
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    assert!(!report.is_success());
    assert_eq!(report.exit_code(), std::process::ExitCode::FAILURE);
}

#[test]
fn rollback_at_every_position() {
    for k in 0..4 {
        check_rollback(4, k, Behavior::WontStart);
        check_rollback(4, k, Behavior::PanicOnStart);
    }
}

#[test]
fn a_service_that_never_becomes_ready_times_out_and_is_closed() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let mut b = Scripted::new("b", &events);
    b.never_ready = true;
    let report = run_with(
        runner().service(a).service_with(
            b,
            ServiceOptions::new().start_timeout(Duration::from_millis(50)),
        ),
        |h| assert!(h.is_none()),
    );
    // One error: the timeout, with b's last readiness error attached.
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.service(), e.phase(), e.kind()),
        (Some("b"), Some(Phase::Start), ErrorKind::TimedOut)
    );
    assert!(
        e.has_kind(ErrorKind::Failed),
        "the last readiness error is kept"
    );
    assert_eq!(
        e.to_string(),
        "b: start timed out after 50ms, last error: ready failed: warming up forever"
    );
    // b's start succeeded, so b is closed too, before a.
    assert_eq!(
        events.take(),
        ["a started", "b started", "b closed", "a closed"]
    );
}

#[test]
fn a_fatal_error_from_a_running_service_shuts_everything_down() {
    let events = Events::default();
    let services: Vec<_> = (0..3)
        .map(|i| Recorder::new(&format!("s{i}"), Behavior::Healthy, &events))
        .collect();
    let runner = runner().services(services.iter().cloned());
    let handle = runner.handle();
    let report = std::thread::scope(|s| {
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        assert!(handle.wait_running(WATCHDOG));
        // A worker of s1 hits an unrecoverable error.
        let worker = handle.clone();
        s.spawn(move || worker.fatal(Error::msg("disk full").in_service("s1", Phase::Run)));
        run.join().unwrap()
    });
    assert_eq!(report.cause(), &ShutdownCause::Fatal);
    let run_errors = report.errors(RunPhase::Run);
    assert_eq!(run_errors.len(), 1);
    assert_eq!(run_errors[0].to_string(), "s1: run failed: disk full");
    assert!(!report.is_success());
    assert_eq!(services.iter().map(|s| s.closes()).sum::<usize>(), 3);
}

#[test]
fn a_hung_close_is_abandoned_after_its_timeout_and_named() {
    let events = Events::default();
    let (release, blocked) = crossbeam_channel::bounded::<()>(0);
    let mut hung = Scripted::new("hung", &events);
    hung.close_blocks = Some(blocked);
    let after = Recorder::new("after", Behavior::Healthy, &events);
    let before = Recorder::new("before", Behavior::Healthy, &events);
    let report = run_with(
        runner()
            .service(before.clone())
            .service_with(
                hung,
                ServiceOptions::new().close_timeout(Duration::from_millis(100)),
            )
            .service(after),
        |h| assert!(h.is_some()),
    );
    let errors = report.errors(RunPhase::Shutdown);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].service(), Some("hung"));
    assert_eq!(errors[0].kind(), ErrorKind::TimedOut);
    assert_eq!(
        errors[0].to_string(),
        "hung: close timed out after 100ms, thread \"close hung\" is left running"
    );
    assert_eq!(report.abandoned_threads(), ["close hung"]);
    // The services closed after the hung one were still closed.
    assert_eq!(before.closes(), 1);
    let report_hung = &report.services()[1];
    assert!(!report_hung.closed());
    drop(release); // lets the abandoned thread finish
}

#[test]
fn the_overall_shutdown_deadline_bounds_every_close() {
    let events = Events::default();
    let mut releases = Vec::new();
    let mut r = runner()
        .close_timeout(Duration::from_secs(600))
        .shutdown_timeout(Duration::from_millis(200));
    for i in 0..3 {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        releases.push(tx);
        let mut s = Scripted::new(&format!("h{i}"), &events);
        s.close_blocks = Some(rx);
        r = r.service(s);
    }
    let report = run_with(r, |h| assert!(h.is_some()));
    // Returned long before any close timeout (600 s) could have passed.
    assert!(report.duration(RunPhase::Shutdown) < Duration::from_secs(600));
    let errors: Vec<_> = report
        .errors(RunPhase::Shutdown)
        .iter()
        .map(|e| {
            (
                e.service().unwrap().to_owned(),
                e.phase().unwrap(),
                e.kind(),
            )
        })
        .collect();
    // The first hung close cannot take the time the later ones are guaranteed (a share of
    // the shutdown timeout each): every close is tried, and each is abandoned in its turn.
    assert_eq!(
        errors,
        [
            ("h2".into(), Phase::Close, ErrorKind::TimedOut),
            ("h1".into(), Phase::Close, ErrorKind::TimedOut),
            ("h0".into(), Phase::Close, ErrorKind::TimedOut),
        ]
    );
    assert_eq!(
        events.take(),
        [
            "h0 started",
            "h0 ready",
            "h1 started",
            "h1 ready",
            "h2 started",
            "h2 ready",
            "h2 close hangs",
            "h1 close hangs",
            "h0 close hangs"
        ]
    );
    drop(releases);
}

#[test]
fn cleanups_run_once_last_first_after_services_and_report_failures() {
    let events = Events::default();
    let svc = Recorder::new("svc", Behavior::Healthy, &events);
    let (e1, e2, e3) = (events.clone(), events.clone(), events.clone());
    let report = run_with(
        runner()
            .service(svc)
            .cleanup("first", move || {
                e1.push("cleanup first".into());
                Ok(())
            })
            .cleanup("second", move || {
                e2.push("cleanup second".into());
                Err(Error::msg("temp dir busy"))
            })
            .cleanup("third", move || {
                e3.push("cleanup third".into());
                panic!("cleanup bug")
            }),
        |h| assert!(h.is_some()),
    );
    assert_eq!(
        events.take(),
        [
            "svc started",
            "svc closed",
            "cleanup third",
            "cleanup second",
            "cleanup first"
        ]
    );
    let errors: Vec<_> = report
        .errors(RunPhase::Shutdown)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "third: panicked in cleanup: cleanup bug",
            "second: cleanup failed: temp dir busy"
        ]
    );
}

#[test]
fn panics_in_close_are_reported_and_do_not_stop_the_shutdown() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::PanicOnClose, &events);
    let report = run_with(runner().services([a.clone(), b]), |h| assert!(h.is_some()));
    assert_eq!(a.closes(), 1);
    let errors = report.errors(RunPhase::Shutdown);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].is_panic());
    assert_eq!(errors[0].service(), Some("b"));
}

#[test]
fn a_shutdown_during_a_slow_start_cancels_it_and_rolls_back_cleanly() {
    let events = Events::default();
    let first = Recorder::new("first", Behavior::Healthy, &events);
    let (started_tx, started_rx) = crossbeam_channel::bounded(1);
    let mut slow = Scripted::new("slow", &events);
    slow.start_waits = Some(started_tx);
    let never = Recorder::new("never", Behavior::Healthy, &events);
    let runner = runner()
        .service(first.clone())
        .service(slow)
        .service(never.clone());
    let handle = runner.handle();
    let report = std::thread::scope(|s| {
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        started_rx.recv_timeout(WATCHDOG).expect("slow start began");
        handle.shutdown();
        run.join().unwrap()
    });
    assert_eq!(report.cause(), &ShutdownCause::Requested);
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(
        events.take(),
        ["first started", "slow starting slowly", "first closed"]
    );
    assert_eq!(never.starts(), 0);
    assert!(!handle.has_run());
}

#[test]
fn only_one_runner_handles_signals_at_a_time() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let first = Runner::new().handle_signals(true).service(a);
    let report = run_with(first, |h| {
        assert!(h.is_some());
        // While the first one holds the signal route, a second one cannot run with signals.
        let second = Runner::new().handle_signals(true).service(Recorder::new(
            "b",
            Behavior::Healthy,
            &events,
        ));
        let r = second.run();
        assert_eq!(r.cause(), &ShutdownCause::StartFailed);
        let e = r.error().unwrap();
        assert!(e.to_string().contains("another runner"), "{e}");
    });
    assert!(report.is_success());
    // Released: the next runner with signals runs.
    let third =
        Runner::new()
            .handle_signals(true)
            .service(Recorder::new("c", Behavior::Healthy, &events));
    assert!(run_with(third, |h| assert!(h.is_some())).is_success());
}

#[test]
fn health_endpoint_follows_the_phases_of_the_run() {
    let events = Events::default();
    let (release, blocked) = crossbeam_channel::bounded::<()>(0);
    let (entered_tx, entered_rx) = crossbeam_channel::bounded::<()>(1);
    let first = Recorder::new("first", Behavior::Healthy, &events);
    let mut closing = Scripted::new("closing", &events);
    closing.close_blocks = Some(blocked);
    /// Tells the test when its close has begun, then closes `inner`.
    struct Announce(Arc<Scripted>, Sender<()>);
    impl HealthReporter for Announce {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn ready(&self) -> Result<()> {
            self.0.ready()
        }
    }
    impl Service for Announce {
        fn start(&self, ctx: &StartContext) -> Result<()> {
            self.0.start(ctx)
        }
        fn close(&self) -> Result<()> {
            self.1.send(()).unwrap();
            self.0.close()
        }
    }
    let checker = Arc::new(lifecycle::HealthChecker::new("9.9.9", "cafe"));
    let runner = runner()
        .health(checker.clone())
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .service(first)
        .service(Announce(Arc::new(closing), entered_tx));
    let handle = runner.handle();
    let report = std::thread::scope(|s| {
        // Owned by this closure, so a failing assertion drops it and unblocks the close.
        let release = release;
        let _guard = ShutdownOnDrop(handle.clone());
        let run = s.spawn(move || runner.run());
        assert!(handle.wait_running(WATCHDOG));
        let addr = handle.health_addr().expect("endpoint listening");
        // Running: every service and the runner itself become ready (the runner asks the
        // checker for a fresh poll as the run phase begins).
        let r = http::wait_status(addr, "/readyz", 200);
        let j = r.json();
        assert_eq!(j["version"], "9.9.9");
        for check in ["first:ready", "closing:ready", "runner:ready"] {
            assert_eq!(j["checks"][check][0]["status"], "pass", "{check}: {j}");
        }
        handle.shutdown();
        // Shutting down, a close in progress: not ready, still alive.
        entered_rx.recv_timeout(WATCHDOG).unwrap();
        let r = http::get(addr, "/readyz");
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["checks"]["runner:ready"][0]["status"], "fail");
        let live = http::get(addr, "/livez?verbose");
        assert_eq!(live.status, 200, "{}", live.body);
        drop(release);
        let report = run.join().unwrap();
        // The endpoint closed last: nothing listens any more.
        assert!(http::connect_fails(addr));
        report
    });
    assert!(report.is_success(), "{:?}", report.error());
    assert_eq!(checker.snapshot().checker_state(), lifecycle::State::Closed);
}

#[test]
fn an_endpoint_that_cannot_bind_fails_the_start_before_any_service() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let events = Events::default();
    let svc = Recorder::new("svc", Behavior::Healthy, &events);
    let report = run_with(
        runner()
            .health_endpoint(taken.local_addr().unwrap())
            .service(svc.clone()),
        |h| assert!(h.is_none()),
    );
    assert_eq!(report.cause(), &ShutdownCause::StartFailed);
    let e = report.error().unwrap();
    assert_eq!(e.service(), Some("health endpoint"), "{e}");
    assert!(e.to_string().contains("cannot listen on"), "{e}");
    assert_eq!(svc.starts(), 0);
}

#[test]
fn two_services_of_one_name_are_refused_before_anything_starts() {
    let events = Events::default();
    let a = Recorder::new("same", Behavior::Healthy, &events);
    let b = Recorder::new("same", Behavior::Healthy, &events);
    let report = runner().services([a.clone(), b.clone()]).run();
    assert_eq!(report.errors(RunPhase::Start).len(), 1);
    assert_eq!(
        report.errors(RunPhase::Start)[0].kind(),
        ErrorKind::DuplicateName
    );
    assert_eq!(a.starts() + b.starts(), 0, "nothing started");
    assert_eq!(report.exit_code(), std::process::ExitCode::FAILURE);
}

//! The runner's bounds, through its public API: a start that hangs is abandoned at its start
//! timeout plus the fixed grace its error states, and one close that hangs with a close
//! timeout longer than the whole shutdown cannot starve the closes after it, the health
//! endpoint's and the checker's included.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::WATCHDOG;
use crossbeam_channel::{Receiver, Sender};
use lifecycle::{
    ErrorKind, HealthReporter, Phase, Result, RunPhase, Runner, Service, ServiceOptions,
    StartContext, StateMachine, Worker,
};

/// A service whose start, or close, blocks until its channel is released (or dropped), ignoring
/// its context; it says on `began` when its start begins.
struct Hangs {
    name: &'static str,
    sm: StateMachine,
    start: Option<Receiver<()>>,
    close: Option<Receiver<()>>,
    began: Option<Sender<()>>,
}

impl HealthReporter for Hangs {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Hangs {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            if let Some(tx) = &self.began {
                let _ = tx.send(());
            }
            if let Some(rx) = &self.start {
                let _ = rx.recv();
            }
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            if let Some(rx) = &self.close {
                let _ = rx.recv();
            }
            Ok(())
        })
    }
}

/// A release for a [`Hangs`]: dropping the sender lets its blocked call return.
fn release() -> (Sender<()>, Receiver<()>) {
    crossbeam_channel::bounded(0)
}

/// Runs `runner` on a thread and returns its report, failing the test if it has not returned
/// within the watchdog.
fn run_bounded(runner: Runner) -> lifecycle::RunReport {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(runner.run());
    });
    rx.recv_timeout(WATCHDOG)
        .expect("the run returned within the watchdog")
}

#[test]
fn a_hung_start_is_abandoned_at_its_start_timeout_plus_the_stated_grace() {
    let (release, blocked) = release();
    let db = Hangs {
        name: "db",
        sm: StateMachine::new(),
        start: Some(blocked),
        close: None,
        began: None,
    };
    // A close timeout of an hour: the grace is fixed, not the close timeout.
    let runner = Runner::new()
        .handle_signals(false)
        .close_timeout(Duration::from_secs(3600))
        .service_with(
            db,
            ServiceOptions::new().start_timeout(Duration::from_millis(100)),
        );
    let report = run_bounded(runner);
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert_eq!((e.service(), e.phase()), (Some("db"), Some(Phase::Start)));
    let text = e.to_string();
    assert!(text.contains("timed out after 100ms"), "{text}");
    assert!(text.contains("abandoned 1s later"), "{text}");
    assert_eq!(report.abandoned_threads(), ["start db"]);
    drop(release);
}

#[test]
fn a_close_with_a_timeout_past_the_shutdown_timeout_cannot_starve_the_others() {
    let (release, blocked) = release();
    let cache = Hangs {
        name: "cache",
        sm: StateMachine::new(),
        start: None,
        close: Some(blocked),
        began: None,
    };
    let runner = Runner::new()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(2))
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .service(Worker::new("pool", |stop| {
            stop.wait();
            Ok(())
        }))
        // Closed first, and hangs: its close timeout is longer than the whole shutdown.
        .service_with(
            cache,
            ServiceOptions::new().close_timeout(Duration::from_secs(3600)),
        );
    let handle = runner.handle();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(runner.run());
    });
    assert!(handle.wait_running(WATCHDOG));
    let addr = handle.health_addr().expect("the endpoint listens");
    handle.shutdown();
    let report = rx.recv_timeout(WATCHDOG).expect("the run returned");

    let errors: Vec<_> = (report.errors(RunPhase::Shutdown).iter())
        .map(|e| (e.service().map(str::to_owned), e.phase(), e.kind()))
        .collect();
    assert_eq!(
        errors,
        [(
            Some("cache".into()),
            Some(Phase::Close),
            ErrorKind::TimedOut
        )],
        "only the hung close failed"
    );
    let text = report.errors(RunPhase::Shutdown)[0].to_string();
    assert!(text.contains("cut short of its close timeout"), "{text}");
    let pool = &report.services()[0];
    assert!(pool.closed(), "the service after the hung one closed");
    // The endpoint closed too: its port no longer accepts.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the health endpoint is closed"
    );
    drop(release);
}

#[test]
fn a_shutdown_asked_for_during_a_hung_start_keeps_to_the_shutdown_timeout() {
    let (release, blocked) = release();
    let (began, start_began) = crossbeam_channel::bounded(1);
    let db = Hangs {
        name: "db",
        sm: StateMachine::new(),
        start: Some(blocked),
        close: None,
        began: Some(began),
    };
    // Neither the start timeout nor the close timeout would end the wait: only the shutdown
    // timeout, which runs from the request.
    let runner = Runner::new()
        .handle_signals(false)
        .start_timeout(Duration::from_secs(3600))
        .close_timeout(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(1))
        .service(db);
    let handle = runner.handle();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(runner.run());
    });
    start_began.recv_timeout(WATCHDOG).expect("the start began");
    handle.shutdown();
    let report = rx.recv_timeout(WATCHDOG).expect("the run returned");
    assert!(report.is_success(), "a shutdown during start is no failure");
    assert_eq!(report.abandoned_threads(), ["start db"]);
    drop(release);
}

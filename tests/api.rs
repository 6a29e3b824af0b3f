//! The API a user writes against: errors that keep their kinds, names checked alike everywhere,
//! a state machine that refuses re-entry instead of deadlocking, `MultiStart` through `&self`,
//! checks from closures and waiting for a poll.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::WATCHDOG;
use crossbeam_channel::bounded;
use lifecycle::health::{self, CheckOptions, Probe};
use lifecycle::{
    Error, ErrorKind, HealthChecker, HealthReporter, MultiStart, Phase, Result, RunPhase, Runner,
    Service, ServiceOptions, StartContext, StateMachine, Worker,
};

/// What an error chain printer (anyhow's `{:#}`, eyre) shows: each message in the chain once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        out.push_str(": ");
        out.push_str(&source.to_string());
        next = source.source();
    }
    out
}

/// A service that starts but never becomes ready.
struct WarmingUp(StateMachine);

impl HealthReporter for WarmingUp {
    fn name(&self) -> &str {
        "api"
    }
    fn ready(&self) -> Result<()> {
        Err(Error::msg("warming up"))
    }
}

impl Service for WarmingUp {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.0.start_once(|| Ok(()))
    }
    fn close(&self) -> Result<()> {
        self.0.close_once(|| Ok(()))
    }
}

#[test]
fn a_start_that_timed_out_is_a_timeout_with_its_last_readiness_error() {
    let options = ServiceOptions::new().start_timeout(Duration::from_millis(20));
    let report = Runner::new()
        .handle_signals(false)
        .service_with(WarmingUp(StateMachine::new()), options)
        .run();
    let errors = report.errors(RunPhase::Start);
    assert_eq!(errors.len(), 1, "{report:?}");
    let e = &errors[0];
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(e.is_timeout() && report.error().unwrap().is_timeout());
    assert_eq!(
        e.to_string(),
        "api: start timed out after 20ms, last error: ready failed: warming up"
    );
    assert_eq!(chain(e), e.to_string(), "no cause printed twice");
}

/// An error of the program's own, with a cause of its own.
#[derive(Debug)]
struct Migration(std::io::Error);

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("migration 42 failed")
    }
}

impl std::error::Error for Migration {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn display_and_source_never_carry_the_same_cause() {
    let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "port taken");
    let e = Error::from(io).in_service("api", Phase::Start);
    assert_eq!(chain(&e), "api: start failed: port taken");

    let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
    let e = Error::other(Migration(denied)).in_service("db", Phase::Start);
    assert_eq!(e.to_string(), "db: start failed: migration 42 failed");
    assert_eq!(chain(&e), "db: start failed: migration 42 failed: denied");
}

#[test]
fn kind_and_type_queries_walk_joined_errors_and_causes() {
    let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
    let migration = Error::other(Migration(denied)).in_service("db", Phase::Start);
    let panic = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
    let panicked = Error::panicked("cache", Phase::Close, &*panic);
    let both = Error::join([migration, panicked]).unwrap();
    assert_eq!(both.kind(), ErrorKind::Joined);
    assert!(both.has_kind(ErrorKind::Panicked) && both.is_panic());
    assert!(both.has_kind(ErrorKind::Failed));
    assert!(!both.has_kind(ErrorKind::TimedOut) && !both.is_timeout());
    assert_eq!(
        both.find::<Migration>().unwrap().to_string(),
        "migration 42 failed"
    );
    let io = both
        .find::<std::io::Error>()
        .expect("the cause's own source");
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    // A lifecycle error inside a foreign error's chain is found too.
    let inner = Error::timed_out("db", Phase::Start, Duration::from_secs(1));
    let wrapped = Error::other(std::io::Error::other(inner));
    assert!(wrapped.has_kind(ErrorKind::TimedOut));
}

fn named(name: &'static str) -> Worker {
    Worker::new(name, |stop| {
        stop.wait();
        Ok(())
    })
}

#[test]
fn names_are_checked_alike_by_the_runner_multistart_and_the_checker() {
    for (bad, kind) in [
        ("", ErrorKind::InvalidInput),
        ("a\nb", ErrorKind::InvalidInput),
    ] {
        let report = Runner::new()
            .handle_signals(false)
            .service(named(bad))
            .run();
        assert_eq!(
            report.errors(RunPhase::Start)[0].kind(),
            kind,
            "runner, {bad:?}"
        );
        let e = MultiStart::start_all([named(bad)]).unwrap_err();
        assert_eq!(e.kind(), kind, "multistart, {bad:?}");
        let e = HealthChecker::new("t", "t")
            .register(health::from_fn(bad, || Ok(())))
            .unwrap_err();
        assert_eq!(e.kind(), kind, "checker, {bad:?}");
    }
    let report = Runner::new()
        .handle_signals(false)
        .services([named("db"), named("db")])
        .run();
    let e = &report.errors(RunPhase::Start)[0];
    assert_eq!(
        (e.kind(), e.service()),
        (ErrorKind::DuplicateName, Some("db"))
    );
    let e = MultiStart::start_all([named("db"), named("db")]).unwrap_err();
    assert_eq!(
        (e.kind(), e.service()),
        (ErrorKind::DuplicateName, Some("db"))
    );
    let started = MultiStart::start_all([named("db")]).unwrap();
    let again = started
        .start(&StartContext::background(), [named("db")])
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::DuplicateName);
    assert_eq!(started.names(), ["db"], "the first db stays started");
    let checker = HealthChecker::new("t", "t");
    checker.register(health::from_fn("db", || Ok(()))).unwrap();
    let e = checker
        .register(health::from_fn("db", || Ok(())))
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.service()),
        (ErrorKind::DuplicateName, Some("db"))
    );
    let grouped = CheckOptions::new().group("");
    let e = checker
        .register_with(health::from_fn("cache", || Ok(())), grouped)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[test]
fn cleanup_names_follow_the_same_rule_and_never_panic() {
    for bad in ["", "nul\0byte"] {
        let report = Runner::new()
            .handle_signals(false)
            .cleanup(bad, || Ok(()))
            .run();
        let e = &report.errors(RunPhase::Start)[0];
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
}

#[test]
fn the_names_of_the_runner_s_own_checks_are_taken_when_health_is_on() {
    let report = Runner::new()
        .handle_signals(false)
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .service(named("runner"))
        .run();
    let e = &report.errors(RunPhase::Start)[0];
    assert_eq!(
        (e.kind(), e.service()),
        (ErrorKind::DuplicateName, Some("runner"))
    );
}

#[test]
fn two_starts_at_once_cannot_start_two_services_of_one_name() {
    let (entered_tx, entered) = bounded::<()>(0);
    let (release_tx, release) = bounded::<()>(0);
    let slow_db = Worker::with_setup(
        "db",
        move |_ctx| {
            entered_tx.send(())?;
            release.recv()?;
            Ok(())
        },
        |_, stop| {
            stop.wait();
            Ok(())
        },
    );
    let services = MultiStart::new();
    std::thread::scope(|s| {
        let first = s.spawn(|| services.start(&StartContext::background(), [slow_db]));
        entered.recv_timeout(WATCHDOG).unwrap();
        // The first "db" is starting: its name is taken.
        let e = services
            .start(&StartContext::background(), [named("db")])
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.service()),
            (ErrorKind::DuplicateName, Some("db"))
        );
        release_tx.send(()).unwrap();
        first.join().unwrap().unwrap();
    });
    assert_eq!(services.names(), ["db"]);
    services.close().unwrap();
}

#[test]
fn an_endpoint_that_cannot_bind_keeps_the_io_error_kind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let endpoint = lifecycle::HealthEndpoint::new(addr, Arc::new(HealthChecker::new("t", "t")));
    let e = endpoint.start(&StartContext::background()).unwrap_err();
    assert_eq!(
        (e.service(), e.phase()),
        (Some("health endpoint"), Some(Phase::Start))
    );
    assert!(
        e.to_string().contains(&format!("cannot listen on {addr}")),
        "{e}"
    );
    let io = e.find::<std::io::Error>().expect("the I/O error is kept");
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
}

/// Runs `f` on a thread of its own and fails, instead of hanging, if it does not return.
fn within_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = bounded(1);
    std::thread::Builder::new()
        .name("under watchdog".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    rx.recv_timeout(WATCHDOG).expect("deadlocked")
}

#[test]
fn a_state_machine_called_from_inside_itself_refuses_at_once() {
    let kinds = within_watchdog(|| {
        let sm = StateMachine::new();
        let mut inside = Vec::new();
        sm.start_once(|| {
            inside.push(sm.close_once(|| Ok(())).unwrap_err().kind());
            inside.push(sm.start_once(|| Ok(())).unwrap_err().kind());
            inside.push(sm.if_started(|| ()).unwrap_err().kind());
            inside.push(sm.if_not_closed(|| ()).unwrap_err().kind());
            Ok(())
        })
        .unwrap();
        let nested = sm.if_started(|| sm.if_started(|| 7)).unwrap().unwrap();
        let close_in_guard = sm.if_started(|| sm.close_once(|| Ok(()))).unwrap();
        let e = close_in_guard.unwrap_err();
        sm.close_once(|| Ok(())).unwrap();
        (inside, nested, e.kind(), e.to_string())
    });
    let (inside, nested, kind, message) = kinds;
    assert_eq!(inside, [ErrorKind::InvalidState; 4]);
    assert_eq!(nested, 7, "guarded work inside guarded work runs");
    assert_eq!(kind, ErrorKind::InvalidState);
    assert!(message.contains("would wait for itself"), "{message}");
}

/// A parent service that owns its sub-services in a `MultiStart`, through `&self` alone.
struct Shards {
    sm: StateMachine,
    shards: MultiStart,
}

impl HealthReporter for Shards {
    fn name(&self) -> &str {
        "shards"
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Shards {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            Ok(self
                .shards
                .start(ctx, [named("shard 1"), named("shard 2")])?)
        })
    }
    fn close(&self) -> Result<()> {
        self.sm.close_once(|| Ok(self.shards.close()?))
    }
}

#[test]
fn a_parent_service_owns_its_sub_services_without_a_lock_of_its_own() {
    let shards = Arc::new(Shards {
        sm: StateMachine::new(),
        shards: MultiStart::new(),
    });
    let runner = Runner::new().handle_signals(false).service(shards.clone());
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        assert!(handle.wait_running(WATCHDOG));
        assert_eq!(shards.shards.names(), ["shard 1", "shard 2"]);
        handle.shutdown();
        assert!(run.join().unwrap().is_success());
    });
    assert!(shards.shards.names().is_empty(), "closed with their parent");
}

#[test]
fn a_check_from_a_closure_and_the_next_poll_seen_without_sleeping() {
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    let checker = HealthChecker::builder("1.0.0", "abc")
        .interval(Duration::from_secs(3600)) // only the first poll and the asked ones
        .build();
    checker
        .register(health::from_fn("disk", move || {
            match flag.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err("disk full".into()),
            }
        }))
        .unwrap();
    checker.start(&StartContext::background()).unwrap();
    let snapshot = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(snapshot.is_ready().is_passing());
    up.store(false, Ordering::SeqCst);
    let snapshot = checker.wait_for_poll(WATCHDOG).unwrap();
    let verdict = snapshot.is_ready();
    assert!(!verdict.is_passing());
    assert_eq!(verdict.failures().len(), 1);
    let e = verdict.failure("disk").unwrap();
    assert_eq!(e.to_string(), "disk: ready failed: disk full");
    assert_eq!(
        snapshot
            .check("disk")
            .unwrap()
            .ready()
            .error()
            .unwrap()
            .to_string(),
        e.to_string()
    );
    assert!(verdict
        .into_result()
        .unwrap_err()
        .to_string()
        .contains("disk full"));
    checker.close().unwrap();
    let e = checker.wait_for_poll(WATCHDOG).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::NotStarted,
        "no poll comes from a closed checker"
    );
}

#[test]
fn waiting_for_a_poll_is_bounded_and_names_the_checks_not_polled() {
    let (release_tx, release) = bounded::<()>(0);
    let checker = HealthChecker::builder("1.0.0", "abc")
        .timeout(WATCHDOG) // the hung check is not given up on before the test ends
        .build();
    checker
        .register(health::from_fn("hung", move || {
            let _ = release.recv();
            Ok(())
        }))
        .unwrap();
    checker.start(&StartContext::background()).unwrap();
    let e = checker
        .wait_for_poll(Duration::from_millis(20))
        .unwrap_err();
    assert!(e.is_timeout());
    assert!(e.to_string().contains("no poll yet of hung"), "{e}");
    drop(release_tx);
    checker.close().unwrap();
}

#[test]
fn one_way_to_push_a_status() {
    let checker = HealthChecker::new("1.0.0", "abc");
    let db = checker.register(health::from_fn("db", || Ok(()))).unwrap();
    checker.start(&StartContext::background()).unwrap();
    checker.wait_for_poll(WATCHDOG).unwrap();
    db.report(Probe::Ready, Err("connection lost".into()))
        .unwrap();
    let verdict = checker.snapshot().is_ready();
    assert_eq!(
        verdict.failure("db").unwrap().to_string(),
        "db: ready failed: connection lost"
    );
    checker.unregister("db").unwrap();
    assert_eq!(
        db.report(Probe::Ready, Ok(())).unwrap_err().kind(),
        ErrorKind::NotRegistered
    );
    checker.close().unwrap();
}

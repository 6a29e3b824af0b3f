//! Supervision where two things happen at once: an instance that finishes while its restart is
//! still starting it, and a shutdown that meets a restart in progress.

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::flaky::{fast, report, spawn_run, Keeper};
use common::WATCHDOG;
use lifecycle::{Error, HealthChecker, RunHandle, Runner, ShutdownCause, Worker};

#[test]
fn an_instance_that_finishes_while_it_starts_is_restarted_under_always() {
    // Each instance's run ends at once, and it is ready only once it has: its end is reported
    // while its restart is still waiting for it to be ready.
    let built = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&built);
    let factory = move || {
        count.fetch_add(1, Ordering::SeqCst);
        let done = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&done);
        Worker::new("job", move |_stop| {
            ended.store(true, Ordering::SeqCst);
            Ok(())
        })
        .ready_when(move |_| {
            if done.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(Error::msg("not yet"))
            }
        })
    };
    let runner = Runner::new()
        .handle_signals(false)
        .restart_budget(3, Duration::from_secs(600))
        .restartable(factory, fast().restart_always());
    let (_handle, reports) = spawn_run(runner);
    // Every end is a restart, until the budget is spent: never an instance left "ready" and
    // done.
    let report = report(&reports);
    assert_eq!(
        report.cause(),
        &ShutdownCause::RestartBudgetSpent,
        "{report:?}"
    );
    assert_eq!(report.exit_code(), ExitCode::from(75));
    assert_eq!(
        built.load(Ordering::SeqCst),
        4,
        "the first and three restarts"
    );
}

#[test]
fn a_shutdown_during_a_restart_fails_readiness_at_once() {
    let (handles, instances) = crossbeam_channel::unbounded();
    let (release_tx, release) = crossbeam_channel::unbounded::<()>();
    let n = Arc::new(AtomicUsize::new(0));
    // The first instance's close hangs until the test releases it.
    let factory = move || {
        let mut keeper = Keeper::new("db", &handles);
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            keeper.hold_close = Some(release.clone());
        }
        keeper
    };
    let checker = Arc::new(HealthChecker::new("v", "s"));
    let runner = Runner::new()
        .handle_signals(false)
        .health(checker.clone())
        .shutdown_timeout(Duration::from_secs(60))
        .restartable(factory, fast().restart_on_failure());
    let (handle, reports) = spawn_run(runner);
    assert!(handle.wait_running(WATCHDOG));
    let first: RunHandle = instances.recv_timeout(WATCHDOG).unwrap();
    // The first instance fails; its close hangs, so its restart is in progress when the
    // shutdown is asked for.
    first.fatal(Error::msg("boom"));
    let watchdog = std::time::Instant::now() + WATCHDOG;
    while checker
        .snapshot()
        .check("db")
        .is_some_and(|c| c.ready().is_passing())
    {
        assert!(std::time::Instant::now() < watchdog, "db never restarting");
        std::thread::yield_now();
    }
    handle.shutdown();
    // Readiness fails while the hung close is still waited for, not after it.
    let snapshot = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(
        !snapshot.check("runner").unwrap().ready().is_passing(),
        "{snapshot:?}"
    );
    assert!(handle.is_shutting_down());
    release_tx.send(()).unwrap();
    let report = report(&reports);
    assert_eq!(report.cause(), &ShutdownCause::Requested, "{report:?}");
}

//! Supervision through the public API: a restartable service's instances fail (told to by the
//! test over channels, `common/flaky.rs`), and the runner restarts them as their policies say,
//! with the backoff, within the budget; the program ends with the budget's exit code when it is
//! spent; options that cannot work are refused; a replaced instance's handle is ignored. Every
//! wait is bounded by the watchdog; no test sleeps to let something happen. The restarts among
//! dependencies, the checks and liveness are in `supervise_deps.rs`.

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifecycle::{ErrorKind, RunPhase, Runner, ServiceOptions, ShutdownCause, State, Worker};

use common::flaky::{
    factory, fast, next, report, runner, spawn_run, wait_running, Keeper, Note, Order, MS,
};
use common::WATCHDOG;

#[test]
fn on_failure_restarts_a_failed_instance_and_the_program_stays_up() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (orders_tx, orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &orders, |_| false);
    let runner = runner().restartable(db, fast().restart_on_failure());
    let (handle, reports) = spawn_run(runner);
    wait_running(&notes, "db", 0);
    orders_tx.send(Order::Fail).unwrap();
    wait_running(&notes, "db", 1);
    orders_tx.send(Order::Fail).unwrap();
    wait_running(&notes, "db", 2);
    assert!(!handle.is_shutting_down(), "a restart is no shutdown");
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.cause(), &ShutdownCause::Requested);
    assert_eq!(report.exit_code(), ExitCode::SUCCESS);
    let db = &report.services()[0];
    assert_eq!(db.state(), State::Closed);
    let causes: Vec<String> = db.restarts().iter().map(ToString::to_string).collect();
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert!(causes[0].contains("instance 0 fails"), "{causes:?}");
    assert!(causes[1].contains("instance 1 fails"), "{causes:?}");
}

#[test]
fn on_failure_leaves_a_finished_instance_and_always_restarts_it() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (once_tx, once) = crossbeam_channel::unbounded();
    let (always_tx, always) = crossbeam_channel::unbounded();
    let transient = factory("transient", &notes_tx, &once, |_| false);
    let permanent = factory("permanent", &notes_tx, &always, |_| false);
    let runner = runner()
        .restartable(transient, fast().restart_on_failure().independent())
        .restartable(permanent, fast().restart_always().independent());
    let (handle, reports) = spawn_run(runner);
    // Each ends cleanly; only the one restarted always comes back.
    once_tx.send(Order::Finish).unwrap();
    always_tx.send(Order::Finish).unwrap();
    wait_running(&notes, "permanent", 1);
    // The transient one's end was taken before (requests are taken in order): it stays.
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    let [transient, permanent] = report.services() else {
        panic!("two services");
    };
    assert!(transient.restarts().is_empty(), "{transient:?}");
    assert_eq!(permanent.restarts().len(), 1, "{permanent:?}");
    let cause = permanent.restarts()[0].to_string();
    assert!(
        cause.contains("ended without an error (restarted always)"),
        "{cause}"
    );
    // No second instance of the transient one ever ran.
    let ran: Vec<Note> = notes.try_iter().collect();
    assert!(!ran.contains(&Note::Running("transient", 1)), "{ran:?}");
}

#[test]
fn a_restartable_service_without_a_policy_shuts_the_program_down_as_before() {
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (orders_tx, orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &orders, |_| false);
    let runner = runner().restartable(db, ServiceOptions::new());
    let (_handle, reports) = spawn_run(runner);
    wait_running(&notes, "db", 0);
    orders_tx.send(Order::Fail).unwrap();
    let report = report(&reports);
    assert_eq!(report.cause(), &ShutdownCause::Fatal);
    assert_eq!(report.exit_code(), ExitCode::FAILURE);
    let errors = report.errors(RunPhase::Run);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("instance 0 fails"),
        "{errors:?}"
    );
    assert!(report.services()[0].restarts().is_empty());
}

#[test]
fn the_backoff_doubles_between_restarts_within_bounded_windows() {
    // The first instance fails when told, the next four at once: five restarts, 50 ms doubling
    // to 400 ms,
    // each delay in [0.8 b, b] after the failure (plus the runner's own time, bounded loosely).
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (orders_tx, orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &orders, |k| (1..5).contains(&k));
    let options = (ServiceOptions::new())
        .restart_backoff(50 * MS, 400 * MS)
        .restart_on_failure();
    let runner = runner().restart_budget(100, Duration::from_secs(600));
    let (handle, reports) = spawn_run(runner.restartable(db, options));
    orders_tx.send(Order::Fail).unwrap();
    let mut ended = Vec::new();
    let mut running = Vec::new();
    while running.len() < 6 {
        match next(&notes) {
            Note::Running(_, k) => running.push((k, Instant::now())),
            Note::Ended(_, k, at) => ended.push((k, at)),
            Note::Built(..) => {}
        }
    }
    let bases = [50, 100, 200, 400, 400].map(|ms| ms * MS);
    for (k, base) in bases.into_iter().enumerate() {
        let gap = running[k + 1].1.saturating_duration_since(ended[k].1);
        assert!(
            gap >= base.mul_f64(0.8),
            "restart {k}: {gap:?} after the failure, base {base:?}"
        );
        assert!(
            gap < base + Duration::from_secs(5),
            "restart {k}: {gap:?}, base {base:?}"
        );
    }
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.services()[0].restarts().len(), 5);
}

#[test]
fn a_crash_loop_spends_the_budget_and_ends_with_its_exit_code() {
    let (notes_tx, _notes) = crossbeam_channel::unbounded();
    let (_orders_tx, orders) = crossbeam_channel::unbounded();
    // The first instance runs; every later one fails at once.
    let db = factory("db", &notes_tx, &orders, |k| k > 0);
    let runner = runner()
        .restart_budget(3, Duration::from_secs(600))
        .restartable(db, fast().restart_on_failure());
    let (_handle, reports) = spawn_run(runner);
    _orders_tx.send(Order::Fail).unwrap();
    let report = report(&reports);
    assert_eq!(report.cause(), &ShutdownCause::RestartBudgetSpent);
    assert_eq!(Runner::RESTART_BUDGET_EXIT_CODE, 75);
    assert_eq!(report.exit_code(), ExitCode::from(75));
    assert!(!report.is_success());
    let db = &report.services()[0];
    assert_eq!(db.restarts().len(), 3, "{db:?}");
    let errors = report.errors(RunPhase::Run);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let text = errors[0].to_string();
    assert!(
        text.contains("restart budget is spent (3 restart(s) within 600s)"),
        "{text}"
    );
    assert!(text.contains("instance 3 fails"), "{text}");
}

#[test]
fn restart_options_that_cannot_work_are_refused_before_anything_starts() {
    let refused = |runner: Runner, what: &str| {
        let report = runner.run();
        assert_eq!(report.cause(), &ShutdownCause::StartFailed, "{what}");
        let e = report.error().unwrap();
        assert!(e.has_kind(ErrorKind::InvalidInput), "{what}: {e:?}");
        assert!(e.to_string().contains(what), "{e}");
    };
    let idle = || {
        Worker::new("idle", |stop| {
            stop.wait();
            Ok(())
        })
    };
    refused(
        runner().service_with(idle(), ServiceOptions::new().restart_on_failure()),
        "add it with Runner::restartable",
    );
    refused(
        runner().restartable(
            idle,
            ServiceOptions::new().restart_backoff(Duration::ZERO, MS),
        ),
        "initial delay is zero",
    );
    refused(
        runner()
            .restart_budget(3, Duration::ZERO)
            .restartable(idle, fast().restart_on_failure()),
        "window is zero",
    );
    refused(
        runner().restartable(idle, fast().restart_on_failure().restart_on_unhealthy(3)),
        "restart_on_unhealthy needs",
    );
    // A factory that panics at once.
    let report = runner()
        .restartable(|| -> Worker { panic!("no instance") }, fast())
        .run();
    assert_eq!(report.cause(), &ShutdownCause::StartFailed);
    assert!(report.error().unwrap().has_kind(ErrorKind::Panicked));
}

#[test]
fn an_instance_of_another_name_shuts_the_program_down() {
    let count = Arc::new(AtomicUsize::new(0));
    let (fail_tx, fail) = crossbeam_channel::bounded::<()>(1);
    let factory = move || {
        let k = count.fetch_add(1, Ordering::SeqCst);
        let fail = fail.clone();
        let name = if k == 0 { "db" } else { "other" };
        Worker::new(name, move |stop| {
            crossbeam_channel::select! {
                recv(fail) -> _ => Err("failed".into()),
                recv(stop.receiver()) -> _ => Ok(()),
                default(2 * WATCHDOG) => Ok(()),
            }
        })
    };
    let (_handle, reports) = spawn_run(runner().restartable(factory, fast().restart_on_failure()));
    fail_tx.send(()).unwrap();
    let report = report(&reports);
    assert_eq!(report.cause(), &ShutdownCause::Fatal);
    let e = report.error().unwrap();
    assert!(e.has_kind(ErrorKind::InvalidInput), "{e:?}");
    assert!(e.to_string().contains("named \"other\""), "{e}");
}

#[cfg(feature = "metrics")]
#[test]
fn the_restarts_are_counted_in_the_metrics() {
    use lifecycle::metrics::{Format, Metrics};
    let (notes_tx, notes) = crossbeam_channel::unbounded();
    let (orders_tx, orders) = crossbeam_channel::unbounded();
    let db = factory("db", &notes_tx, &orders, |_| false);
    let idle = Worker::new("idle", |stop| {
        stop.wait();
        Ok(())
    });
    let metrics = Metrics::new();
    let runner = runner()
        .metrics(metrics.clone())
        .service(idle)
        .restartable(db, fast().restart_on_failure());
    let (handle, reports) = spawn_run(runner);
    for k in 0..2 {
        wait_running(&notes, "db", k);
        orders_tx.send(Order::Fail).unwrap();
    }
    wait_running(&notes, "db", 2);
    let text = metrics.encode(Format::Prometheus);
    assert!(
        text.contains("lifecycle_service_restarts_total{service=\"db\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("lifecycle_service_restarts_total{service=\"idle\"} 0\n"),
        "{text}"
    );
    handle.shutdown();
    assert!(report(&reports).is_success());
}

#[test]
fn a_service_that_fails_at_once_on_every_start_spends_the_budget_from_the_first() {
    // Even the first instance fails as it starts, before or after it was seen ready: it counts
    // as up for the start phase and is restarted in the run phase, so a crash loop always ends
    // with the budget's exit code.
    for _ in 0..5 {
        let (notes_tx, _notes) = crossbeam_channel::unbounded();
        let (_orders_tx, orders) = crossbeam_channel::unbounded();
        let db = factory("db", &notes_tx, &orders, |_| true);
        let idle = Worker::new("api", |stop| {
            stop.wait();
            Ok(())
        });
        let runner = runner()
            .restart_budget(2, Duration::from_secs(600))
            .restartable(db, fast().restart_on_failure())
            .service(idle);
        let (_, reports) = spawn_run(runner);
        let report = report(&reports);
        assert_eq!(
            report.cause(),
            &ShutdownCause::RestartBudgetSpent,
            "{report:?}"
        );
        assert_eq!(report.exit_code(), ExitCode::from(75));
        assert_eq!(report.services()[0].restarts().len(), 2);
        assert!(report.errors(RunPhase::Start).is_empty(), "{report:?}");
    }
}

#[test]
fn a_replaced_instance_s_handle_is_ignored_and_is_no_shutdown() {
    let (handles_tx, handles) = crossbeam_channel::unbounded();
    let factory = move || Keeper::new("keeper", &handles_tx);
    let (handle, reports) = spawn_run(runner().restartable(factory, fast().restart_on_failure()));
    let first = handles.recv_timeout(WATCHDOG).unwrap();
    first.fatal(lifecycle::Error::msg("first instance failed"));
    let second = handles.recv_timeout(WATCHDOG).expect("a restart");
    // The first instance's handle again: it was replaced, nothing happens.
    first.fatal(lifecycle::Error::msg("stale"));
    assert!(!first.is_shutting_down() && !handle.is_shutting_down());
    // The second instance's own failure is a restart again: requests are taken in order, so
    // the stale one was seen before it.
    second.fatal(lifecycle::Error::msg("second instance failed"));
    let _third = handles.recv_timeout(WATCHDOG).expect("a second restart");
    handle.shutdown();
    let report = report(&reports);
    assert!(report.is_success(), "{report:?}");
    let causes: Vec<String> = (report.services()[0].restarts().iter())
        .map(ToString::to_string)
        .collect();
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert!(causes.iter().all(|c| !c.contains("stale")), "{causes:?}");
}

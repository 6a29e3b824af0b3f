//! Behaviour of `HealthChecker`, through its public API only: events, pushes, subscribers,
//! checks registered while running, unknown checks, and stuck calls at close and unregister.
//!
//! No test depends on the machine being fast: waits are for events or conditions, each with a
//! generous watchdog, and time is only ever asserted as a lower bound.

mod common;

use std::time::Duration;

use common::fake::{is, recv_call, started, subscribe, wait_event, Fake, NEVER};
use common::{eventually, WATCHDOG};
use lifecycle::health::{HealthEvent, Probe, Status};
use lifecycle::{Error, ErrorKind, HealthChecker, Phase, Service, StartContext};

#[test]
fn active_report_updates_at_once_and_emits_an_event() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let reporter = checker.register(db).unwrap();
    assert_eq!(reporter.name(), "db");
    wait_event(&events, is("db", Probe::Health, Status::Passing));

    reporter
        .report(Probe::Health, Err(Error::msg("replica lag")))
        .unwrap();
    // Visible immediately: no poll happens (the interval is an hour).
    let snap = checker.snapshot();
    let healthy = snap.is_healthy();
    assert!(!healthy.is_passing());
    assert_eq!(
        healthy.failure("db").unwrap().to_string(),
        "db: health failed: replica lag"
    );
    assert!(
        snap.is_ready().is_passing(),
        "only the health probe was reported"
    );
    let e = wait_event(&events, is("db", Probe::Health, Status::Failing));
    assert!(e.is_pushed());
    assert_eq!(e.probe(), Probe::Health);
    assert_eq!(
        (e.old_status(), e.new_status()),
        (Status::Passing, Status::Failing)
    );
    assert_eq!(
        e.reason().unwrap().to_string(),
        "db: health failed: replica lag"
    );

    assert_eq!(
        e.to_string(),
        "db: health failed: replica lag",
        "events display on one line"
    );

    reporter.report(Probe::Health, Ok(())).unwrap();
    assert!(checker.snapshot().is_healthy().is_passing());
    let e = wait_event(&events, |e| {
        e.is_pushed() && e.new_status() == Status::Passing
    });
    assert!(e.reason().is_none());
    assert_eq!(e.to_string(), "db: health passes again");

    // Once the checker is closed, and once it is gone, reports have no check to go to.
    checker.close().unwrap();
    let e = reporter.report(Probe::Ready, Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotRegistered);
    drop(checker);
    let e = reporter.report(Probe::Ready, Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotRegistered);
    assert_eq!(e.to_string(), "db: not registered");
}

/// The seed's example: the ledger depends on postgres and reacts to its health at once.
#[test]
fn a_service_reacts_to_another_ones_events() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (postgres, _) = Fake::new("postgres");
    let (ledger, _) = Fake::new("ledger");
    let postgres_reporter = checker.register(postgres).unwrap();
    let ledger_reporter = checker.register(ledger.clone()).unwrap();
    wait_event(&events, is("postgres", Probe::Ready, Status::Passing));
    wait_event(&events, is("ledger", Probe::Ready, Status::Passing));

    let watch = checker.subscribe();
    let pushed =
        |status| move |e: &HealthEvent| e.is_pushed() && is("ledger", Probe::Ready, status)(e);
    std::thread::scope(|s| {
        s.spawn(|| {
            // The ledger's reaction: runs until the checker closes (the channel disconnects).
            for event in watch.iter() {
                if event.check() == "postgres" && event.probe() == Probe::Ready {
                    let status = match event.reason() {
                        Some(why) => Err(Error::msg(format!("depends on postgres: {why}"))),
                        None => Ok(()),
                    };
                    // Its own ready() agrees from now on, and the change is pushed at once.
                    ledger.set_ready(status.clone());
                    if let Err(e) = ledger_reporter.report(Probe::Ready, status) {
                        assert_eq!(e.kind(), ErrorKind::NotRegistered, "only once closed");
                    }
                }
            }
        });

        // Postgres reports its own trouble (no poll happens: the interval is an hour, so every
        // change below comes from a push and the order of events is fixed).
        let refused = Err(Error::msg("connection refused"));
        postgres_reporter.report(Probe::Ready, refused).unwrap();
        let e = wait_event(&events, is("postgres", Probe::Ready, Status::Failing));
        assert_eq!(e.old_status(), Status::Passing);
        assert_eq!(
            e.reason().unwrap().to_string(),
            "postgres: ready failed: connection refused"
        );
        let e = wait_event(&events, pushed(Status::Failing));
        assert_eq!(
            e.reason().unwrap().to_string(),
            "ledger: ready failed: depends on postgres: postgres: ready failed: connection refused"
        );

        postgres_reporter.report(Probe::Ready, Ok(())).unwrap();
        wait_event(&events, pushed(Status::Passing));
        checker.close().unwrap();
    });
}

#[test]
fn slow_or_gone_subscribers_never_block_the_checker() {
    let checker = HealthChecker::builder("v", "s")
        .interval(NEVER)
        .event_capacity(1)
        .build();
    checker.start(&StartContext::background()).unwrap();
    let _never_read = checker.subscribe();
    drop(checker.subscribe());
    let events = subscribe(&checker);
    let (db, _) = Fake::new("db");
    let reporter = checker.register(db).unwrap();
    wait_event(&events, |e| e.check() == "db");
    for n in 0..10 {
        let status = if n % 2 == 0 {
            Err(Error::msg("x"))
        } else {
            Ok(())
        };
        reporter.report(Probe::Ready, status).unwrap();
    }
    assert!(checker.snapshot().dropped_events() > 0);
    assert!(
        checker.snapshot().is_ready().is_passing(),
        "the last report (ok) is in effect"
    );
    checker.close().unwrap();
    assert!(
        events.rx.iter().count() <= 1,
        "disconnected after close, after what was buffered"
    );
}

#[test]
fn checks_registered_while_running_are_polled_at_once() {
    let checker = started(NEVER, WATCHDOG);
    let events = subscribe(&checker);
    let (a, _) = Fake::new("a");
    checker.register(a).unwrap();
    wait_event(&events, is("a", Probe::Ready, Status::Passing));
    let (b, b_calls) = Fake::new("b");
    checker.register(b).unwrap();
    recv_call(&b_calls);
    wait_event(&events, is("b", Probe::Ready, Status::Passing));
    checker.close().unwrap();
}

#[test]
fn unknown_checks_are_not_ready() {
    let checker = HealthChecker::new("v", "s");
    let (db, _) = Fake::new("db");
    checker.register(db).unwrap();
    checker.pause();
    checker.start(&StartContext::background()).unwrap();
    let ready = checker.snapshot().is_ready();
    assert!(!ready.is_passing());
    assert_eq!(
        ready.failure("db").unwrap().to_string(),
        "db: ready failed: not checked yet"
    );
    // Paused: no poll would come, and waiting for one says so at once.
    let e = checker.wait_for_poll(WATCHDOG).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
    checker.close().unwrap();
}

#[test]
fn close_is_bounded_and_names_stuck_workers() {
    let checker = HealthChecker::builder("v", "s")
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(50))
        .close_timeout(Duration::from_millis(100))
        .build();
    checker.start(&StartContext::background()).unwrap();
    let events = subscribe(&checker);
    let (stuck, _) = Fake::new("stuck");
    let gate = stuck.block();
    checker.register(stuck.clone()).unwrap();
    wait_event(&events, is("stuck", Probe::Ready, Status::Failing));

    let e = checker.close().unwrap_err();
    assert_eq!(e.service(), Some("stuck"));
    assert_eq!(e.phase(), Some(Phase::Ready));
    assert!(e.to_string().contains("still running at close"), "{e}");
    stuck.unblock(gate);
}

#[test]
fn unregistering_a_stuck_check_does_not_wait_for_it() {
    let checker = started(Duration::from_millis(20), Duration::from_millis(50));
    let events = subscribe(&checker);
    let (stuck, stuck_calls) = Fake::new("stuck");
    let gate = stuck.block();
    checker.register(stuck.clone()).unwrap();
    wait_event(&events, is("stuck", Probe::Ready, Status::Failing));

    checker.unregister("stuck").unwrap();
    assert!(checker.snapshot().check("stuck").is_none());
    assert_eq!(
        checker.snapshot().stuck_calls(),
        1,
        "still counted: its call has not returned"
    );

    stuck.unblock(gate);
    eventually("orphan's call returned", || {
        checker.snapshot().stuck_calls() == 0
    });
    assert_eq!(recv_call(&stuck_calls), 1);
    assert!(stuck_calls.try_recv().is_err(), "never called again");
    checker.close().unwrap();
}

#[test]
fn a_poll_that_began_before_a_push_does_not_override_it() {
    let checker = started(NEVER, Duration::from_secs(60));
    let (fake, calls) = Fake::new("svc");
    let reporter = checker.register(fake.clone()).unwrap();
    let first = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(first.check("svc").unwrap().ready().is_passing());
    // Every call so far has returned and been recorded; the next comes only when asked.
    while calls.try_recv().is_ok() {}
    let polled = |c: &HealthChecker| c.snapshot().check("svc").unwrap().last_polled();
    let before = polled(&checker);

    // A poll is in the middle of ready() when a push says the opposite.
    let gate = fake.block();
    checker.poll_now();
    recv_call(&calls);
    reporter
        .report(Probe::Ready, Err(Error::msg("pushed: shutting down")))
        .unwrap();
    fake.unblock(gate);
    // Not `wait_for_poll`: the poll it would ask for would begin after the push.
    eventually("the in-flight poll is recorded", || {
        polled(&checker) != before
    });

    // Its result (passing) was read before the push: the push stands.
    let snap = checker.snapshot();
    let ready = snap.check("svc").unwrap().ready();
    assert_eq!(ready.status(), Status::Failing);
    assert!(ready
        .error()
        .unwrap()
        .to_string()
        .contains("pushed: shutting down"));

    // A poll that begins after the push is applied as usual.
    let next = checker.wait_for_poll(WATCHDOG).unwrap();
    assert!(next.check("svc").unwrap().ready().is_passing());
    checker.close().unwrap();
}

//! MultiStart and close_all: the seed's two examples, rollback at every position, panics during
//! rollback, cancellation, and closing on drop.

mod common;

use std::sync::Arc;

use common::recorder::{Behavior, Events, Recorder};
use lifecycle::{close_all, ErrorKind, MultiStart, Phase, Service, StartContext, StopSignal};

/// The seed's MultiStart example: a healthy, b fails to close, c won't start.
#[test]
fn seed_example_multistart_rolls_back_in_reverse() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::CloseFailure, &events);
    let c = Recorder::new("c", Behavior::WontStart, &events);

    let ms = MultiStart::new();
    let err = ms
        .start(&StartContext::background(), [a, b, c])
        .unwrap_err();

    assert_eq!(
        events.take(),
        [
            "a started",
            "b started",
            "c start failure",
            "b close failure",
            "a closed"
        ]
    );
    assert_eq!(err.kind(), ErrorKind::Joined);
    let parts: Vec<_> = err
        .errors()
        .map(|e| (e.service().unwrap(), e.phase().unwrap()))
        .collect();
    assert_eq!(parts, [("c", Phase::Start), ("b", Phase::Close)]);
    assert_eq!(
        err.to_string(),
        "c: start failed: start failure; b: close failed: close failure"
    );
    assert!(ms.names().is_empty());
}

/// The seed's MultiCloser example: two services that fail to close, closed concurrently.
#[test]
fn seed_example_close_all_reports_every_failure() {
    let events = Events::default();
    let f1 = Recorder::new("f1", Behavior::CloseFailure, &events);
    let f2 = Recorder::new("f2", Behavior::CloseFailure, &events);

    let ms = MultiStart::new();
    ms.start(&StartContext::background(), [f1.clone(), f2.clone()])
        .unwrap();
    let err = close_all(ms.release()).unwrap_err();

    let mut log = events.take();
    let mut closed = log.split_off(2);
    assert_eq!(log, ["f1 started", "f2 started"]);
    closed.sort(); // closed concurrently: in no particular order
    assert_eq!(closed, ["f1 close failure", "f2 close failure"]);
    // The errors come in the order of the services, whatever the order of the closes.
    assert_eq!(
        err.to_string(),
        "f1: close failed: close failure; f2: close failed: close failure"
    );
    assert_eq!((f1.closes(), f2.closes()), (1, 1));
    drop(ms); // released: dropping closes nothing more
    assert_eq!((f1.closes(), f2.closes()), (1, 1));
}

#[test]
fn names_are_checked_before_anything_starts() {
    let events = Events::default();
    let ms = MultiStart::new();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    ms.start(&StartContext::background(), [a.clone()]).unwrap();
    assert_eq!(events.take(), ["a started"]);

    // Twice in one call, or already held from an earlier call: refused, nothing starts.
    let twice = [
        Recorder::new("b", Behavior::Healthy, &events),
        Recorder::new("b", Behavior::Healthy, &events),
    ];
    let e = ms
        .start(&StartContext::background(), twice.iter().cloned())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    assert_eq!(e.to_string(), "b: already registered");
    let again = Recorder::new("a", Behavior::Healthy, &events);
    let e = ms
        .start(&StartContext::background(), [again.clone()])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DuplicateName);
    for bad in ["", "line\nbreak"] {
        let fine = Recorder::new("fine", Behavior::Healthy, &events);
        let bad = Recorder::new(bad, Behavior::Healthy, &events);
        let e = ms
            .start(&StartContext::background(), [fine.clone(), bad])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_eq!(fine.starts(), 0, "refused before anything starts");
    }
    assert_eq!(twice[0].starts() + twice[1].starts() + again.starts(), 0);
    assert!(events.take().is_empty());
    // Services started earlier stay started.
    assert_eq!(ms.names(), ["a"]);
    ms.close().unwrap();
    assert_eq!(events.take(), ["a closed"]);
}

#[track_caller]
fn check_rollback(n: usize, k: usize, failure: Behavior) {
    let events = Events::default();
    let services: Vec<_> = (0..n)
        .map(|i| {
            let behavior = if i == k { failure } else { Behavior::Healthy };
            Recorder::new(&format!("s{i}"), behavior, &events)
        })
        .collect();

    let ms = MultiStart::new();
    let err = ms
        .start(&StartContext::background(), services.iter().cloned())
        .unwrap_err();

    assert_eq!(err.service(), Some(format!("s{k}").as_str()));
    assert_eq!(err.phase(), Some(Phase::Start));
    let mut expected: Vec<String> = (0..k).map(|i| format!("s{i} started")).collect();
    expected.push(match failure {
        Behavior::PanicOnStart => format!("s{k} start panic"),
        _ => format!("s{k} start failure"),
    });
    expected.extend((0..k).rev().map(|i| format!("s{i} closed")));
    assert_eq!(events.take(), expected, "n={n} k={k}");

    for (i, s) in services.iter().enumerate() {
        let (starts, closes) = (s.starts(), s.closes());
        match i.cmp(&k) {
            std::cmp::Ordering::Less => assert_eq!((starts, closes), (1, 1), "s{i}"),
            std::cmp::Ordering::Equal => assert_eq!((starts, closes), (1, 0), "s{i}"),
            std::cmp::Ordering::Greater => assert_eq!((starts, closes), (0, 0), "s{i}"),
        }
    }
    // Nothing left to close: a second close and the drop do nothing.
    ms.close().unwrap();
}

#[test]
fn rollback_at_every_position_closes_earlier_services_once_in_reverse() {
    for n in [1, 2, 5, 12] {
        for k in 0..n {
            check_rollback(n, k, Behavior::WontStart);
            check_rollback(n, k, Behavior::PanicOnStart);
        }
    }
}

#[test]
fn panics_in_start_and_close_during_rollback_become_errors() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::PanicOnClose, &events);
    let c = Recorder::new("c", Behavior::Healthy, &events);
    let d = Recorder::new("d", Behavior::PanicOnStart, &events);
    let e = Recorder::new("e", Behavior::Healthy, &events);

    let ms = MultiStart::new();
    let err = ms
        .start(
            &StartContext::background(),
            [a.clone(), b, c.clone(), d, e.clone()],
        )
        .unwrap_err();

    assert_eq!(
        events.take(),
        [
            "a started",
            "b started",
            "c started",
            "d start panic",
            "c closed",
            "b close panic",
            "a closed"
        ]
    );
    let kinds: Vec<_> = err
        .errors()
        .map(|e| (e.service().unwrap(), e.phase().unwrap(), e.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("d", Phase::Start, ErrorKind::Panicked),
            ("b", Phase::Close, ErrorKind::Panicked)
        ]
    );
    assert!(err
        .to_string()
        .contains("d: panicked in start: d panicked starting"));
    assert_eq!((a.closes(), c.closes(), e.starts()), (1, 1, 0));
}

#[test]
fn close_is_reverse_order_and_close_because_keeps_reason() {
    let events = Events::default();
    let s: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|n| Recorder::new(n, Behavior::Healthy, &events))
        .collect();
    let ms = MultiStart::new();
    ms.start(&StartContext::background(), s[..2].iter().cloned())
        .unwrap();
    ms.start(&StartContext::background(), s[2..].iter().cloned())
        .unwrap();
    assert_eq!(ms.names().len(), 3);
    events.take();

    let reason = lifecycle::Error::msg("operator asked");
    let err = ms.close_because(reason);
    assert_eq!(err.to_string(), "operator asked");
    assert_eq!(events.take(), ["z closed", "y closed", "x closed"]);
}

#[test]
fn close_because_joins_close_failures_after_reason() {
    let events = Events::default();
    let bad = Recorder::new("bad", Behavior::CloseFailure, &events);
    let ms = MultiStart::new();
    ms.start(&StartContext::background(), [bad]).unwrap();
    let err = ms.close_because(lifecycle::Error::msg("fatal"));
    assert_eq!(err.to_string(), "fatal; bad: close failed: close failure");
}

#[test]
fn drop_closes_started_services_in_reverse() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::CloseFailure, &events);
    {
        let ms = MultiStart::new();
        ms.start(&StartContext::background(), [a.clone(), b])
            .unwrap();
    } // dropped: closes b (which fails, logged) then a; never panics
    assert_eq!(
        events.take(),
        ["a started", "b started", "b close failure", "a closed"]
    );
    assert_eq!(a.closes(), 1);
}

#[test]
fn drop_during_a_panicking_test_closes_everything() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::PanicOnClose, &events);
    let services = [a.clone(), b.clone()];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let ms = MultiStart::new();
        ms.start(&StartContext::background(), services).unwrap();
        panic!("the test body fails halfway");
    }));
    assert!(result.is_err());
    assert_eq!((a.closes(), b.closes()), (1, 1));
    assert_eq!(
        events.take(),
        ["a started", "b started", "b close panic", "a closed"]
    );
}

#[test]
fn a_cancelled_context_stops_starting_and_rolls_back() {
    let events = Events::default();
    let shutdown = StopSignal::new();

    /// Requests a shutdown while it starts, as a signal arriving mid-start would.
    struct Trigger(Arc<Recorder>, StopSignal);
    impl lifecycle::HealthReporter for Trigger {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn ready(&self) -> lifecycle::Result<()> {
            self.0.ready()
        }
    }
    impl Service for Trigger {
        fn start(&self, ctx: &StartContext) -> lifecycle::Result<()> {
            self.0.start(ctx)?;
            self.1.stop();
            Ok(())
        }
        fn close(&self) -> lifecycle::Result<()> {
            self.0.close()
        }
    }

    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::Healthy, &events);
    let c = Recorder::new("c", Behavior::Healthy, &events);
    let services: Vec<Arc<dyn Service>> = vec![
        a.clone(),
        Arc::new(Trigger(b.clone(), shutdown.clone())),
        c.clone(),
    ];
    let ms = MultiStart::new();
    let err = ms
        .start(&StartContext::new(shutdown, None), services)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(err.service(), Some("c"));
    assert_eq!(err.to_string(), "c: start cancelled");
    assert_eq!(
        events.take(),
        ["a started", "b started", "b closed", "a closed"]
    );
    assert_eq!(c.starts(), 0);
}

#[test]
fn start_all_is_a_guard_that_closes_everything_when_a_test_panics() {
    let events = Events::default();
    let a = Recorder::new("a", Behavior::Healthy, &events);
    let b = Recorder::new("b", Behavior::Healthy, &events);
    let services = [a.clone(), b.clone()];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _guard = MultiStart::start_all(services).unwrap();
        panic!("the test fails with both services up");
    }));
    assert!(result.is_err());
    assert_eq!(
        events.take(),
        ["a started", "b started", "b closed", "a closed"]
    );
    assert_eq!((a.closes(), b.closes()), (1, 1));
}

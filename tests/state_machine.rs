//! StateMachine under contention: many threads calling start, close and guarded work on one
//! service at once, for thousands of rounds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;

use lifecycle::{ErrorKind, State, StateMachine};

const ROUNDS: usize = 2_000;
const THREADS: usize = 6;

#[derive(Default)]
struct Counters {
    start_bodies: AtomicUsize,
    close_bodies: AtomicUsize,
    guarded_runs: AtomicUsize,
    // Set while a start or close body runs; guarded work must never see it set.
    transition: AtomicBool,
    overlaps: AtomicUsize,
}

#[test]
fn concurrent_start_close_and_guarded_work_stay_consistent() {
    for round in 0..ROUNDS {
        let sm = StateMachine::new();
        let c = Counters::default();
        let barrier = Barrier::new(THREADS);

        let outcomes: Vec<(usize, Result<(), ErrorKind>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (sm, c, barrier) = (&sm, &c, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let result = match t % 3 {
                            0 => sm.start_once(|| {
                                c.transition.store(true, Ordering::SeqCst);
                                c.start_bodies.fetch_add(1, Ordering::SeqCst);
                                std::hint::spin_loop();
                                c.transition.store(false, Ordering::SeqCst);
                                Ok(())
                            }),
                            1 => sm.close_once(|| {
                                c.transition.store(true, Ordering::SeqCst);
                                c.close_bodies.fetch_add(1, Ordering::SeqCst);
                                std::hint::spin_loop();
                                c.transition.store(false, Ordering::SeqCst);
                                Ok(())
                            }),
                            _ => sm.if_started(|| {
                                if c.transition.load(Ordering::SeqCst)
                                    || c.close_bodies.load(Ordering::SeqCst) != 0
                                {
                                    c.overlaps.fetch_add(1, Ordering::SeqCst);
                                }
                                c.guarded_runs.fetch_add(1, Ordering::SeqCst);
                            }),
                        };
                        (t % 3, result.map_err(|e| e.kind()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });

        let starts = c.start_bodies.load(Ordering::SeqCst);
        let closes = c.close_bodies.load(Ordering::SeqCst);
        assert_eq!(starts, 1, "round {round}: some thread always starts it");
        assert!(closes <= 1, "round {round}: close body ran {closes} times");
        assert_eq!(c.overlaps.load(Ordering::SeqCst), 0, "round {round}");

        let ok_starts = outcomes
            .iter()
            .filter(|(k, r)| *k == 0 && r.is_ok())
            .count();
        let ok_closes = outcomes
            .iter()
            .filter(|(k, r)| *k == 1 && r.is_ok())
            .count();
        assert_eq!(ok_starts, 1, "round {round}");
        assert_eq!(ok_closes, closes, "round {round}");
        let ok_guarded = outcomes
            .iter()
            .filter(|(k, r)| *k == 2 && r.is_ok())
            .count();
        assert_eq!(
            ok_guarded,
            c.guarded_runs.load(Ordering::SeqCst),
            "round {round}: guarded work ran exactly when if_started said so"
        );
        for (kind, r) in &outcomes {
            match (kind, r) {
                (0, Err(e)) => assert_eq!(*e, ErrorKind::AlreadyStarted, "round {round}"),
                (1 | 2, Err(e)) => assert!(
                    matches!(e, ErrorKind::NotStarted | ErrorKind::AlreadyClosed),
                    "round {round}: {e:?}"
                ),
                _ => {}
            }
        }
        let expected = if closes == 1 {
            State::Closed
        } else {
            State::Started
        };
        assert_eq!(sm.state(), expected, "round {round}");
    }
}

#[test]
fn close_waits_for_a_start_in_progress() {
    // A close arriving while start runs must wait and then close the started service, not fail
    // with "cannot close a service that was never started".
    for _ in 0..200 {
        let sm = StateMachine::new();
        let (entered_tx, entered_rx) = crossbeam_channel::bounded(0);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|s| {
            let starter = s.spawn(|| {
                sm.start_once(|| {
                    entered_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(())
                })
            });
            entered_rx.recv().unwrap();
            let closer = s.spawn(|| sm.close_once(|| Ok(())));
            go_tx.send(()).unwrap();
            starter.join().unwrap().unwrap();
            closer.join().unwrap().unwrap();
        });
        assert_eq!(sm.state(), State::Closed);
    }
}

#[test]
fn a_close_that_joins_a_thread_doing_guarded_work_never_waits_for_it_in_return() {
    // The thread may have seen the machine started just before the close took the lock; the
    // close then joins it while it waits for that lock. The guarded call must give up once the
    // close has begun, or both wait forever. Bounded by the watchdog: a deadlock fails.
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("rounds".into())
        .spawn(move || {
            for _ in 0..20000 {
                let sm = std::sync::Arc::new(StateMachine::new());
                sm.start_once(|| Ok(())).unwrap();
                let stop = std::sync::Arc::new(AtomicBool::new(false));
                let (guarded, flag) = (sm.clone(), stop.clone());
                let worker = std::thread::spawn(move || {
                    while !flag.load(Ordering::SeqCst) {
                        let _ = guarded.if_started(std::hint::spin_loop);
                    }
                });
                sm.close_once(|| {
                    stop.store(true, Ordering::SeqCst);
                    worker.join().map_err(|_| "worker panicked")?;
                    Ok(())
                })
                .unwrap();
            }
            let _ = done_tx.send(());
        })
        .unwrap();
    done.recv_timeout(std::time::Duration::from_secs(60))
        .expect("a close and the guarded work it joins waited for each other");
}

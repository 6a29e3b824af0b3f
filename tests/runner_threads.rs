//! A run's call threads are reused and joined: many independent services start and close on a
//! few threads, a start that hangs is abandoned without holding the others back, and once the
//! run has returned (and the hung call has returned too) the process is back to the threads it
//! had before.
//!
//! Alone in its test binary, and one test, because thread counts are per process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procfs::{thread_count, threads_named, wait_thread_count};
use common::WATCHDOG;
use lifecycle::{
    HealthReporter, Result, Runner, Service, ServiceOptions, StartContext, StateMachine, Worker,
};

/// A service whose start returns only once the test releases it (or the watchdog passes).
struct Held {
    sm: StateMachine,
    release: crossbeam_channel::Receiver<()>,
    began: crossbeam_channel::Sender<()>,
}

impl HealthReporter for Held {
    fn name(&self) -> &str {
        "held"
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Held {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        // Ignores its context: only the test's release ends it.
        let _ = self.began.send(());
        let _ = self.release.recv_timeout(WATCHDOG);
        Ok(())
    }
    fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn workers(runner: Runner, n: usize, peak: &Arc<AtomicUsize>) -> Runner {
    (0..n).fold(runner, |runner, i| {
        let peak = Arc::clone(peak);
        let worker = Worker::new(format!("worker-{i}"), move |stop| {
            peak.fetch_max(thread_count(), Ordering::Relaxed);
            stop.wait();
            Ok(())
        });
        runner.service_with(worker, ServiceOptions::new().independent())
    })
}

#[test]
fn call_threads_are_reused_and_joined() {
    let baseline = thread_count();
    let n = 40;

    // Three runs of 40 independent services: each run starts 40 worker threads, and its 80
    // calls (40 starts, 40 closes) run on the run's few call threads.
    for round in 0..3 {
        let peak = Arc::new(AtomicUsize::new(0));
        let runner = workers(Runner::new().handle_signals(false), n, &peak);
        let handle = runner.handle();
        let report = std::thread::scope(|s| {
            s.spawn(|| {
                assert!(
                    handle.wait_running(WATCHDOG),
                    "round {round}: never running"
                );
                // Every worker runs now; the call threads are what the runner added.
                let calls = threads_named("lifecycle calls");
                assert!(
                    (1..=9).contains(&calls),
                    "round {round}: {calls} call threads for {n} starts (a manager and at \
                     most the floor of 8)"
                );
                handle.shutdown();
            });
            runner.run()
        });
        assert!(report.is_success(), "round {round}: {report:?}");
        assert!(report.abandoned_threads().is_empty(), "{report:?}");
        // The test's own thread, the workers, the call threads, the signal-less runner: far
        // fewer than a thread per call (the 80 calls of a run), however the starts overlap.
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak <= baseline + n + 12, "round {round}: peak {peak}");
        wait_thread_count(baseline, &format!("after round {round}"));
    }

    // A start that hangs past its timeout is abandoned; the others start and close meanwhile,
    // and the run returns, naming the call it left running.
    let (release_tx, release) = crossbeam_channel::bounded::<()>(1);
    let (began, held_began) = crossbeam_channel::bounded::<()>(1);
    let held = Held {
        sm: StateMachine::new(),
        release,
        began,
    };
    let peak = Arc::new(AtomicUsize::new(0));
    let runner = Runner::new().handle_signals(false).service_with(
        held,
        ServiceOptions::new()
            .independent()
            .start_timeout(Duration::from_millis(50)),
    );
    let runner = workers(runner, 10, &peak);
    let report = runner.run();
    held_began
        .recv_timeout(WATCHDOG)
        .expect("the held start began");
    assert!(!report.is_success(), "{report:?}");
    assert_eq!(report.abandoned_threads(), ["start held"], "{report:?}");
    // The hung call's thread is the only one left (with the relay's log thread, if it runs).
    release_tx.send(()).unwrap();
    wait_thread_count(baseline, "after the hung start returned");
}

//! 200 restarts leave no thread and no file descriptor behind: during the run the thread count
//! stays bounded (the run's pool reuses its threads, each instance's worker thread is joined by
//! its close), and once the run has ended the process is back to its baseline.
//!
//! Alone in this file (one test, one binary) because the counts are per process: other tests
//! running concurrently would start threads of their own.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procfs::{thread_count, wait_thread_count};
use common::WATCHDOG;
use lifecycle::{Runner, ServiceOptions, Worker};

const RESTARTS: usize = 200;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn two_hundred_restarts_leave_no_thread_and_no_descriptor_behind() {
    let baseline = thread_count();
    let fds = open_fds();
    let count = Arc::new(AtomicUsize::new(0));
    let (steady_tx, steady) = crossbeam_channel::bounded::<()>(1);
    let factory = {
        let count = count.clone();
        move || {
            let k = count.fetch_add(1, Ordering::SeqCst);
            let steady = steady_tx.clone();
            Worker::new("flaky", move |stop| {
                if k < RESTARTS {
                    return Err(format!("instance {k} fails").into());
                }
                let _ = steady.try_send(());
                stop.wait_timeout(2 * WATCHDOG);
                Ok(())
            })
        }
    };
    let options = ServiceOptions::new()
        .restart_backoff(Duration::from_micros(100), Duration::from_micros(100))
        .restart_on_failure();
    let runner = Runner::new()
        .handle_signals(false)
        .restart_budget(10 * RESTARTS as u32, Duration::from_secs(3600))
        .restartable(factory, options);
    let handle = runner.handle();
    // Its report comes within the watchdog, or the test fails.
    let (_, reports) = common::flaky::spawn_run(runner);
    steady
        .recv_timeout(WATCHDOG * 4)
        .expect("the instance after the last failure runs");
    // The run's pool and manager, this instance's thread, the test's run thread, the log
    // thread: a handful, not one per restart.
    let running = thread_count();
    assert!(
        running <= baseline + 16,
        "{running} threads during the run after {RESTARTS} restarts, baseline {baseline}"
    );
    handle.shutdown();
    let report = common::flaky::report(&reports);
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.services()[0].restarts().len(), RESTARTS);
    assert!(report.abandoned_threads().is_empty(), "{report:?}");
    assert_eq!(count.load(Ordering::SeqCst), RESTARTS + 1);
    wait_thread_count(baseline, "after the run");
    assert_eq!(open_fds(), fds, "file descriptors after the run");
}

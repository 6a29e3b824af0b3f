//! After closing, the process has exactly the threads it had before starting: every worker and
//! every close thread was joined. Alone in its test binary so no other test changes the count.

mod common;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::procfs::{thread_count, wait_thread_count};
use lifecycle::{
    close_all, HealthReporter, MultiStart, Result, Service, StartContext, StateMachine, StopSignal,
};
use parking_lot::Mutex;

/// A service running `workers` loop threads that wake every millisecond until stopped.
struct Workers {
    name: String,
    workers: usize,
    sm: StateMachine,
    stop: StopSignal,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    fn new(name: String, workers: usize) -> Arc<Workers> {
        Arc::new(Workers {
            name,
            workers,
            sm: StateMachine::new(),
            stop: StopSignal::new(),
            handles: Mutex::new(Vec::new()),
        })
    }
}

impl HealthReporter for Workers {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Workers {
    fn start(&self, _: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            for i in 0..self.workers {
                let stop = self.stop.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("{}-{i}", self.name))
                    .spawn(move || while !stop.wait_timeout(Duration::from_millis(1)) {})?;
                self.handles.lock().push(handle);
            }
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            for handle in self.handles.lock().drain(..) {
                handle.join().map_err(|_| "worker panicked")?;
            }
            Ok(())
        })
    }
}

#[test]
fn closing_leaves_no_thread_behind() {
    let before = thread_count();

    // Sequential close through MultiStart.
    let ms = MultiStart::new();
    let services = (0..8).map(|i| Workers::new(format!("w{i}"), 3));
    ms.start(&StartContext::background(), services).unwrap();
    assert_eq!(thread_count(), before + 24);
    ms.close().unwrap();
    wait_thread_count(before, "after MultiStart::close");

    // Concurrent close: close_all's own threads are joined too.
    let ms = MultiStart::new();
    let services = (0..8).map(|i| Workers::new(format!("c{i}"), 2));
    ms.start(&StartContext::background(), services).unwrap();
    assert_eq!(thread_count(), before + 16);
    close_all(ms.release()).unwrap();
    wait_thread_count(before, "after close_all");

    // Drop of a MultiStart closes and joins.
    {
        let ms = MultiStart::new();
        ms.start(&StartContext::background(), [Workers::new("d".into(), 4)])
            .unwrap();
        assert_eq!(thread_count(), before + 4);
    }
    wait_thread_count(before, "after dropping a MultiStart");
}

//! The test harness leaks no thread: alone in its test binary, so that the process's thread
//! count is this test's.

mod common;

use crossbeam_channel::bounded;
use lifecycle::testing::Harness;
use lifecycle::Worker;

use common::procfs::{thread_count, wait_thread_count};

#[test]
fn the_harness_leaks_no_thread() {
    let before = thread_count();
    let (closed_tx, closed) = bounded(4);
    let worker = |name: &'static str| {
        let closed = closed_tx.clone();
        Worker::new(name, move |stop| {
            stop.wait();
            closed.send(name)?;
            Ok(())
        })
    };
    let harness = Harness::start([worker("db"), worker("api")]).unwrap();
    // Two workers, the checker's poller and one poll worker per service (a start thread just
    // joined may still be counted for a moment).
    assert!(thread_count() >= before + 5);
    harness.check().unwrap();
    harness.close().unwrap();
    assert_eq!(closed.try_iter().collect::<Vec<_>>(), ["api", "db"]);
    wait_thread_count(before, "after the close");
}

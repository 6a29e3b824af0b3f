//! Slowloris at the endpoint's default options: attackers that hold half-sent request heads
//! open, as many as the connection cap (256) and then four times as many, reopening each within
//! 0.1 s whenever the server drops it. Kubelet-like probes are answered all the same, and the
//! endpoint adds no thread.
//!
//! Alone in its file, so alone in its process: it counts every thread of the process.

mod attack;
mod common;

use std::time::Duration;

use common::fixture::Fixture;
use common::procfs::{self, thread_count, threads_named};
use lifecycle::health::EndpointOptions;

/// The default connection cap.
const CAP: usize = 256;
/// Probes per attack, one after the other: at 99%, two may fail. (Under the attack at four
/// times the cap, a loaded machine takes tens of milliseconds per probe: the count keeps the
/// test bounded.)
const PROBES: usize = 200;
/// The pause between two probes.
const PAUSE: Duration = Duration::from_millis(10);

/// Asserts that the endpoint runs its two event-loop threads (the default), once each.
#[track_caller]
fn assert_endpoint_threads() {
    assert_eq!(threads_named("health http"), 1);
    assert_eq!(threads_named("health http 1"), 1);
    assert_eq!(threads_named("health http 2"), 0);
}

#[test]
fn slowloris_at_the_cap_and_at_four_times_the_cap_starves_no_probe_and_adds_no_thread() {
    // 1024 attacking connections are 2048 descriptors here, both ends being in this process.
    let limit = procfs::raise_fd_limit(8192);
    assert!(limit >= 2 * 4 * CAP as u64 + 256, "fd limit {limit}");
    for attackers in [CAP, 4 * CAP] {
        let f = Fixture::new(EndpointOptions::new());
        f.wait_ready();
        let threads_before = thread_count();
        assert_endpoint_threads();

        let attack = attack::slowloris::start(f.addr(), attackers);
        let tally = attack::probes(f.addr(), PROBES, PAUSE);
        let threads_during = thread_count() - attack.threads();
        assert_endpoint_threads();
        let report = attack.finish();
        eprintln!(
            "slowloris of {attackers}: {tally}; the attackers opened {} connections, {} of \
             them again after the server dropped one; threads before {threads_before}, during \
             {threads_during} (the attack's own left out)",
            report.opened, report.reopened
        );
        tally.assert_passed_at_least(99, &format!("a slowloris of {attackers}"));
        assert_eq!(threads_during, threads_before, "the endpoint added threads");
        drop(f);
    }
}

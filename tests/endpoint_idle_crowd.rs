//! Idle keep-alive clients at the endpoint's default options: 256 clients (the connection cap)
//! that each ask once, read the answer and stay connected, asking again every second. Kubelet-
//! like probes on fresh connections are answered all the same.

mod attack;
mod common;

use std::time::Duration;

use common::fixture::Fixture;
use lifecycle::health::EndpointOptions;

/// The default connection cap.
const CAP: usize = 256;

#[test]
fn idle_keep_alive_clients_at_the_cap_lock_no_probe_out() {
    common::procfs::raise_fd_limit(4096);
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    let crowd = attack::crowd::start(f.addr(), CAP, Duration::from_secs(1));
    let tally = attack::probes(f.addr(), 300, Duration::from_millis(10));
    let report = crowd.finish();
    eprintln!(
        "{CAP} idle keep-alive clients: {tally}; the clients opened {} connections, {} of them \
         again after the server closed one",
        report.opened, report.reopened
    );
    tally.assert_passed_at_least(99, "a crowd of idle keep-alive clients");
}

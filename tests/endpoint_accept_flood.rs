//! A connect-and-close flood at the endpoint's default options: every 50 ms, a burst of 768
//! connections, each closed by its client as soon as it is open. Kubelet-like probes are
//! answered `200` within their 1 s timeout all the same: the backlog absorbs the bursts (with
//! the 128 that mio and the standard library ask for, SYNs are dropped and probes wait for
//! the 1 s retry), and connections the clients have already closed take no slot.

mod attack;
mod common;

use std::time::Duration;

use common::fixture::Fixture;
use lifecycle::health::EndpointOptions;

/// Connections per burst: three times the default cap, six times the listen backlog that mio
/// and the standard library ask for, and within the endpoint's default of 1024.
const BURST: usize = 768;
/// How often a burst starts.
const EVERY: Duration = Duration::from_millis(50);

/// The default options; with metrics (when built with them) only to tell what became of the
/// flood's connections.
fn options() -> EndpointOptions {
    let options = EndpointOptions::new();
    #[cfg(feature = "metrics")]
    let options = options.metrics(lifecycle::metrics::Metrics::new());
    options
}

#[test]
fn a_connect_and_close_flood_delays_no_probe_past_its_timeout() {
    let f = Fixture::new(options());
    f.wait_ready();
    let flood = attack::flood::start(f.addr(), BURST, EVERY);
    let tally = attack::probes(f.addr(), 300, Duration::from_millis(10));
    let report = flood.finish();
    eprintln!(
        "a connect-and-close flood in bursts of {BURST}: {tally}; {} connections opened and \
         closed",
        report.opened
    );
    #[cfg(feature = "metrics")]
    {
        let metrics = common::http::get(f.addr(), "/metrics").body;
        let counters: Vec<&str> = (metrics.lines())
            .filter(|l| l.starts_with("lifecycle_health_endpoint_connections_"))
            .collect();
        eprintln!("what became of the connections: {counters:#?}");
    }
    tally.assert_passed_at_least(99, "a connect-and-close flood");
}

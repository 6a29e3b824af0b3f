//! A connect-and-close flood at the endpoint's default options: every 100 ms, a burst of 512
//! connections, each closed by its client as soon as it is open. Kubelet-like probes are
//! answered `200` within their 1 s timeout all the same: the backlog absorbs the bursts, and
//! connections the clients have already closed take no slot.

mod attack;
mod common;

use std::time::Duration;

use common::fixture::Fixture;
use lifecycle::health::EndpointOptions;

/// Connections per burst: more than the default cap, and four times the listen backlog that
/// the standard library and mio ask for.
const BURST: usize = 512;

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
    let flood = attack::flood::start(f.addr(), BURST);
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

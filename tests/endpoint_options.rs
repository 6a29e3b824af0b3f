//! The endpoint's options take any value a caller gives: durations over a day are taken as a
//! day, backlogs of any size are lowered to what the kernel holds; only what cannot work (a
//! zero timeout) fails the start, with an error, never a panic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fixture::Fixture;
use common::http;
use lifecycle::health::EndpointOptions;
use lifecycle::{HealthChecker, HealthEndpoint, Service, StartContext};

#[test]
fn durations_over_a_day_and_any_backlog_are_taken_and_served() {
    for options in [
        EndpointOptions::new()
            .head_read_timeout(Duration::MAX)
            .idle_timeout(Duration::MAX),
        EndpointOptions::new()
            .head_read_timeout(Duration::from_secs(365 * 24 * 3600))
            .idle_timeout(Duration::from_nanos(u64::MAX)),
        EndpointOptions::new().listen_backlog(0),
        EndpointOptions::new().listen_backlog(usize::MAX),
    ] {
        let f = Fixture::new(options.clone());
        let mut c = http::Client::connect(f.addr());
        assert_eq!(c.get("/livez").status, 200, "{options:?}");
        // Kept alive: the idle deadline far away did not overflow.
        assert_eq!(c.get("/livez").status, 200, "{options:?}");
        f.close();
    }
}

#[test]
fn a_zero_timeout_fails_the_start() {
    for options in [
        EndpointOptions::new().head_read_timeout(Duration::ZERO),
        EndpointOptions::new().idle_timeout(Duration::ZERO),
    ] {
        let checker = Arc::new(HealthChecker::new("1", "x"));
        let endpoint =
            HealthEndpoint::with_options("127.0.0.1:0".parse().unwrap(), checker, options);
        let e = endpoint.start(&StartContext::background()).unwrap_err();
        assert!(e.to_string().contains("more than zero"), "{e}");
        assert!(endpoint.local_addr().is_none());
    }
}

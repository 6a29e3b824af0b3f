//! The endpoint's connection counters in `/metrics`, at the default options: they appear, in
//! both formats, and move as head-less, idle and stalled connections are evicted to make room
//! and as connections their clients closed before the accept are dropped. Nothing is refused:
//! there is always a connection to evict.

#![cfg(feature = "metrics")]

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::time::Instant;

use common::fixture::Fixture;
use common::http::{self, Client};
use common::{eventually, prom, WATCHDOG};
use lifecycle::health::EndpointOptions;
use lifecycle::metrics::Metrics;

/// One peer's share of the default cap of 256: every client here is 127.0.0.1.
const SHARE: usize = 128;
/// More connections than that, so that some are evicted.
const CROWD: usize = SHARE + 16;
const EVICTED: &str = "lifecycle_health_endpoint_connections_evicted_total";

/// The value of the sample written `name` (with its labels) in a Prometheus exposition.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn evicted(text: &str, reason: &str) -> f64 {
    value(text, &format!("{EVICTED}{{reason=\"{reason}\"}}"))
}

fn scrape(f: &Fixture) -> String {
    let r = http::get(f.addr(), "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Scrapes until `done` holds for the exposition (under the watchdog); returns it.
#[track_caller]
fn scrape_until(f: &Fixture, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    eventually(what, || {
        last = scrape(f);
        done(&last)
    });
    last
}

/// Waits until the endpoint holds no connection but the scrape's own.
#[track_caller]
fn wait_until_alone(f: &Fixture) {
    scrape_until(f, "only the scrape's connection open", |t| {
        value(t, "lifecycle_health_endpoint_connections_open") <= 1.0
    });
}

/// Starts a client that pipelines requests and never reads, and sends crowds (each beyond the
/// peer's share) until the server has closed it, for whatever reason.
fn stalled_hog_meets_a_crowd(f: &Fixture) {
    let hog = Client::connect(f.addr());
    let mut writer = hog.stream.try_clone().unwrap();
    let (wrote, first_write) = mpsc::channel();
    let w = std::thread::spawn(move || {
        let batch = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
        // Until the server closes it (or the watchdog's write timeout).
        while writer.write_all(&batch).is_ok() {
            let _ = wrote.send(());
        }
    });
    first_write
        .recv_timeout(WATCHDOG)
        .expect("the hog writes its first requests");
    let deadline = Instant::now() + WATCHDOG;
    while !w.is_finished() {
        assert!(Instant::now() < deadline, "the hog is never closed");
        let crowd: Vec<Client> = (0..CROWD).map(|_| Client::connect(f.addr())).collect();
        drop(crowd);
    }
    w.join().unwrap();
}

#[test]
fn the_endpoint_counters_appear_in_metrics_and_follow_evictions() {
    common::procfs::raise_fd_limit(4096);
    let f = Fixture::new(EndpointOptions::new().metrics(Metrics::new()));
    f.wait_ready();
    let first = scrape(&f);
    for family in [
        "lifecycle_health_endpoint_connections_abandoned_total",
        "lifecycle_health_endpoint_connections_rejected_total",
        "lifecycle_health_endpoint_connections_timed_out_total",
        "lifecycle_health_endpoint_accept_errors_total",
        "lifecycle_health_endpoint_bad_requests_total",
    ] {
        assert_eq!(value(&first, family), 0.0, "{family}");
    }
    // The scrapes so far: wait_ready's and this one, which is open.
    assert_eq!(
        value(
            &first,
            "lifecycle_health_endpoint_connections_accepted_total"
        ),
        2.0
    );
    assert_eq!(
        value(&first, "lifecycle_health_endpoint_connections_open"),
        1.0
    );
    for reason in ["head_less", "idle", "stalled"] {
        assert_eq!(evicted(&first, reason), 0.0, "{reason}");
    }

    // Silent connections beyond the peer's share: the oldest make room for the newest.
    let silent: Vec<Client> = (0..CROWD).map(|_| Client::connect(f.addr())).collect();
    // Once every one has been taken in, the peer holds its share, the scrape's connection
    // included.
    scrape_until(&f, "head-less evictions, and the peer at its share", |t| {
        evicted(t, "head_less") >= (CROWD - SHARE) as f64
            && value(t, "lifecycle_health_endpoint_connections_open") <= SHARE as f64
    });
    drop(silent);
    wait_until_alone(&f);

    // Idle keep-alive clients beyond it, each answered once.
    let idle: Vec<Client> = (0..CROWD)
        .map(|_| {
            let mut c = Client::connect(f.addr());
            assert_eq!(c.get("/livez").status, 200);
            c
        })
        .collect();
    scrape_until(&f, "idle evictions", |t| {
        evicted(t, "idle") >= (CROWD - SHARE) as f64
    });
    drop(idle);
    wait_until_alone(&f);

    // A client that pipelines requests and never reads its answers is stalled once its
    // answers fill the socket, and then it is the least recently active when a crowd comes.
    // Until then it may be evicted for having half a head buffered: a new one then tries.
    eventually("a stalled eviction", || {
        stalled_hog_meets_a_crowd(&f);
        evicted(&scrape(&f), "stalled") >= 1.0
    });
    wait_until_alone(&f);

    // Connected and closed at once: most are closed before the accept, and take no slot.
    eventually("a connection dropped at the accept", || {
        drop(std::net::TcpStream::connect(f.addr()).unwrap());
        let t = scrape(&f);
        value(&t, "lifecycle_health_endpoint_connections_abandoned_total") >= 1.0
    });

    let last = scrape(&f);
    // Nothing was refused: there was always a connection to evict.
    assert_eq!(
        value(
            &last,
            "lifecycle_health_endpoint_connections_rejected_total"
        ),
        0.0
    );
    assert!(
        value(
            &last,
            "lifecycle_health_endpoint_connections_accepted_total"
        ) > (3 * CROWD) as f64
    );
    assert!(value(&last, "lifecycle_health_endpoint_requests_total") >= CROWD as f64);

    // Both formats parse, with the families typed as they should be.
    for (format, accept) in [
        ("prometheus", None),
        (
            "openmetrics",
            Some("application/openmetrics-text; version=1.0.0"),
        ),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let r = http::request_with(f.addr(), "GET", "/metrics", &headers);
        let Some(families) = prom::parse(format, &r.body) else {
            continue;
        };
        let typ = |name: &str| {
            let family = families.iter().find(|fam| fam.name == name);
            family
                .map(|fam| fam.typ.clone())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(typ("lifecycle_health_endpoint_connections_open"), "gauge");
        assert_eq!(
            typ("lifecycle_health_endpoint_connections_evicted"),
            "counter"
        );
        assert_eq!(
            typ("lifecycle_health_endpoint_connections_rejected"),
            "counter"
        );
    }
}

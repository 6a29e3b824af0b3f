//! Slowloris against the health endpoint's deadlines: hundreds of connections that send part of
//! a request head, or nothing, and then wait. With room for all of them, the server holds every
//! one, keeps its fixed number of threads (two event loops by default), and drops them after its
//! head-read deadline. The cap is raised above the attack on purpose: this is about deadlines
//! and threads; `endpoint_slowloris.rs` attacks the default cap.
//!
//! Alone in its file, so alone in its process: it counts every thread of the process.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::fixture::{assert_health_json, Fixture};
use common::http::{self, Client};
use common::procfs::{self, thread_count, threads_named};
use common::{eventually, WATCHDOG};
use lifecycle::health::EndpointOptions;

const PARTIAL: usize = 500;
const SILENT: usize = 100;
/// Room for every one of them and the probes: one peer (every client here is 127.0.0.1) may
/// hold half the cap, each event loop about half of that.
const CAP: usize = 4 * (PARTIAL + SILENT);
/// The endpoint's threads at the default of two event loops: the accepting loop, and the other.
const THREADS: [&str; 2] = ["health http", "health http 1"];

/// Asserts that each of the endpoint's threads runs, once, and no more of them.
#[track_caller]
fn assert_endpoint_threads() {
    for name in THREADS {
        assert_eq!(threads_named(name), 1, "threads named {name:?}");
    }
    assert_eq!(threads_named("health http 2"), 0);
}

/// 500 connections that send a partial head, then 100 that send nothing.
fn slowloris(f: &Fixture) -> Vec<Client> {
    (0..PARTIAL + SILENT)
        .map(|i| {
            let mut c = Client::connect(f.addr());
            if i < PARTIAL {
                c.send("GET /readyz HTTP/1.1\r\nHost: x\r\n");
            }
            c
        })
        .collect()
}

/// A probe on a fresh connection, answered with a passing `/readyz`.
#[track_caller]
fn probe(f: &Fixture) {
    let r = Client::connect(f.addr()).get("/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    assert_health_json(&r, "readiness of every check");
}

#[test]
fn slowloris_with_room_starves_no_probe_adds_no_thread_and_is_dropped_after_the_deadline() {
    // 600 connections are 1200 descriptors in this process, both ends being here.
    let limit = procfs::raise_fd_limit(4096);
    assert!(
        limit >= 2 * (PARTIAL + SILENT) as u64 + 100,
        "fd limit {limit}"
    );

    // 1. Deadlines far away: the connections stay while probes come and go.
    let f = Fixture::new(
        EndpointOptions::new()
            .max_connections(CAP)
            .head_read_timeout(Duration::from_secs(120))
            .idle_timeout(Duration::from_secs(120)),
    );
    f.wait_ready();
    let threads_before = thread_count();
    assert_endpoint_threads();

    let mut idle = slowloris(&f);
    // Connections are accepted in order, so once this probe is answered, all 600 have been.
    probe(&f);
    let threads_during = thread_count();
    assert_endpoint_threads();
    // And the server holds every one of them open (none was refused or dropped).
    for (i, c) in idle.iter_mut().enumerate() {
        c.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match c.stream.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("slowloris connection {i} was not held open: {other:?}"),
        }
        c.stream.set_nonblocking(false).unwrap();
    }
    for _ in 0..10 {
        probe(&f);
        assert_health_json(&Client::connect(f.addr()).get("/livez"), "liveness");
    }
    assert_endpoint_threads();
    drop(idle);
    probe(&f);
    let threads_after = thread_count();
    assert_endpoint_threads();
    eprintln!(
        "slowloris, held: threads before {threads_before}, during {threads_during}, \
         after {threads_after}; endpoint threads {THREADS:?}, one each throughout"
    );
    assert!(
        threads_during <= threads_before + 2,
        "{threads_before} threads before, {threads_during} with {} slowloris connections",
        PARTIAL + SILENT
    );
    assert!(threads_after <= threads_before + 2);
    drop(f);

    // 2. Short deadlines: the server drops every one of them.
    let f = Fixture::new(
        EndpointOptions::new()
            .max_connections(CAP)
            .head_read_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(300)),
    );
    f.wait_ready();
    let threads_before = thread_count();
    assert_endpoint_threads();
    let mut idle = slowloris(&f);
    let threads_during = thread_count();
    assert_endpoint_threads();
    // Closed by the server (EOF or reset, with no answer), all within the watchdog.
    let deadline = Instant::now() + WATCHDOG;
    for (i, c) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        c.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        match c.stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if http::is_reset(&e) => {}
            other => {
                panic!("slowloris connection {i} was not dropped within {WATCHDOG:?}: {other:?}")
            }
        }
    }
    // Probes still work; its head-read clock is short, so a probe that a loaded machine delays
    // past it is cut, and sent again.
    eventually("a probe is answered", || {
        let mut c = Client::connect(f.addr());
        let sent =
            std::io::Write::write_all(&mut c.stream, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        let Some(r) = sent.ok().and_then(|()| c.reply()) else {
            return false;
        };
        assert_eq!(r.status, 200, "{r:?}");
        assert_health_json(&r, "readiness of every check");
        true
    });
    let threads_after = thread_count();
    assert_endpoint_threads();
    eprintln!(
        "slowloris, dropped: threads before {threads_before}, during {threads_during}, \
         after {threads_after}"
    );
    assert!(threads_during <= threads_before + 2);
    assert!(threads_after <= threads_before + 2);
}

//! The limits: refused when invalid, and each one enforced.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{is_reset, serve, status_kib, wait_until, WATCHDOG};
use crate::http::limits::MAX_TIMEOUT;
use crate::http::{Handler, Limits, Request, Response, Server, MAX_EVENT_LOOPS};

#[test]
fn invalid_limits_are_refused() {
    let handler: Handler = Arc::new(|_: &Request<'_>| Response::text(200, "ok").into());
    for limits in [
        Limits::new().max_connections(0),
        Limits::new().max_head_bytes(10),
        Limits::new().head_read_timeout(Duration::ZERO),
        Limits::new().keep_alive_idle_timeout(Duration::ZERO),
        Limits::new().max_connections_per_peer(0),
        Limits::new().max_requests_per_connection(Some(0)),
        Limits::new().event_loops(0),
        Limits::new().event_loops(MAX_EVENT_LOOPS + 1),
    ] {
        let e = Server::bind("127.0.0.1:0", limits, Arc::clone(&handler), "t-invalid").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

#[test]
fn timeouts_over_a_day_are_taken_as_a_day() {
    let limits = Limits::new()
        .head_read_timeout(Duration::MAX)
        .keep_alive_idle_timeout(Duration::from_secs(365 * 24 * 3600))
        .write_timeout(Duration::MAX)
        .answer_timeout(MAX_TIMEOUT + Duration::from_nanos(1));
    for t in [
        limits.head_read_timeout,
        limits.keep_alive_idle_timeout,
        limits.write_timeout,
        limits.answer_timeout,
    ] {
        assert_eq!(t, MAX_TIMEOUT);
    }
    // The deadlines they make never overflow: a connection is served and kept.
    let f = serve(limits, "t-day");
    let mut c = f.client();
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/again").status, 200);
}

#[test]
fn max_requests_per_connection_cuts_a_pipeline() {
    let limits = Limits::new().max_requests_per_connection(Some(100));
    let f = serve(limits, "t-maxreq");
    let mut c = f.client();
    let all: String = (0..300)
        .map(|i| format!("GET /r/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    c.send(all);
    for i in 0..100 {
        let r = c.reply(false).unwrap();
        assert_eq!(r.body(), format!("GET /r/{i}\n"));
        assert_eq!(r.closes(), i == 99, "reply {i}");
    }
    assert!(c.until_closed().is_empty());
    assert_eq!(f.calls(), 100);
}

#[test]
fn an_endless_header_line_is_cut_and_memory_stays_flat() {
    const FLOODERS: usize = 4;
    const FLOOD: usize = 64 * 1024 * 1024;
    let f = serve(Limits::new(), "t-flood");
    let rss_before = status_kib("VmRSS");
    let written: Vec<usize> = std::thread::scope(|s| {
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|_| {
                let mut c = f.client();
                s.spawn(move || {
                    c.send("GET / HTTP/1.1\r\nHost: t\r\nX-Flood: ");
                    let chunk = [b'a'; 64 * 1024];
                    let mut written = 0;
                    while written < FLOOD {
                        match c.stream.write(&chunk) {
                            Ok(n) => written += n,
                            Err(e) if is_reset(&e) => break,
                            Err(e) => panic!("flood write: {e}"),
                        }
                    }
                    // The answer is a 431, unless the reset got here first.
                    if let Some(r) = c.reply(false) {
                        assert_eq!(r.status, 431);
                    }
                    written
                })
            })
            .collect();
        // Others are served meanwhile.
        assert_eq!(f.client().get("/during").status, 200);
        flooders.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rss_after = status_kib("VmRSS");
    let stats = f.server.stats();
    eprintln!(
        "flood: written per client {written:?} bytes; server read {} bytes; \
         VmRSS {rss_before} kB -> {rss_after} kB; VmHWM {} kB",
        stats.bytes_read,
        status_kib("VmHWM")
    );
    assert!(
        written.iter().all(|&w| w < FLOOD),
        "the server cut every flood"
    );
    assert_eq!(stats.bad_requests, FLOODERS as u64);
    // Per flooder: one head buffer, then what lingering discards, plus one read of slack.
    let per_flooder = 8 * 1024 + 64 * 1024 + 16 * 1024;
    assert!(stats.bytes_read <= (FLOODERS * per_flooder + 1024) as u64);
    // Tests running alongside allocate too; tiny_http grew by the whole flood.
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(growth_kib < 16 * 1024, "VmRSS grew by {growth_kib} kB");
    assert_eq!(f.client().get("/after").status, 200);
}

#[test]
fn slow_heads_are_cut_after_the_head_read_timeout() {
    let limits = Limits::new().head_read_timeout(Duration::from_millis(200));
    let f = serve(limits, "t-headtime");

    let mut silent = f.client();
    let mut partial = f.client();
    partial.send("GET / HTTP/1.1\r\nHost: t\r\n");
    assert!(silent.until_closed().is_empty());
    assert!(partial.until_closed().is_empty());

    // A slowloris sends a byte every 20 ms: steady progress, but never a complete head.
    let mut slow = f.client();
    slow.send("GET / HTTP/1.1\r\n");
    let deadline = Instant::now() + WATCHDOG;
    let cut = loop {
        if slow.stream.write_all(b"X").is_err() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(cut, "a slowloris must be cut");
    wait_until("three timeouts counted", || f.server.stats().timed_out == 3);
    assert_eq!(f.server.stats().open_connections, 0);
    assert_eq!(f.calls(), 0);
}

#[test]
fn idle_keep_alive_connections_are_closed_after_their_timeout() {
    // A long head-read timeout, so that the request is answered however slow the machine.
    let limits = Limits::new()
        .head_read_timeout(Duration::from_secs(60))
        .keep_alive_idle_timeout(Duration::from_millis(200));
    let f = serve(limits, "t-idletime");
    let mut kept = f.client();
    assert_eq!(kept.get("/").status, 200);
    assert!(kept.until_closed().is_empty());
    wait_until("one timeout counted", || f.server.stats().timed_out == 1);
    assert_eq!(f.server.stats().open_connections, 0);
}

#[test]
fn a_client_that_does_not_read_is_cut_after_the_write_timeout() {
    let limits = Limits::new().write_timeout(Duration::from_millis(200));
    let f = serve(limits, "t-writetime");
    let mut c = f.client();
    // 16 MiB is more than the socket buffers hold; the client never reads it.
    c.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the write to time out", || f.server.stats().timed_out == 1);
    assert_eq!(f.server.stats().open_connections, 0);
    let received = c.until_closed();
    assert!(received.len() < 16 << 20, "the answer was cut");
}

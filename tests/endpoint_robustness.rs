//! The health endpoint against hostile or broken clients, through the public API over real
//! sockets on 127.0.0.1: garbage request lines, the HTTP/2 preface, conflicting framing headers,
//! a flood of pipelined requests, a client that never reads, and the connection cap.
//!
//! The endless header line and the slowloris tests measure the whole process (peak memory,
//! threads), so each lives in a file of its own: `endpoint_memory.rs`, `endpoint_slowloris.rs`.
//!
//! Every wait is bounded by a watchdog (a socket timeout or a deadline): a broken endpoint fails
//! a test instead of hanging it, and no test asks the machine to be fast.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::eventually;
use common::fixture::{assert_health_json, Fixture};
use common::http::{self, Client};
use lifecycle::health::EndpointOptions;

/// A request the endpoint must answer with a passing `/readyz`, on a fresh connection.
#[track_caller]
fn assert_still_serving(f: &Fixture) {
    let r = Client::connect(f.addr()).get("/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    assert_health_json(&r, "readiness of every check");
}

/// Sends `bytes` on a fresh connection (without closing our side) and reads what comes back:
/// `None` if the server closed without answering, or its one answer, after which the server
/// must close the connection (unless the answer keeps it open).
fn send_on_fresh_connection(f: &Fixture, bytes: &[u8]) -> Option<http::Reply> {
    let mut c = Client::connect(f.addr());
    // The server may close (even reset) before it has read everything; that is an answer too.
    if let Err(e) = c.stream.write_all(bytes) {
        assert!(http::is_reset(&e), "send: {e}");
    }
    let reply = c.reply();
    if reply
        .as_ref()
        .is_none_or(|r| r.header("connection") == Some("close"))
    {
        let rest = c.until_closed();
        assert!(
            rest.is_empty(),
            "after its answer, the server sent {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    reply
}

/// Bytes that look like nothing in particular, always the same.
fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[test]
fn garbage_request_lines_get_a_4xx_or_a_close_and_serving_goes_on() {
    // The lone empty lines are skipped as leading noise (RFC 9112 §2.2) and the connection
    // waits for a request line until the head-read timeout: short here so the test is too.
    let f = Fixture::new(EndpointOptions::new().head_read_timeout(Duration::from_secs(1)));
    f.wait_ready();
    let mut binary = junk(4096, 7);
    binary[0] = 0; // not a token character, whatever the seed gives
    let tls_client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0xde, 0xad, 0xbe, 0xef,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let long_method = format!("{} /readyz HTTP/1.1\r\nHost: x\r\n\r\n", "A".repeat(200));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("lone empty lines", b"\r\n\r\n".to_vec()),
        ("binary junk", binary),
        ("binary junk ending in an empty line", {
            let mut j = junk(300, 11);
            j[0] = 0xff;
            j.extend_from_slice(b"\r\n\r\n");
            j
        }),
        ("TLS ClientHello", tls_client_hello.to_vec()),
        (
            "NUL in the target",
            b"GET /re\0adyz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("no target, no version", b"GET\r\n\r\n".to_vec()),
        ("no version (HTTP/0.9)", b"GET /readyz\r\n\r\n".to_vec()),
        (
            "garbage version",
            b"GET /readyz HTXP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "spaces everywhere",
            b"G E T / H T T P / 1 . 1\r\n\r\n".to_vec(),
        ),
        (
            "header without a colon",
            b"GET /readyz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
        ),
        (
            "header name with a space",
            b"GET /readyz HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /readyz HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "two Hosts",
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        ),
        (
            "invalid Content-Length",
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        (
            "huge Content-Length",
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
        ),
        ("200-character method", long_method.into_bytes()),
        ("a lone CR", b"\r".to_vec()),
        ("DEL bytes", vec![0x7f; 64]),
    ];
    for (name, bytes) in &cases {
        match send_on_fresh_connection(&f, bytes) {
            None => {}
            // A long method is still a method: one the endpoint does not recognise.
            Some(r) if *name == "200-character method" => assert_eq!(r.status, 501, "{name}"),
            Some(r) => assert!(
                (400..500).contains(&r.status),
                "{name}: answered {} {:?}",
                r.status,
                r.body
            ),
        }
        // Each is on its own connection; the endpoint goes on serving others.
        assert_still_serving(&f);
    }
}

#[test]
fn an_http2_preface_is_closed_and_serving_goes_on() {
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    // Prior knowledge: the preface, then an empty SETTINGS frame, as a real client sends.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for bytes in [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &preface] {
        // An HTTP/2 client would not understand an HTTP/1.1 answer: closed without one.
        let r = send_on_fresh_connection(&f, bytes);
        assert!(r.is_none(), "answered the HTTP/2 preface: {r:?}");
        assert_still_serving(&f);
    }
    // Another major version on an HTTP/1-shaped request line: 505 and closed.
    let r = send_on_fresh_connection(&f, b"GET /readyz HTTP/2.0\r\nHost: x\r\n\r\n");
    let r = r.expect("an answer to HTTP/2.0 on a request line");
    assert_eq!(r.status, 505);
    assert_eq!(r.header("connection"), Some("close"));
    assert_still_serving(&f);
}

#[test]
fn conflicting_framing_headers_get_400_and_a_close() {
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    // Each ends with what a smuggler would hide behind the ambiguous body: it must never be
    // answered as a request of its own.
    let smuggled = "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        format!(
            "GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "GET /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
             Content-Length: 34\r\n\r\n{smuggled}"
        ),
        format!("GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 34\r\n\r\n{smuggled}"),
    ];
    for case in &cases {
        let mut c = Client::connect(f.addr());
        c.send(case);
        let r = c.reply().unwrap_or_else(|| panic!("no answer to {case:?}"));
        assert_eq!(r.status, 400, "{case:?}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{case:?}");
        // Then closed, with nothing more: the smuggled request was not answered.
        let rest = c.until_closed();
        assert!(
            rest.is_empty(),
            "{case:?}: then {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert_still_serving(&f);
    }
}

#[test]
fn invalid_host_values_and_fragments_get_400_and_a_close_valid_hosts_are_served() {
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    // RFC 9112 §3.2: a Host that is not `uri-host [ ":" port ]` is answered 400.
    for host in ["a b", "a/b", "[::1", "a@b", "::1", "[::1]:http"] {
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let r = send_on_fresh_connection(&f, request.as_bytes())
            .unwrap_or_else(|| panic!("Host: {host}: closed without an answer"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, "invalid Host\n"),
            "Host: {host}"
        );
        assert_eq!(r.header("connection"), Some("close"), "Host: {host}");
    }
    // A fragment is not part of a request target: refused, not guessed at.
    let r = send_on_fresh_connection(&f, b"GET /readyz#top HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("an answer to a target with a fragment");
    assert_eq!(r.status, 400, "{r:?}");
    for host in [
        "localhost",
        "127.0.0.1:8080",
        "[::1]:80",
        "example.com",
        "[2001:db8::1]",
        "",
    ] {
        let mut c = Client::connect(f.addr());
        c.send(format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        let r = c
            .reply()
            .unwrap_or_else(|| panic!("Host: {host}: no answer"));
        assert_eq!(r.status, 200, "Host: {host}: {r:?}");
        assert_health_json(&r, "readiness of every check");
        // Kept alive: the next request on the connection is served too.
        assert_health_json(&c.get("/livez"), "liveness");
    }
    assert_still_serving(&f);
}

#[test]
fn thousands_of_pipelined_requests_are_all_answered_in_order() {
    const REQUESTS: usize = 5000;
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    // Mostly /readyz, every seventh /livez, so that the order of the answers shows.
    let path = |i: usize| if i % 7 == 3 { "/livez" } else { "/readyz" };
    let mut all = Vec::new();
    for i in 0..REQUESTS {
        write!(all, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path(i)).unwrap();
    }
    let mut c = Client::connect(f.addr());
    let mut writer = c.stream.try_clone().unwrap();
    std::thread::scope(|s| {
        // Written from another thread while this one reads, or both sides' buffers fill up.
        let w = s.spawn(move || writer.write_all(&all));
        for i in 0..REQUESTS {
            let r = c
                .reply()
                .unwrap_or_else(|| panic!("the connection ended after {i} answers"));
            let description = match path(i) {
                "/livez" => "liveness",
                _ => "readiness of every check",
            };
            assert_health_json(&r, description);
            assert_ne!(r.header("connection"), Some("close"), "answer {i}");
        }
        w.join().unwrap().expect("writing the requests");
    });
    // Exactly one answer per request: once we are done sending, the server closes with nothing
    // more.
    c.stream.shutdown(Shutdown::Write).unwrap();
    let rest = c.until_closed();
    assert!(
        rest.is_empty(),
        "after {REQUESTS} answers: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_still_serving(&f);
}

#[test]
fn a_client_that_never_reads_its_answers_does_not_wedge_the_endpoint() {
    /// How long the writer must make no progress to count as stuck.
    const STILL: Duration = Duration::from_millis(500);
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    let hog = Client::connect(f.addr());
    let mut writer = hog.stream.try_clone().unwrap();
    let written = AtomicU64::new(0);
    let writer_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Pipelines requests without end and never reads: the writes block once the server
        // stops taking requests (its answers are not being read), or fail when it gives up.
        let w = s.spawn(|| {
            let batch = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
            let result = loop {
                match writer.write(&batch) {
                    Ok(n) => written.fetch_add(n as u64, Ordering::SeqCst),
                    Err(e) => break e,
                };
            };
            writer_done.store(true, Ordering::SeqCst);
            result
        });
        // Wait until the writer is stuck, no byte written for half a second: the server has
        // stopped reading from it (backpressure) rather than buffering its answers without
        // bound.
        let mut last = 0;
        let mut since = Instant::now();
        eventually(
            "the server stops taking requests from a client that never reads",
            || {
                let now = written.load(Ordering::SeqCst);
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                writer_done.load(Ordering::SeqCst) || since.elapsed() >= STILL
            },
        );
        eprintln!(
            "a client that never reads: stalled after {last} bytes of requests \
             (writer ended: {})",
            writer_done.load(Ordering::SeqCst)
        );
        // Meanwhile, everyone else is served.
        for _ in 0..20 {
            assert_still_serving(&f);
        }
        let mut other = Client::connect(f.addr());
        for _ in 0..20 {
            assert_health_json(&other.get("/livez"), "liveness");
        }
        // Unblock the writer (if the server's write timeout has not cut it already).
        let _ = hog.stream.shutdown(Shutdown::Both);
        let e = w.join().unwrap();
        assert!(
            http::is_reset(&e) || e.kind() == std::io::ErrorKind::NotConnected,
            "the writer ended with {e}"
        );
    });
    assert_still_serving(&f);
}

/// Whether the server holds `c` open and has sent it nothing unread: a look, not a wait (on
/// 127.0.0.1, a close the server made before a later answer has arrived by then).
fn held_open(c: &Client) -> bool {
    c.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let held = matches!(
        std::io::Read::read(&mut &c.stream, &mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    c.stream.set_nonblocking(false).unwrap();
    held
}

#[test]
fn connections_over_the_cap_make_room_and_one_peer_holds_half_of_it() {
    const CAP: usize = 16;
    let f = Fixture::new(
        EndpointOptions::new()
            .max_connections(CAP)
            // The held connections must not time out while the test runs, however slowly.
            .head_read_timeout(Duration::from_secs(300))
            .idle_timeout(Duration::from_secs(300)),
    );
    f.wait_ready();
    // Twice the cap, one after the other, each asking once and then idle: none is refused.
    let mut clients: Vec<Client> = (0..2 * CAP)
        .map(|_| {
            let mut c = Client::connect(f.addr());
            assert_health_json(&c.get("/livez"), "liveness");
            c
        })
        .collect();
    // One peer (every client here is 127.0.0.1) holds half the cap: each newcomer took the
    // place of the peer's least recently active connection, so the newest half-cap is open.
    let open: Vec<usize> = (0..2 * CAP).filter(|&i| held_open(&clients[i])).collect();
    assert_eq!(open, (2 * CAP - CAP / 2..2 * CAP).collect::<Vec<_>>());
    for c in &mut clients[2 * CAP - CAP / 2..] {
        assert_health_json(&c.get("/readyz"), "readiness of every check");
    }
    // The evicted were closed without an answer.
    for c in &mut clients[..CAP] {
        assert!(c.until_closed().is_empty());
    }
    // And probes, each on a fresh connection, are answered, never refused.
    for _ in 0..10 {
        assert_still_serving(&f);
    }
}

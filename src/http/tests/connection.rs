//! One connection's protocol: framing, `HEAD`, keep-alive, pipelining, and what is refused.

use std::io::Write;

use super::{serve, Fixture};
use crate::http::Limits;

#[test]
fn get_is_answered_with_body_and_framing() {
    let f = serve(Limits::new(), "t-get");
    let reply = f.client().get("/healthz?verbose");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body(), "GET /healthz?verbose\n");
    assert_eq!(reply.header("content-length"), Some("21"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("connection"), None);
    assert_eq!(f.calls(), 1);
}

#[test]
fn head_has_the_get_length_and_no_body() {
    let f = serve(Limits::new(), "t-head");
    let mut c = f.client();
    c.send("HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.reply(true).unwrap();
    // The next reply parses from the very next byte: the HEAD answer carried no body.
    let get = c.get("/x");
    assert_eq!((head.status, get.status), (200, 200));
    assert_eq!(get.body(), "GET /x\n");
    // The handler's body for HEAD is "HEAD /x\n": its length is sent, not its bytes.
    assert_eq!(head.header("content-length"), Some("8"));
    assert_eq!(head.header("content-type"), get.header("content-type"));
}

#[test]
fn keep_alive_and_connection_close() {
    let f = serve(Limits::new(), "t-keepalive");
    let mut c = f.client();
    for i in 0..5 {
        let r = c.get(&format!("/{i}"));
        assert_eq!(r.body(), format!("GET /{i}\n"));
        assert!(!r.closes());
    }
    assert_eq!(f.server.stats().accepted, 1);

    c.send("GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(c.reply(false).unwrap().closes());
    assert!(c.until_closed().is_empty());

    // HTTP/1.0 closes unless asked to keep the connection.
    let mut c = f.client();
    c.send("GET /a HTTP/1.0\r\n\r\n");
    assert!(c.reply(false).unwrap().closes());
    assert!(c.until_closed().is_empty());

    let mut c = f.client();
    c.send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.reply(false).unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.reply(false).unwrap().body(), "GET /b\n");
}

#[test]
fn thousands_of_pipelined_requests_are_answered_in_order() {
    const N: usize = 3000;
    let f = serve(Limits::new(), "t-pipeline");
    let mut c = f.client();
    let all: String = (0..N)
        .map(|i| format!("GET /r/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    let mut writer = c.stream.try_clone().unwrap();
    std::thread::scope(|s| {
        // Written in one go while the replies are read, so neither side's buffers must hold
        // everything.
        s.spawn(move || writer.write_all(all.as_bytes()).expect("pipelined write"));
        for i in 0..N {
            let r = c.reply(false).expect("a reply for every request");
            assert_eq!(r.body(), format!("GET /r/{i}\n"));
        }
    });
    assert_eq!(c.get("/after").status, 200);
    assert_eq!(f.server.stats().requests, N as u64 + 1);
}

/// Sends `request` on a new connection; expects `status` (or no answer for `None`), then the
/// connection to close.
#[track_caller]
fn check_refused(f: &Fixture, request: &[u8], status: Option<u16>) {
    let mut c = f.client();
    c.send(request);
    if let Some(status) = status {
        let r = c.reply(false).expect("an answer");
        assert_eq!(
            r.status,
            status,
            "for {:?}",
            String::from_utf8_lossy(request)
        );
        assert!(r.closes());
    }
    assert!(c.until_closed().is_empty(), "nothing after the answer");
}

#[test]
fn malformed_requests_are_refused_without_calling_the_handler() {
    let f = serve(Limits::new(), "t-malformed");
    let cases: &[(&[u8], Option<u16>)] = &[
        (b"GARBAGE\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", Some(400)),
        (b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.0\r\nHost: t\r\nHost: t\r\n\r\n", Some(400)),
        (b"GET /#fragment HTTP/1.1\r\nHost: t\r\n\r\n", Some(400)),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", Some(505)),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Some(400),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Some(400),
        ),
    ];
    for (request, status) in cases {
        check_refused(&f, request, *status);
    }
    let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    check_refused(
        &f,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
        Some(431),
    );
    let long = "a".repeat(9000);
    check_refused(
        &f,
        format!("GET /{long} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        Some(431),
    );
    assert_eq!(f.calls(), 0);
    assert_eq!(f.server.stats().bad_requests, cases.len() as u64 + 2);
    // The server still serves.
    assert_eq!(f.client().get("/").status, 200);
}

#[test]
fn a_request_with_a_body_is_answered_then_closed() {
    let f = serve(Limits::new(), "t-body");
    let mut c = f.client();
    c.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.reply(false).unwrap();
    assert_eq!((r.status, r.body()), (200, "POST /x\n"));
    assert!(r.closes());
    assert!(c.until_closed().is_empty());

    let mut c = f.client();
    c.send(
        "POST /y HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(c.reply(false).unwrap().closes());
    assert!(c.until_closed().is_empty());
    assert_eq!(f.calls(), 2);
}

#[test]
fn a_handler_panic_is_answered_500_and_the_server_goes_on() {
    let f = serve(Limits::new(), "t-panic");
    let mut c = f.client();
    assert_eq!(c.get("/panic").status, 500);
    assert_eq!(c.get("/fine").status, 200);
}

#[test]
fn a_head_sent_byte_by_byte_is_answered() {
    let f = serve(Limits::new(), "t-bytewise");
    let mut c = f.client();
    c.stream.set_nodelay(true).unwrap();
    for b in b"GET /slowly HTTP/1.1\r\nHost: t\r\n\r\n" {
        c.send([*b]);
    }
    assert_eq!(c.reply(false).unwrap().body(), "GET /slowly\n");
}

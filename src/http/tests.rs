//! Tests of the server through real sockets on 127.0.0.1.
//!
//! Every blocking client call has a generous timeout (`WATCHDOG`) so that a hang fails the test
//! instead of freezing it; nothing asserts that anything is fast.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const WATCHDOG: Duration = Duration::from_secs(10);

struct Fixture {
    server: Server,
    calls: Arc<AtomicUsize>,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A server whose handler answers `200` with `"<method> <target>\n"`, panics on `/panic`, and
/// answers `/big` with 16 MiB.
fn serve(limits: Limits, thread_name: &str) -> Fixture {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let handler: Handler = Arc::new(move |req: &Request<'_>| {
        counted.fetch_add(1, Ordering::SeqCst);
        if req.path() == "/panic" {
            panic!("handler panics on purpose");
        }
        if req.path() == "/big" {
            return Response::new(200, "application/octet-stream", vec![b'x'; 16 << 20]).into();
        }
        let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
        Response::text(200, format!("{} {}{query}\n", req.method(), req.path())).into()
    });
    let server = Server::bind("127.0.0.1:0", limits, handler, thread_name).expect("bind");
    Fixture { server, calls }
}

/// A response as a client sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WATCHDOG)).unwrap();
        stream.set_write_timeout(Some(WATCHDOG)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    fn get(&mut self, target: &str) -> Reply {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.reply(false).expect("a reply")
    }

    /// Reads bytes into the buffer; `false` at the end of the stream (or a reset).
    fn fill(&mut self) -> bool {
        let mut chunk = [0; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_reset(&e) => false,
            Err(e) => panic!("reading a reply: {e} (watchdog: {WATCHDOG:?})"),
        }
    }

    /// The next reply, or `None` if the connection ends (or is reset) before one begins.
    fn reply(&mut self, head_only: bool) -> Option<Reply> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).expect("valid reply") {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_owned(), value)
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                let length = if head_only { 0 } else { length };
                while self.buf.len() < len + length {
                    assert!(self.fill(), "connection ended inside a reply body");
                }
                let body = self.buf[len..len + length].to_vec();
                self.buf.drain(..len + length);
                return Some(Reply {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                assert!(self.buf.is_empty(), "connection ended inside a reply head");
                return None;
            }
        }
    }

    /// Waits for the server to close the connection; returns what it sent before that.
    fn until_closed(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !done() {
        assert!(Instant::now() < deadline, "waited {WATCHDOG:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many threads of this process are called `name` (names are unique per test).
///
/// A thread just joined may still be listed for a moment: wait for 0 rather than assert it.
fn threads_named(name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// A `kB` field of `/proc/self/status`, such as `VmRSS`.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

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
fn idle_connections_neither_starve_others_nor_add_threads() {
    let limits = Limits::new()
        .max_connections(1000)
        .head_read_timeout(Duration::from_secs(60));
    let mut f = serve(limits, "t-idle300");
    let mut idle: Vec<Client> = (0..300)
        .map(|i| {
            let mut c = f.client();
            if i % 2 == 0 {
                c.send("GET / HTTP/1.1\r\nHost: t\r\n"); // a partial head
            }
            c
        })
        .collect();
    wait_until("300 open connections", || {
        f.server.stats().open_connections == 300
    });
    let r = f.client().get("/fresh");
    assert_eq!(r.status, 200);
    // The default two event loops, and no thread more.
    assert_eq!(threads_named("t-idle300"), 1);
    assert_eq!(threads_named("t-idle300 1"), 1);
    assert_eq!(threads_named("t-idle300 2"), 0);
    assert_eq!(f.calls(), 1);

    f.server.shutdown().unwrap();
    wait_until("the threads to be gone", || {
        threads_named("t-idle300") + threads_named("t-idle300 1") == 0
    });
    assert_eq!(f.server.stats().open_connections, 0);
    for c in &mut idle {
        assert!(c.until_closed().is_empty());
    }
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

#[test]
fn server_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Server>();
    check::<Limits>();
    check::<Response>();
}

#[test]
fn connections_over_the_limit_are_closed_and_counted() {
    let limits = Limits::new()
        .max_connections(10)
        .head_read_timeout(Duration::from_secs(60));
    let f = serve(limits, "t-admission");
    let mut ten: Vec<Client> = (0..10).map(|_| f.client()).collect();
    wait_until("10 open connections", || {
        f.server.stats().open_connections == 10
    });

    let mut eleventh = f.client();
    let answer = eleventh.until_closed();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 503 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let stats = f.server.stats();
    assert_eq!((stats.accepted, stats.rejected_over_limit), (11, 1));

    // The admitted ones are served; closing one makes room for another.
    assert_eq!(ten[0].get("/").status, 200);
    ten.pop();
    wait_until("9 open connections", || {
        f.server.stats().open_connections == 9
    });
    assert_eq!(f.client().get("/").status, 200);
}

#[test]
fn shutdown_returns_with_idle_keep_alive_clients_and_joins() {
    let mut f = serve(Limits::new(), "t-shutdown");
    let mut clients: Vec<Client> = (0..20).map(|_| f.client()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    // The default: two event loops, which split the clients between them.
    assert_eq!(threads_named("t-shutdown"), 1);
    assert_eq!(threads_named("t-shutdown 1"), 1);
    assert_eq!(f.server.loads(), [10, 10]);
    f.server.shutdown().unwrap();
    wait_until("the threads to be gone", || {
        threads_named("t-shutdown") + threads_named("t-shutdown 1") == 0
    });
    f.server.shutdown().unwrap();
    assert_eq!(f.server.stats().open_connections, 0);
    for c in &mut clients {
        assert!(c.until_closed().is_empty());
    }

    // Dropping shuts down too.
    let f = serve(Limits::new(), "t-drop");
    let mut c = f.client();
    assert_eq!(c.get("/").status, 200);
    drop(f);
    wait_until("the threads to be gone", || {
        threads_named("t-drop") + threads_named("t-drop 1") == 0
    });
    assert!(c.until_closed().is_empty());
}

#[test]
fn invalid_limits_are_refused() {
    let handler: Handler = Arc::new(|_: &Request<'_>| Response::text(200, "ok").into());
    for limits in [
        Limits::new().max_connections(0),
        Limits::new().max_head_bytes(10),
        Limits::new().head_read_timeout(Duration::ZERO),
        Limits::new().write_timeout(Duration::from_secs(365 * 24 * 3600)),
        Limits::new().max_requests_per_connection(Some(0)),
        Limits::new().event_loops(0),
        Limits::new().event_loops(MAX_EVENT_LOOPS + 1),
    ] {
        let e = Server::bind("127.0.0.1:0", limits, Arc::clone(&handler), "t-invalid").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}

/// A server whose handler answers `200` with the name of the thread it runs on.
fn serve_thread_names(limits: Limits, thread_name: &str) -> Server {
    let handler: Handler = Arc::new(|_: &Request<'_>| {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        Response::text(200, name).into()
    });
    Server::bind("127.0.0.1:0", limits, handler, thread_name).expect("bind")
}

#[test]
fn connections_are_spread_over_the_event_loops() {
    let loops = 3;
    let server = serve_thread_names(Limits::new().event_loops(loops), "t-spread");
    // Each is answered before the next connects: the least loaded loop gets the next one, and
    // ties go round, so they take turns.
    let mut clients: Vec<(Client, String)> = Vec::new();
    for _ in 0..2 * loops {
        let mut c = Client::connect(server.local_addr());
        let served_by = c.get("/").body().to_owned();
        clients.push((c, served_by));
    }
    let names = ["t-spread", "t-spread 1", "t-spread 2"];
    let served_by: Vec<&str> = clients.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(served_by, [names, names].concat());
    assert_eq!(server.loads(), [2, 2, 2]);
    // A connection keeps its loop: a second request on each is answered by the same thread.
    for (c, name) in &mut clients {
        assert_eq!(c.get("/again").body(), name);
    }
    for name in names {
        assert_eq!(threads_named(name), 1, "{name}");
    }
    // A loop whose connections close gets the next ones.
    clients.retain(|(_, n)| n != "t-spread 1");
    wait_until("loop 1 to close its connections", || {
        server.loads() == [2, 0, 2]
    });
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/").body(), "t-spread 1");
    assert_eq!(server.stats().open_connections, 5);
}

#[test]
fn a_single_event_loop_serves_every_connection() {
    let server = serve_thread_names(Limits::new().event_loops(1), "t-one");
    let mut clients: Vec<Client> = (0..5)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.get("/").body(), "t-one");
    }
    assert_eq!(server.loads(), [5]);
    assert_eq!(threads_named("t-one"), 1);
    assert_eq!(threads_named("t-one 1"), 0);
}

#[test]
fn shutdown_joins_every_event_loop_with_idle_keep_alive_clients() {
    let loops = 4;
    let mut server = serve_thread_names(Limits::new().event_loops(loops), "t-join4");
    let mut clients: Vec<Client> = (0..3 * loops)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    // Every loop holds idle keep-alive clients when the shutdown comes.
    assert_eq!(server.loads(), [3, 3, 3, 3]);
    let names = ["t-join4", "t-join4 1", "t-join4 2", "t-join4 3"];
    for name in names {
        assert_eq!(threads_named(name), 1, "{name}");
    }
    server.shutdown().unwrap();
    wait_until("every loop's thread to be gone", || {
        names.iter().all(|n| threads_named(n) == 0)
    });
    assert_eq!(server.stats().open_connections, 0);
    for c in &mut clients {
        assert!(c.until_closed().is_empty());
    }
    assert!(TcpStream::connect(server.local_addr()).is_err());
}

#[test]
fn max_connections_is_one_limit_over_every_event_loop() {
    let limits = Limits::new()
        .event_loops(4)
        .max_connections(6)
        .head_read_timeout(Duration::from_secs(60));
    let server = serve_thread_names(limits, "t-admit4");
    let mut six: Vec<Client> = (0..6)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut six {
        assert_eq!(c.get("/").status, 200);
    }
    // Six, over four loops: no loop's share is its own limit.
    assert_eq!(server.loads(), [2, 2, 1, 1]);
    assert_eq!(server.stats().open_connections, 6);

    let mut seventh = Client::connect(server.local_addr());
    let answer = seventh.until_closed();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 503 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.rejected_over_limit), (7, 1));

    // A connection closed on any loop makes room for one more, on the least loaded loop.
    drop(six.remove(1)); // the second connection, on loop 1
    wait_until("5 open connections", || {
        server.stats().open_connections == 5
    });
    let mut next = Client::connect(server.local_addr());
    assert_eq!(next.get("/").status, 200);
    assert_eq!(server.stats().rejected_over_limit, 1);
    assert_eq!(server.loads().iter().sum::<usize>(), 6);
}

const EMFILE_CHILD: &str = "LIFECYCLE_TEST_EMFILE_CHILD";

/// Runs [`emfile_child`] in a child process whose fd limit is 64, so that exhausting it does not
/// disturb the tests running alongside.
#[test]
fn accept_errors_pause_accepting_but_never_end_it() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", "http::tests::emfile_child", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "run in a child process by accept_errors_pause_accepting_but_never_end_it"]
fn emfile_child() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let f = serve(Limits::new(), "t-emfile");
    // Fill the fd table, then free one fd for the client: the server's accept gets EMFILE.
    let mut hog = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hog.push(file);
    }
    hog.pop();
    let mut c = f.client();
    c.send("GET /patient HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("an accept error", || f.server.stats().accept_errors > 0);
    wait_until("a second accept error after the pause", || {
        f.server.stats().accept_errors > 1
    });
    drop(hog);
    let r = c.reply(false).expect("served once fds are free");
    assert_eq!(r.body(), "GET /patient\n");
    assert_eq!(f.client().get("/next").status, 200);
    assert_eq!(threads_named("t-emfile"), 1);
}

/// A server that answers `/later` [`Reply::Later`](crate::http::Reply::Later), handing each
/// responder to the test through the returned channel, `/drop` later with a responder that is
/// dropped unanswered, and anything else at once with `"now <path>"`.
fn serve_deferred(
    limits: Limits,
    thread_name: &str,
) -> (Server, crossbeam_channel::Receiver<Responder>) {
    let (give, responders) = crossbeam_channel::unbounded::<Responder>();
    let handler: Handler = Arc::new(move |req: &Request<'_>| match req.path() {
        "/later" => {
            let give = give.clone();
            crate::http::Reply::Later(Box::new(move |responder| {
                let _ = give.send(responder);
            }))
        }
        "/drop" => crate::http::Reply::Later(Box::new(drop)),
        path => Response::text(200, format!("now {path}")).into(),
    });
    let server = Server::bind("127.0.0.1:0", limits, handler, thread_name).expect("bind");
    (server, responders)
}

#[test]
fn a_later_answer_keeps_pipelined_answers_in_order() {
    let (server, responders) = serve_deferred(Limits::new(), "t-later");
    let mut c = Client::connect(server.local_addr());
    c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).expect("the handler ran");
    // Another connection is served meanwhile, by either loop.
    for _ in 0..4 {
        assert_eq!(
            Client::connect(server.local_addr()).get("/x").body(),
            "now /x"
        );
    }
    // The answer comes from another thread; the pipelined request is answered after it.
    std::thread::scope(|s| {
        s.spawn(move || responder.send(Response::text(200, "later")));
    });
    assert_eq!(c.reply(false).expect("the later answer").body(), "later");
    assert_eq!(
        c.reply(false).expect("the pipelined answer").body(),
        "now /after"
    );
    // And the connection goes on.
    assert_eq!(c.get("/again").body(), "now /again");
}

#[test]
fn a_later_head_answer_has_no_body_and_close_is_honoured() {
    let (server, responders) = serve_deferred(Limits::new(), "t-later-head");
    let mut c = Client::connect(server.local_addr());
    c.send("HEAD /later HTTP/1.1\r\nHost: t\r\n\r\n");
    responders
        .recv_timeout(WATCHDOG)
        .unwrap()
        .send(Response::text(200, "a body"));
    let head = c.reply(true).expect("an answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("6"));
    assert!(head.body.is_empty());

    c.send(
        "GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n",
    );
    responders
        .recv_timeout(WATCHDOG)
        .unwrap()
        .send(Response::text(200, "last"));
    let last = c.reply(false).expect("an answer");
    assert_eq!(last.body(), "last");
    assert!(last.closes());
    assert!(
        c.until_closed().is_empty(),
        "nothing after a Connection: close"
    );
}

#[test]
fn a_responder_dropped_unanswered_sends_500() {
    let (server, _responders) = serve_deferred(Limits::new(), "t-later-drop");
    let mut c = Client::connect(server.local_addr());
    let r = c.get("/drop");
    assert_eq!(r.status, 500);
    assert_eq!(c.get("/x").body(), "now /x", "the connection goes on");
}

#[test]
fn an_answer_that_never_comes_closes_the_connection_at_its_timeout() {
    let (server, responders) = serve_deferred(
        Limits::new().answer_timeout(Duration::from_millis(200)),
        "t-later-never",
    );
    let mut c = Client::connect(server.local_addr());
    c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).unwrap();
    assert!(c.until_closed().is_empty(), "closed without an answer");
    assert_eq!(server.stats().timed_out, 1);
    // A late answer for the closed connection is dropped, and the server goes on.
    responder.send(Response::text(200, "too late"));
    assert_eq!(
        Client::connect(server.local_addr()).get("/x").body(),
        "now /x"
    );
}

#[test]
fn a_late_answer_never_reaches_the_next_connection_in_the_same_slot() {
    // One loop, so that the second connection takes the first one's slot.
    let (server, responders) = serve_deferred(
        Limits::new()
            .event_loops(1)
            .answer_timeout(Duration::from_millis(200)),
        "t-later-slot",
    );
    let mut first = Client::connect(server.local_addr());
    first.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let late = responders.recv_timeout(WATCHDOG).unwrap();
    assert!(
        first.until_closed().is_empty(),
        "closed at its answer timeout"
    );
    wait_until("the first connection is gone", || {
        server.stats().open_connections == 0
    });

    let mut second = Client::connect(server.local_addr());
    second.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let own = responders.recv_timeout(WATCHDOG).unwrap();
    // The first connection's answer arrives while the second awaits its own: it is dropped.
    late.send(Response::text(200, "for the first"));
    own.send(Response::text(200, "for the second"));
    assert_eq!(second.reply(false).unwrap().body(), "for the second");
}

//! Tests of the server through real sockets on 127.0.0.1.
//!
//! Every blocking client call has a generous timeout (`WATCHDOG`) so that a hang fails the test
//! instead of freezing it; nothing asserts that anything is fast.
//!
//! The shared client and fixtures are here; the tests are grouped as the code is: one
//! connection's protocol ([`connection`]), what it keeps queued and how it ends when its client
//! does not read ([`backpressure`]), answers that come later ([`later`]), the limits
//! ([`limits`]), admission and eviction ([`admission`]), the event loops ([`event_loops`]), and
//! starting paused and handing over, for an upgrade ([`handover`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

mod admission;
mod backpressure;
mod connection;
mod event_loops;
mod handover;
mod later;
mod limits;

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

/// A server whose handler answers `200` with `"<method> <target>\n"`, panics on `/panic`,
/// answers `/big` with 16 MiB, and `/bytes/N` with N bytes.
fn serve(limits: Limits, thread_name: &str) -> Fixture {
    serve_with(limits, thread_name, Accepting::Now)
}

/// Like [`serve`], accepting at once or only once told (`accepting`).
fn serve_with(limits: Limits, thread_name: &str, accepting: Accepting) -> Fixture {
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
        if let Some(n) = req.path().strip_prefix("/bytes/") {
            let n = n.parse().expect("/bytes/N");
            return Response::new(200, "application/octet-stream", vec![b'x'; n]).into();
        }
        let query = req.query().map(|q| format!("?{q}")).unwrap_or_default();
        Response::text(200, format!("{} {}{query}\n", req.method(), req.path())).into()
    });
    let server = Server::take_or_bind(None, "127.0.0.1:0", limits, handler, thread_name, accepting)
        .expect("bind");
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

    /// Whether the server holds the connection open and has sent nothing unread: a look, not
    /// a wait (on 127.0.0.1, a close the server made before its last answer has arrived).
    fn is_held(&self) -> bool {
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let held = matches!(
            (&self.stream).read(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).unwrap();
        held
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

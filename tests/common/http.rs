//! A minimal HTTP/1.1 client over a raw socket, for tests against a local server: one-shot
//! requests ([`get`], [`request`]), and a keep-alive [`Client`] that reads pipelined responses
//! one at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{eventually, WATCHDOG};

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.body))
    }
}

/// Connects with [`WATCHDOG`] read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s.set_write_timeout(Some(WATCHDOG)).unwrap();
    s
}

/// Sends `method path` with `Connection: close` and reads the whole answer.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    request_with(addr, method, path, &[])
}

/// Like [`request`], with more request headers.
pub fn request_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = connect(addr);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    parse(&raw).unwrap_or_else(|| panic!("unparsable answer: {:?}", String::from_utf8_lossy(&raw)))
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

/// Parses one complete response (status line, headers, Content-Length body).
pub fn parse(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(rest.len());
    Some(Reply {
        status,
        headers,
        body: rest.get(..len.min(rest.len()))?.to_owned(),
    })
}

/// Reads until the peer closes or the timeout passes; returns what was read.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} (after {} bytes)", out.len()),
        }
    }
}

/// Whether nothing accepts connections at `addr` any more.
pub fn connect_fails(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err()
}

/// GETs `path`, each time on a fresh connection, until it answers `status` (under the
/// watchdog); returns that answer.
#[track_caller]
pub fn wait_status(addr: SocketAddr, path: &str, status: u16) -> Reply {
    wait_until(addr, path, &format!("{path} answers {status}"), |r| {
        r.status == status
    })
}

/// GETs `path`, each time on a fresh connection, until the answer satisfies `ok` (under the
/// watchdog, failing with `what`); returns that answer.
#[track_caller]
pub fn wait_until(addr: SocketAddr, path: &str, what: &str, ok: impl Fn(&Reply) -> bool) -> Reply {
    let mut last = None;
    eventually(what, || {
        let r = get(addr, path);
        let done = ok(&r);
        last = Some(r);
        done
    });
    last.expect("an answer")
}

/// Whether a socket error means the peer closed the connection abruptly.
pub fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// A keep-alive client over a raw socket that reads responses one at a time, so that several
/// (pipelined) responses on one connection can be told apart.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with [`WATCHDOG`] read/write timeouts.
    pub fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: connect(addr),
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    /// Sends a keep-alive `GET path` and reads its response.
    pub fn get(&mut self, path: &str) -> Reply {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
        self.reply().expect("a response")
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream or on a reset.
    /// Panics when the watchdog expires.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_reset(&e) => false,
            Err(e) => panic!(
                "reading a response: {e} (watchdog {WATCHDOG:?}, {} bytes buffered)",
                self.buf.len()
            ),
        }
    }

    /// The next response, or `None` if the connection ends (EOF or reset) before one begins.
    /// Panics on anything that is not a well-formed response, and on a connection that ends
    /// inside one.
    pub fn reply(&mut self) -> Option<Reply> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            let status = parsed.parse(&self.buf).unwrap_or_else(|e| {
                panic!(
                    "not an HTTP response ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            });
            if let httparse::Status::Complete(len) = status {
                let status = parsed.code.expect("status code");
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_owned(), value)
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse::<usize>().expect("Content-Length"))
                    .expect("every response has a Content-Length");
                while self.buf.len() < len + length {
                    assert!(self.fill(), "the connection ended inside a response body");
                }
                let body = String::from_utf8_lossy(&self.buf[len..len + length]).into_owned();
                self.buf.drain(..len + length);
                return Some(Reply {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                assert!(
                    self.buf.is_empty(),
                    "the connection ended inside a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// Waits (under the watchdog) for the server to close the connection; returns what it sent
    /// before that and has not been read yet.
    pub fn until_closed(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }
}

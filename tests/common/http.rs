//! A minimal HTTP/1.1 client over a raw socket, for tests against a local server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

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

/// Connects with generous read/write timeouts as a watchdog.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `method path` with `Connection: close` and reads the whole answer.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut s = connect(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
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

/// GETs `path` until it answers `status` (bounded by a 20 s watchdog); returns that answer.
#[track_caller]
pub fn wait_status(addr: SocketAddr, path: &str, status: u16) -> Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(addr, path);
        if r.status == status {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never answered {status}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

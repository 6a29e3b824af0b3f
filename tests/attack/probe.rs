//! Probes as a kubelet sends them: a fresh connection, one `GET /livez` or `/readyz` with
//! `Connection: close`, a 1 s timeout for the whole exchange; and a [`Tally`] of many.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A kubelet's default probe timeout: the whole exchange, from connect to the last byte.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a kubelet would send (it closes after each probe).
fn request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.30\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )
}

/// The time left until `deadline`, or an error naming `what` was cut short.
fn left(deadline: Instant, what: &str) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("no answer within {PROBE_TIMEOUT:?} ({what})"))
}

/// The status of a complete response at the start of `buf`, if it holds one.
fn complete_status(buf: &[u8]) -> Result<Option<u16>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buf).map_err(|e| {
        format!(
            "not an HTTP response ({e}): {:?}",
            String::from_utf8_lossy(buf)
        )
    })?
    else {
        return Ok(None);
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or("a response without a Content-Length")?;
    Ok((buf.len() >= head + length).then(|| response.code.unwrap_or(0)))
}

/// Reads one complete response from `stream` by `deadline`; its status.
pub fn read_status(stream: &mut TcpStream, deadline: Instant) -> Result<u16, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(status) = complete_status(&buf)? {
            return Ok(status);
        }
        stream
            .set_read_timeout(Some(left(deadline, "reading")?))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {} bytes of answer", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", buf.len())),
        }
    }
}

/// One probe of `path` on a fresh connection: the status it got within [`PROBE_TIMEOUT`], or
/// what went wrong.
pub fn probe(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut stream =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(left(deadline, "connecting")?))
        .map_err(|e| format!("set_write_timeout: {e}"))?;
    stream
        .write_all(request(path).as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    read_status(&mut stream, deadline)
}

/// What a run of probes got.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answered `200` within the timeout.
    pub passed: usize,
    /// Answered `503` within the timeout.
    pub unavailable: usize,
    /// Everything else: another status, a timeout, a reset; each described.
    pub failed: Vec<String>,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.passed + self.unavailable + self.failed.len()
    }

    /// Asserts that at least `percent` % of the probes passed, showing the tally otherwise.
    #[track_caller]
    pub fn assert_passed_at_least(&self, percent: usize, during: &str) {
        assert!(self.total() > 0, "no probe ran during {during}");
        assert!(
            self.passed * 100 >= self.total() * percent,
            "during {during}, fewer than {percent}% of the probes passed: {self}"
        );
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} probes answered 200 within {PROBE_TIMEOUT:?}, {} answered 503",
            self.passed,
            self.total(),
            self.unavailable
        )?;
        if !self.failed.is_empty() {
            let shown = &self.failed[..self.failed.len().min(5)];
            write!(f, ", {} failed (first ones: {shown:?})", self.failed.len())?;
        }
        Ok(())
    }
}

/// `count` probes, one after the other with `pause` between them, alternating `/livez` and
/// `/readyz`.
pub fn probes(addr: SocketAddr, count: usize, pause: Duration) -> Tally {
    let mut tally = Tally::default();
    for i in 0..count {
        let path = if i % 2 == 0 { "/livez" } else { "/readyz" };
        match probe(addr, path) {
            Ok(200) => tally.passed += 1,
            Ok(503) => tally.unavailable += 1,
            Ok(status) => tally.failed.push(format!("{path}: status {status}")),
            Err(e) => tally.failed.push(format!("{path}: {e}")),
        }
        std::thread::sleep(pause);
    }
    tally
}

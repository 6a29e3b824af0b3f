//! A bounded load of HTTP clients against local addresses, counting what went wrong: `K`
//! keep-alive clients (one connection per address, sequential requests) and `K`
//! fresh-connection clients (a new connection per request), each looping over a list of
//! targets until stopped or at a cap of requests.
//!
//! A keep-alive client reconnects after a response with `Connection: close`, or when the
//! server has closed the connection after a complete response (seen before the next request
//! is sent): neither is a failure. A connection refused, a connection that ends (EOF or reset)
//! before a complete response, a timeout, and any status but 200 are.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{is_reset, Reply};

/// The read and write timeout of every socket: a server that stalls this long fails a request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two requests of one client, so that the clients leave the machine's two
/// cores to the server.
pub const PAUSE: Duration = Duration::from_millis(2);

/// One request the clients send: `GET path` to `addr`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: &'static str,
}

/// What the clients counted.
#[derive(Default, Debug, Clone)]
pub struct Tally {
    /// Requests answered 200.
    pub ok: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connections that ended (EOF or reset) before a complete response, or could not be
    /// written to.
    pub broken: u64,
    /// Responses with another status than 200, by status.
    pub bad_status: BTreeMap<u16, u64>,
    /// Timeouts, and responses that are not HTTP.
    pub other: u64,
    /// How often each pid answered `/pid`.
    pub pids: BTreeMap<u32, u64>,
    /// Reconnections of keep-alive clients (after `Connection: close` or a close after a
    /// complete response): not failures.
    pub reconnects: u64,
    /// The first few failures, described.
    pub samples: Vec<String>,
}

impl Tally {
    /// Failures of every kind.
    pub fn failures(&self) -> u64 {
        self.refused + self.broken + self.other + self.bad_status.values().sum::<u64>()
    }

    fn fail(&mut self, what: String) {
        if self.samples.len() < 10 {
            self.samples.push(what);
        }
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.broken += other.broken;
        self.other += other.other;
        self.reconnects += other.reconnects;
        for (status, n) in other.bad_status {
            *self.bad_status.entry(status).or_default() += n;
        }
        for (pid, n) in other.pids {
            *self.pids.entry(pid).or_default() += n;
        }
        for sample in other.samples {
            self.fail(sample);
        }
    }
}

/// The running clients; [`stop`](Load::stop) ends them and sums what they counted.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests sent so far, by all clients.
    sent: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts `k` keep-alive and `k` fresh-connection clients over `targets`, each stopping by
    /// itself after `cap` requests.
    pub fn start(targets: &[Target], k: usize, cap: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for i in 0..2 * k {
            let (targets, stop, total) = (targets.to_vec(), stop.clone(), sent.clone());
            let keep_alive = i < k;
            let name = format!("load {}", if keep_alive { "keep-alive" } else { "fresh" });
            let client = std::thread::Builder::new()
                .name(name)
                .spawn(move || run(&targets, keep_alive, i, cap, &stop, &total))
                .expect("spawn a load client");
            clients.push(client);
        }
        Load {
            stop,
            sent,
            clients,
        }
    }

    /// How many requests the clients have completed (answered or failed) so far.
    pub fn requests(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits (under the watchdog) until the clients have completed `n` more requests.
    #[track_caller]
    pub fn wait_requests(&self, n: u64) {
        let target = self.requests() + n;
        super::eventually("the load makes progress", || self.requests() >= target);
    }

    /// Stops the clients (each after the request it is sending) and sums their counts.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        self.finish()
    }

    /// Waits for each client to reach its cap, and sums their counts.
    pub fn finish(mut self) -> Tally {
        let mut tally = Tally::default();
        for client in self.clients.drain(..) {
            tally.add(client.join().expect("a load client panicked"));
        }
        tally
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One client's loop, starting at target `first` (so that clients spread over the targets).
fn run(
    targets: &[Target],
    keep_alive: bool,
    first: usize,
    cap: u64,
    stop: &AtomicBool,
    total: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
    let mut sent = 0;
    while sent < cap && !stop.load(Ordering::SeqCst) {
        let target = &targets[(first + sent as usize) % targets.len()];
        sent += 1;
        let answer = match keep_alive {
            true => keep_alive_get(&mut conns, target, &mut tally),
            false => Conn::open(target.addr).and_then(|mut c| c.get(target.path, true)),
        };
        match answer {
            Ok(reply) => judge(target, reply, &mut tally),
            Err(failure) => {
                conns.remove(&target.addr);
                match failure {
                    Failure::Refused => tally.refused += 1,
                    Failure::Broken(_) => tally.broken += 1,
                    Failure::Other(_) => tally.other += 1,
                }
                tally.fail(format!("{} {}: {failure:?}", target.addr, target.path));
            }
        }
        total.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(PAUSE);
    }
    tally
}

/// Counts a complete response.
fn judge(target: &Target, reply: Reply, tally: &mut Tally) {
    if reply.status != 200 {
        *tally.bad_status.entry(reply.status).or_default() += 1;
        let body = reply.body.trim();
        tally.fail(format!(
            "{} {}: {} {body}",
            target.addr, target.path, reply.status
        ));
        return;
    }
    tally.ok += 1;
    if target.path == "/pid" {
        match reply.body.trim().parse() {
            Ok(pid) => *tally.pids.entry(pid).or_default() += 1,
            Err(_) => tally.other += 1,
        }
    }
}

/// A request on the client's connection to the target's address, opened if there is none (or
/// the server closed it after its last complete response).
fn keep_alive_get(
    conns: &mut HashMap<SocketAddr, Conn>,
    target: &Target,
    tally: &mut Tally,
) -> Result<Reply, Failure> {
    if conns.get_mut(&target.addr).is_some_and(|c| c.closed()) {
        conns.remove(&target.addr);
        tally.reconnects += 1;
    }
    let conn = match conns.entry(target.addr) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(Conn::open(target.addr)?),
    };
    let reply = conn.get(target.path, false)?;
    let closing = reply
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if closing {
        conns.remove(&target.addr);
        tally.reconnects += 1;
    }
    Ok(reply)
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    Refused,
    /// EOF or reset before a complete response (or a write that failed).
    Broken(String),
    /// A timeout, or an answer that is not HTTP.
    Other(String),
}

fn io_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        _ if is_reset(&e) => Failure::Broken(e.to_string()),
        _ => Failure::Other(e.to_string()),
    }
}

/// A connection, with what it has read past the last response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(io_failure)?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(io_failure)?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(io_failure)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Whether the server has closed the connection (an EOF or a reset waiting to be read),
    /// looked at without waiting.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match self.stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false, // bytes nobody asked for: the next read shows them
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        closed || self.stream.set_nonblocking(false).is_err()
    }

    /// Sends `GET path` (with `Connection: close` if `close`) and reads the complete response.
    fn get(&mut self, path: &str, close: bool) -> Result<Reply, Failure> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let head = format!("GET {path} HTTP/1.1\r\nHost: load\r\n{connection}\r\n");
        self.stream
            .write_all(head.as_bytes())
            .map_err(|e| Failure::Broken(format!("writing: {e}")))?;
        self.reply()
    }

    /// The next complete response (its body by `Content-Length`).
    fn reply(&mut self) -> Result<Reply, Failure> {
        let began = Instant::now();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            let parsed_len = parsed
                .parse(&self.buf)
                .map_err(|e| Failure::Other(format!("not HTTP: {e}")))?;
            if let httparse::Status::Complete(len) = parsed_len {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into()))
                    .collect();
                let status = parsed.code.unwrap_or(0);
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .ok_or(Failure::Other("no Content-Length".into()))?;
                if self.buf.len() >= len + length {
                    let body = String::from_utf8_lossy(&self.buf[len..len + length]).into();
                    self.buf.drain(..len + length);
                    return Ok(Reply {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let what = format!("EOF after {} bytes", self.buf.len());
                    return Err(Failure::Broken(what));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let what = format!("{e} after {:?}, {} bytes", began.elapsed(), self.buf.len());
                    return Err(match io_failure(e) {
                        Failure::Broken(_) => Failure::Broken(what),
                        _ => Failure::Other(what),
                    });
                }
            }
        }
    }
}

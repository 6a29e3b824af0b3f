//! [`Server`]: the event loop, its connections, and their limits.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::request::{self, Parsed, Reject, Request, MAX_HEADERS};
use super::response::Response;

/// Renders the response to a request. It is called on the event-loop thread and must not block:
/// it renders from a cache. If it panics, the client gets a `500` and the server goes on.
pub(crate) type Handler = Arc<dyn Fn(&Request<'_>) -> Response + Send + Sync>;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Above this many unsent bytes, no further request is parsed from the connection.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// How long accepting pauses after an accept error such as `EMFILE`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After the last response of a connection, how long the server goes on reading (and
/// discarding) what the client still sends, so that closing does not reset the connection
/// before the client has read the response.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much a lingering connection may send before it is closed anyway.
const LINGER_DISCARD: usize = 64 * 1024;
/// Requests answered, and reads done, on one connection before the loop turns to the others.
const REQUESTS_PER_TURN: usize = 64;
const READS_PER_TURN: usize = 16;
/// The sweep for deadlines runs at most this often.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(5);
/// The most often the loop logs the same kind of warning.
const WARN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest timeout [`Limits`] accept.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// What a best-effort answer to a connection over the limit says.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Cache-Control: no-store\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

/// The limits a [`Server`] enforces, built from the defaults
/// (`Limits::new().max_connections(64)`); each builder method documents its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    max_connections: usize,
    max_head_bytes: usize,
    head_read_timeout: Duration,
    keep_alive_idle_timeout: Duration,
    write_timeout: Duration,
    max_requests_per_connection: Option<u64>,
}

// Until the health endpoint uses it.
#[allow(dead_code)]
impl Limits {
    /// The defaults.
    pub(crate) fn new() -> Limits {
        Limits {
            max_connections: 256,
            max_head_bytes: 8 * 1024,
            head_read_timeout: Duration::from_secs(5),
            keep_alive_idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_requests_per_connection: None,
        }
    }

    /// The most connections open at once; more are accepted and closed at once (after a
    /// best-effort `503`). Default: 256. At least 1.
    #[must_use]
    pub(crate) fn max_connections(mut self, n: usize) -> Limits {
        self.max_connections = n;
        self
    }

    /// The most bytes a request head (request line and headers) may take; a head that does not
    /// end within them is answered `431`. It is also the size of each connection's input buffer.
    /// Default: 8 KiB. From 256 bytes to 1 MiB.
    #[must_use]
    pub(crate) fn max_head_bytes(mut self, n: usize) -> Limits {
        self.max_head_bytes = n;
        self
    }

    /// The time allowed to receive a complete request head, counted from the accept for the
    /// first request, and from the first byte of the head for later ones. Default: 5 s.
    #[must_use]
    pub(crate) fn head_read_timeout(mut self, t: Duration) -> Limits {
        self.head_read_timeout = t;
        self
    }

    /// How long a kept-alive connection may stay idle between a response and the first byte of
    /// the next request. Default: 30 s.
    #[must_use]
    pub(crate) fn keep_alive_idle_timeout(mut self, t: Duration) -> Limits {
        self.keep_alive_idle_timeout = t;
        self
    }

    /// The time allowed for queued responses to be sent, counted from when the output buffer
    /// stops being empty until it is empty again. Default: 10 s.
    #[must_use]
    pub(crate) fn write_timeout(mut self, t: Duration) -> Limits {
        self.write_timeout = t;
        self
    }

    /// The most requests answered on one connection; the last answer says `Connection: close`
    /// and any further pipelined requests are dropped unanswered. Default: no limit (the output
    /// high-water mark and the timeouts bound what a connection costs). At least 1.
    #[must_use]
    pub(crate) fn max_requests_per_connection(mut self, n: Option<u64>) -> Limits {
        self.max_requests_per_connection = n;
        self
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if !(256..=1024 * 1024).contains(&self.max_head_bytes) {
            return invalid("max_head_bytes must be from 256 bytes to 1 MiB");
        }
        let timeouts = [
            self.head_read_timeout,
            self.keep_alive_idle_timeout,
            self.write_timeout,
        ];
        if timeouts.iter().any(|t| t.is_zero() || *t > MAX_TIMEOUT) {
            return invalid("timeouts must be more than zero and at most a day");
        }
        if self.max_requests_per_connection == Some(0) {
            return invalid("max_requests_per_connection must be at least 1");
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new()
    }
}

/// Counters of what a [`Server`] has done since it started; a snapshot from
/// [`Server::stats`].
// Until the health endpoint uses it.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServerStats {
    /// Connections open now (zero once the server has shut down).
    pub(crate) open_connections: usize,
    /// Connections accepted, including those closed at once for being over the limit.
    pub(crate) accepted: u64,
    /// Connections closed at once because `max_connections` were open.
    pub(crate) rejected_over_limit: u64,
    /// Connections closed because a head, an idle keep-alive or a write took too long.
    pub(crate) timed_out: u64,
    /// Requests refused without calling the handler (`400`, `431`, `505`, HTTP/2 preface).
    pub(crate) bad_requests: u64,
    /// Errors from `accept` (such as `EMFILE`), each followed by a short pause in accepting.
    pub(crate) accept_errors: u64,
    /// Requests answered by the handler.
    pub(crate) requests: u64,
    /// Bytes read from clients, including those discarded while closing.
    pub(crate) bytes_read: u64,
}

#[derive(Default)]
struct Counters {
    open_connections: AtomicUsize,
    accepted: AtomicU64,
    rejected_over_limit: AtomicU64,
    timed_out: AtomicU64,
    bad_requests: AtomicU64,
    accept_errors: AtomicU64,
    requests: AtomicU64,
    bytes_read: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    counters: Counters,
}

/// A running HTTP/1.1 server: one named event-loop thread serving every connection (see the
/// [module docs](super) for the design and the limits).
///
/// [`shutdown`](Server::shutdown), or dropping the server, closes every connection and joins the
/// thread.
pub(crate) struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    thread_name: String,
}

// Until the health endpoint uses it.
#[allow(dead_code)]
impl Server {
    /// Binds to `addr` (the first of its addresses that binds) and starts serving on a thread
    /// called `thread_name`, calling `handler` for each acceptable request.
    ///
    /// # Errors
    ///
    /// Invalid `limits` or `thread_name` (`InvalidInput`), and the errors of binding, creating
    /// the poller or spawning the thread.
    pub(crate) fn bind(
        addr: impl ToSocketAddrs,
        limits: Limits,
        handler: Handler,
        thread_name: &str,
    ) -> io::Result<Server> {
        limits.validate()?;
        if thread_name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "thread name contains a NUL byte",
            ));
        }
        let mut listener = bind_first(addr)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared::default());
        let event_loop = EventLoop {
            poll,
            listener,
            accept_paused_until: None,
            scratch: vec![0; 8 * 1024].into_boxed_slice(),
            limits,
            handler,
            shared: Arc::clone(&shared),
            connections: Vec::new(),
            free: Vec::new(),
            open: 0,
            again: Vec::new(),
            next_sweep: None,
            accept_warnings: Warnings::default(),
        };
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| event_loop.run())) {
                    log::error!("health endpoint event loop panicked; it no longer serves");
                    resume_unwind(payload);
                }
            })?;
        Ok(Server {
            local_addr,
            shared,
            waker,
            thread: Some(thread),
            thread_name: thread_name.to_owned(),
        })
    }

    /// The address the server listens on (with the port the OS chose for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the server's counters.
    pub(crate) fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            open_connections: c.open_connections.load(Ordering::Relaxed),
            accepted: get(&c.accepted),
            rejected_over_limit: get(&c.rejected_over_limit),
            timed_out: get(&c.timed_out),
            bad_requests: get(&c.bad_requests),
            accept_errors: get(&c.accept_errors),
            requests: get(&c.requests),
            bytes_read: get(&c.bytes_read),
        }
    }

    /// Stops serving: wakes the event loop, which closes the listener and every connection, and
    /// joins its thread. Idempotent.
    ///
    /// It blocks only until the loop notices the wake-up and drops its sockets, which takes no
    /// longer than one turn of the loop: the handler does not block, and neither does any socket
    /// operation. Idle keep-alive clients do not delay it.
    ///
    /// # Errors
    ///
    /// If the event-loop thread panicked.
    pub(crate) fn shutdown(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            // Cannot really happen; a connection to the listener wakes the poll just as well.
            log::warn!("health endpoint: waking the event loop failed: {e}; connecting instead");
            let _ = std::net::TcpStream::connect_timeout(
                &reachable(self.local_addr),
                Duration::from_secs(1),
            );
        }
        thread
            .join()
            .map_err(|_| io::Error::other(format!("thread {:?} panicked", self.thread_name)))
    }
}

impl Drop for Server {
    /// Shuts down and joins the event loop, logging (at warn level) if it had panicked. Never
    /// panics.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("health endpoint: {e}");
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("thread", &self.thread_name)
            .field("running", &self.thread.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

fn bind_first(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")))
}

/// An address that reaches a listener bound to `addr` (loopback for an unspecified address).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Logs one kind of warning at most once per [`WARN_INTERVAL`], counting the ones it holds back.
#[derive(Default)]
struct Warnings {
    last: Option<Instant>,
    held_back: u64,
}

impl Warnings {
    fn warn(&mut self, now: Instant, message: fmt::Arguments<'_>) {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < WARN_INTERVAL)
        {
            self.held_back += 1;
            return;
        }
        if self.held_back > 0 {
            log::warn!("{message} ({} more like it not logged)", self.held_back);
        } else {
            log::warn!("{message}");
        }
        self.last = Some(now);
        self.held_back = 0;
    }
}

/// Everything the event-loop thread owns.
struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    /// While accepting is paused after an error, the listener is deregistered until then.
    accept_paused_until: Option<Instant>,
    /// Where lingering connections' input is read to be discarded.
    scratch: Box<[u8]>,
    limits: Limits,
    handler: Handler,
    shared: Arc<Shared>,
    /// Connection `i` has token `FIRST_CONNECTION + i`.
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    open: usize,
    /// Connections that used up their turn with work left: driven again without waiting.
    again: Vec<usize>,
    /// When the nearest deadline (or a later one) passes; `None` without connections.
    next_sweep: Option<Instant>,
    accept_warnings: Warnings,
}

/// What to do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Wait for readiness.
    Wait,
    /// It has work left but used up its turn.
    Again,
    /// Close it.
    Close,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut poll_warnings = Warnings::default();
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    poll_warnings.warn(
                        Instant::now(),
                        format_args!("health endpoint: poll failed: {e}"),
                    );
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            let now = Instant::now();
            // Taken first: a connection that uses up its turn in this round waits for the next.
            let again = std::mem::take(&mut self.again);
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONNECTION, now),
                }
            }
            for index in again {
                if let Some(c) = self.connections[index].as_mut() {
                    c.queued = false;
                    self.drive(index, now);
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.resume_accepting(now);
            }
            self.sweep(now);
        }
        // Dropping the sockets closes them; the listener goes with `self`.
        self.connections.clear();
        self.shared
            .counters
            .open_connections
            .store(0, Ordering::Relaxed);
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let wake = match (self.next_sweep, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Round up so that the poll does not return a hair before the deadline.
        wake.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    bump(&counters.accepted, 1);
                    if self.open >= self.limits.max_connections {
                        bump(&counters.rejected_over_limit, 1);
                        // Best effort: a fresh socket's send buffer is empty.
                        let _ = (&stream).write(BUSY);
                        continue;
                    }
                    self.insert(stream, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                    bump(&counters.accept_errors, 1);
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: the pending connection stays in the
                    // backlog, so accepting again at once would spin. Pause, then go on.
                    bump(&counters.accept_errors, 1);
                    self.accept_warnings.warn(
                        now,
                        format_args!(
                            "health endpoint: accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}"
                        ),
                    );
                    if let Err(e) = self.poll.registry().deregister(&mut self.listener) {
                        log::debug!("health endpoint: deregistering the listener: {e}");
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        match self
            .poll
            .registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)
        {
            Ok(()) => {
                self.accept_paused_until = None;
                // Connections that waited in the backlog raise no new edge: take them now.
                self.accept_all(now);
            }
            Err(e) => {
                self.accept_warnings.warn(
                    now,
                    format_args!("health endpoint: re-registering the listener failed: {e}"),
                );
                self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
    }

    fn insert(&mut self, mut stream: TcpStream, now: Instant) {
        let index = self.free.pop().unwrap_or(self.connections.len());
        let registered = self.poll.registry().register(
            &mut stream,
            Token(FIRST_CONNECTION + index),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            log::debug!("health endpoint: registering a connection failed: {e}");
            if index < self.connections.len() {
                self.free.push(index);
            }
            return;
        }
        // Responses are written whole; there is nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let connection = Connection::new(stream, self.limits.max_head_bytes, now);
        self.note_deadline(connection.deadline(&self.limits).0);
        if index == self.connections.len() {
            self.connections.push(Some(connection));
        } else {
            self.connections[index] = Some(connection);
        }
        self.open += 1;
        self.shared
            .counters
            .open_connections
            .store(self.open, Ordering::Relaxed);
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut c) = self.connections[index].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(index);
            self.open -= 1;
            self.shared
                .counters
                .open_connections
                .store(self.open, Ordering::Relaxed);
        }
    }

    fn drive(&mut self, index: usize, now: Instant) {
        let Some(Some(c)) = self.connections.get_mut(index) else {
            return; // an event for a connection closed earlier in this turn
        };
        let mut cx = Cx {
            now,
            limits: &self.limits,
            handler: &self.handler,
            counters: &self.shared.counters,
            scratch: &mut self.scratch,
        };
        match c.drive(&mut cx) {
            Next::Close => self.remove(index),
            next => {
                if next == Next::Again && !c.queued {
                    c.queued = true;
                    self.again.push(index);
                }
                let deadline = c.deadline(&self.limits).0;
                self.note_deadline(deadline);
            }
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        self.next_sweep = Some(self.next_sweep.map_or(deadline, |t| t.min(deadline)));
    }

    /// Closes the connections whose deadline has passed, and finds the next deadline.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let mut nearest: Option<Instant> = None;
        for index in 0..self.connections.len() {
            let Some(c) = &self.connections[index] else {
                continue;
            };
            let (deadline, is_timeout) = c.deadline(&self.limits);
            if now >= deadline {
                if is_timeout {
                    bump(&self.shared.counters.timed_out, 1);
                    log::debug!("health endpoint: closing a connection: {}", c.phase());
                }
                self.remove(index);
            } else {
                nearest = Some(nearest.map_or(deadline, |n| n.min(deadline)));
            }
        }
        self.next_sweep = nearest.map(|t| t.max(now + MIN_SWEEP_INTERVAL));
    }
}

/// What a connection needs from the loop while it is driven.
struct Cx<'a> {
    now: Instant,
    limits: &'a Limits,
    handler: &'a Handler,
    counters: &'a Counters,
    scratch: &'a mut [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading and answering requests.
    Open,
    /// The last response is queued; once it is sent, the connection lingers.
    Closing,
    /// The last response is sent and our side shut down; reading and discarding what the client
    /// still sends until it closes too.
    Lingering { since: Instant, discarded: usize },
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    state: State,
    /// The input buffer: a request head must fit in it. `input[start..end]` is unparsed.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client shut down its side: nothing more will arrive.
    read_closed: bool,
    /// Responses to send: `output[sent..]` is unsent.
    output: Vec<u8>,
    sent: usize,
    answered: u64,
    /// When the connection last became idle: accepted, or its last response sent with nothing
    /// of the next request received.
    idle_since: Instant,
    /// When the head-read clock started for the head being received, if one is.
    head_since: Option<Instant>,
    /// When the output buffer stopped being empty, if it is not.
    write_since: Option<Instant>,
    /// Whether it is in the loop's `again` list.
    queued: bool,
}

/// What answering the start of the input buffer did.
enum Step {
    Answered,
    NeedMore,
    Closing,
}

impl Connection {
    fn new(stream: TcpStream, head_bytes: usize, now: Instant) -> Connection {
        Connection {
            stream,
            state: State::Open,
            input: vec![0; head_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
            read_closed: false,
            output: Vec::new(),
            sent: 0,
            answered: 0,
            idle_since: now,
            // The first head must arrive within the head-read timeout of the accept.
            head_since: Some(now),
            write_since: None,
            queued: false,
        }
    }

    fn unsent(&self) -> usize {
        self.output.len() - self.sent
    }

    /// When the connection is to be closed unless something happens, and whether that counts
    /// as a timeout.
    fn deadline(&self, limits: &Limits) -> (Instant, bool) {
        if let State::Lingering { since, .. } = self.state {
            return (since + LINGER_TIMEOUT, false);
        }
        if let Some(since) = self.write_since {
            return (since + limits.write_timeout, true);
        }
        if let Some(since) = self.head_since {
            return (since + limits.head_read_timeout, true);
        }
        (self.idle_since + limits.keep_alive_idle_timeout, true)
    }

    /// What the connection is waiting for, for logs.
    fn phase(&self) -> &'static str {
        match self.state {
            State::Lingering { .. } => "lingering",
            _ if self.write_since.is_some() => "write timed out",
            _ if self.head_since.is_some() => "request head timed out",
            _ => "idle keep-alive timed out",
        }
    }

    /// Does all it can without blocking: answers buffered requests, writes, reads, and again,
    /// until the socket would block, the connection is to close, or its turn is used up.
    fn drive(&mut self, cx: &mut Cx<'_>) -> Next {
        let mut requests = 0;
        let mut reads = 0;
        loop {
            if let State::Lingering { .. } = self.state {
                return self.linger(cx);
            }
            let mut turn_used = false;
            while self.state == State::Open && self.unsent() < OUT_HIGH_WATER {
                if requests == REQUESTS_PER_TURN {
                    turn_used = true;
                    break;
                }
                match self.answer_one(cx) {
                    Step::Answered => requests += 1,
                    Step::NeedMore | Step::Closing => break,
                }
            }
            match self.flush(cx.now) {
                Ok(()) => {}
                // Edge-triggered: a WRITABLE event comes once the socket drains.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(_) => return Next::Close,
            }
            if self.state == State::Closing {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.state = State::Lingering {
                    since: cx.now,
                    discarded: 0,
                };
                continue;
            }
            if turn_used {
                return Next::Again;
            }
            if self.read_closed {
                // Everything complete has been answered; a partial head never will be.
                return Next::Close;
            }
            if reads == READS_PER_TURN {
                return Next::Again;
            }
            if self.start > 0 {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.input.len() {
                // `answer_one` refuses a full buffer without a complete head; not reached.
                return Next::Close;
            }
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    reads += 1;
                    bump(&cx.counters.bytes_read, n as u64);
                    if self.end == 0 && self.head_since.is_none() {
                        self.head_since = Some(cx.now);
                    }
                    self.end += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
    }

    /// Parses the request at the start of the input buffer and queues its answer.
    fn answer_one(&mut self, cx: &mut Cx<'_>) -> Step {
        if self.start == self.end {
            return Step::NeedMore;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = match request::parse(&self.input[self.start..self.end], &mut headers) {
            Parsed::Complete(head) => head,
            Parsed::Partial if self.end - self.start < self.input.len() => {
                return Step::NeedMore;
            }
            Parsed::Partial => return self.refuse(Reject::TooLarge, cx),
            Parsed::Rejected(reject) => return self.refuse(reject, cx),
        };
        let request = head.request;
        let answered = self.answered + 1;
        let last = cx
            .limits
            .max_requests_per_connection
            .is_some_and(|max| answered >= max);
        let close = head.close || head.has_body || last || self.read_closed;
        let response = match catch_unwind(AssertUnwindSafe(|| (cx.handler)(&request))) {
            Ok(response) => response,
            Err(_) => {
                log::error!(
                    "health endpoint: the handler panicked on {} {}",
                    request.method(),
                    request.path()
                );
                Response::text(500, "internal error\n")
            }
        };
        let head_only = request.method() == "HEAD";
        let keep_alive_1_0 = request.minor_version() == 0;
        let head_len = head.len;
        self.queue(&response, head_only, close, keep_alive_1_0, cx.now);
        bump(&cx.counters.requests, 1);
        self.answered = answered;
        self.start += head_len;
        if close {
            self.state = State::Closing;
            self.start = self.end;
        }
        // A pipelined head that follows gets its own head-read time.
        self.head_since = (self.start < self.end).then_some(cx.now);
        if close {
            Step::Closing
        } else {
            Step::Answered
        }
    }

    /// Answers (unless the reason says not to) a request refused without calling the handler,
    /// and closes after.
    fn refuse(&mut self, reject: Reject, cx: &mut Cx<'_>) -> Step {
        bump(&cx.counters.bad_requests, 1);
        log::debug!("health endpoint: refusing a request: {}", reject.reason());
        if let Some(status) = reject.status() {
            let body = format!("{}\n", reject.reason());
            self.queue(&Response::text(status, body), false, true, false, cx.now);
        }
        self.state = State::Closing;
        self.start = self.end;
        self.head_since = None;
        Step::Closing
    }

    fn queue(
        &mut self,
        response: &Response,
        head_only: bool,
        close: bool,
        keep_alive_1_0: bool,
        now: Instant,
    ) {
        if self.sent >= OUT_HIGH_WATER {
            // Keep the sent prefix from growing the buffer without bound.
            self.output.drain(..self.sent);
            self.sent = 0;
        }
        if self.unsent() == 0 {
            self.write_since = Some(now);
        }
        response.write_to(&mut self.output, head_only, close, keep_alive_1_0);
    }

    /// Writes until the output is empty (`Ok`) or the socket would block (`WouldBlock`).
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        if self.write_since.is_none() {
            return Ok(());
        }
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.sent = 0;
        if self.output.capacity() > 2 * OUT_HIGH_WATER {
            self.output.shrink_to(4 * 1024);
        }
        self.write_since = None;
        if self.start == self.end {
            self.idle_since = now;
            self.head_since = None;
        }
        Ok(())
    }

    /// Reads and discards what the client still sends after our side shut down, until it
    /// closes, sends too much, or the socket would block.
    fn linger(&mut self, cx: &mut Cx<'_>) -> Next {
        loop {
            match self.stream.read(cx.scratch) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    bump(&cx.counters.bytes_read, n as u64);
                    if let State::Lingering { discarded, .. } = &mut self.state {
                        *discarded += n;
                        if *discarded >= LINGER_DISCARD {
                            return Next::Close;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
    }
}

#[cfg(test)]
mod busy_tests {
    use super::BUSY;

    #[test]
    fn the_busy_answer_is_framed_by_its_content_length() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(BUSY).unwrap() else {
            panic!("incomplete BUSY head");
        };
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap();
        assert_eq!(response.code, Some(503));
        assert_eq!(&BUSY[head..], b"too many connections\n");
        assert_eq!(length, BUSY.len() - head);
    }
}

//! [`Server`]: the event loop, its connections, and their limits.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::reply::{Answer, Reply, Responder};
use super::request::{self, Parsed, Reject, Request, MAX_HEADERS};
use super::response::Response;

/// Renders the response to a request. It is called on the event-loop threads, on several at
/// once when there are several, and must not block: it renders from a cache. If it panics, the
/// client gets a `500` and the server goes on.
pub(crate) type Handler = Arc<dyn Fn(&Request<'_>) -> Reply + Send + Sync>;

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
/// The most events one poll returns.
const EVENTS_CAPACITY: usize = 256;
/// The longest an event loop waits in a poll: an idle loop wakes this often to look at its
/// inbox and the stop flag, which bounds a shutdown even if a wake-up were lost.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// The most event loops a server runs.
pub(crate) const MAX_EVENT_LOOPS: usize = 16;
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
    event_loops: usize,
    answer_timeout: Duration,
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
            answer_timeout: Duration::from_secs(120),
            event_loops: 2,
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

    /// How many event-loop threads serve the connections: the first accepts them and hands
    /// each to the least loaded loop (itself included). A fixed number, whatever the number of
    /// connections. More than one keeps a descheduled loop from holding up every connection at
    /// once. Default: 2. From 1 to [`MAX_EVENT_LOOPS`].
    #[must_use]
    pub(crate) fn event_loops(mut self, n: usize) -> Limits {
        self.event_loops = n;
        self
    }

    /// How long a connection waits for a response the handler gave as [`Reply::Later`] before
    /// it is closed. Default: 2 minutes.
    #[must_use]
    pub(crate) fn answer_timeout(mut self, t: Duration) -> Limits {
        self.answer_timeout = t;
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
            self.answer_timeout,
        ];
        if timeouts.iter().any(|t| t.is_zero() || *t > MAX_TIMEOUT) {
            return invalid("timeouts must be more than zero and at most a day");
        }
        if self.max_requests_per_connection == Some(0) {
            return invalid("max_requests_per_connection must be at least 1");
        }
        if !(1..=MAX_EVENT_LOOPS).contains(&self.event_loops) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("event_loops must be from 1 to {MAX_EVENT_LOOPS}"),
            ));
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
    /// Connections admitted and not yet closed: the admission count that `max_connections`
    /// caps, over every event loop.
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

/// What every event loop of a server shares.
struct Shared {
    stop: AtomicBool,
    counters: Counters,
    /// Per event loop, the connections handed to it and not yet closed: how the accepting loop
    /// finds the least loaded one. [`GONE`] once a loop can no longer take connections.
    loads: Box<[AtomicUsize]>,
}

/// The load of an event loop that has ended: never the least.
const GONE: usize = usize::MAX / 2;

/// One event-loop thread of a [`Server`], as the server keeps it.
struct LoopThread {
    name: String,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// A running HTTP/1.1 server: a fixed number of named event-loop threads
/// ([`Limits::event_loops`]) serving every connection (see the [module docs](super) for the
/// design and the limits).
///
/// [`shutdown`](Server::shutdown), or dropping the server, closes every connection and joins
/// every thread.
pub(crate) struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Loop 0 accepts and hands connections to the others.
    loops: Vec<LoopThread>,
}

// Until the health endpoint uses it.
#[allow(dead_code)]
impl Server {
    /// Binds to `addr` (the first of its addresses that binds) and starts serving on
    /// [`Limits::event_loops`] threads, calling `handler` for each acceptable request. The
    /// accepting loop's thread is called `thread_name`, the others `thread_name 1`,
    /// `thread_name 2`, and so on.
    ///
    /// # Errors
    ///
    /// Invalid `limits` or `thread_name` (`InvalidInput`), and the errors of binding, creating
    /// the pollers or spawning the threads (any thread already spawned is then joined).
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
        let n = limits.event_loops;
        let mut listener = bind_first(addr)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        });
        // Every poller, waker and inbox is made before any thread starts.
        let mut event_loops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n - 1);
        for id in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (answer_sender, answers) = crossbeam_channel::unbounded();
            let inbox = (id > 0).then(|| {
                let (sender, receiver) = crossbeam_channel::unbounded();
                peers.push(Peer {
                    inbox: sender,
                    waker: Arc::clone(&waker),
                });
                receiver
            });
            let name = if id == 0 {
                thread_name.to_owned()
            } else {
                format!("{thread_name} {id}")
            };
            threads.push(LoopThread {
                name,
                waker,
                thread: None,
            });
            event_loops.push(EventLoop {
                id,
                poll,
                acceptor: None,
                inbox,
                scratch: vec![0; 8 * 1024].into_boxed_slice(),
                limits: limits.clone(),
                handler: Arc::clone(&handler),
                shared: Arc::clone(&shared),
                connections: Vec::new(),
                free: Vec::new(),
                again: Vec::new(),
                next_sweep: None,
                answers,
                answer_sender,
                waker: Arc::clone(&threads[id].waker),
                next_id: 0,
            });
        }
        event_loops[0]
            .poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        event_loops[0].acceptor = Some(Acceptor {
            listener,
            paused_until: None,
            warnings: Warnings::default(),
            peers,
            next: 0,
        });
        // From here on, dropping `server` on an error stops and joins the loops already started.
        let mut server = Server {
            local_addr,
            shared,
            loops: threads,
        };
        for (id, event_loop) in event_loops.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(server.loops[id].name.clone())
                .spawn(move || {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| event_loop.run())) {
                        log::error!(
                            "health endpoint event loop {id} panicked; it no longer serves"
                        );
                        resume_unwind(payload);
                    }
                })?;
            server.loops[id].thread = Some(thread);
        }
        Ok(server)
    }

    /// The address the server listens on (with the port the OS chose for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the server's counters, summed over its event loops.
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

    /// How many connections each event loop has been handed and not yet closed, accepting loop
    /// first.
    pub(crate) fn loads(&self) -> Vec<usize> {
        (self.shared.loads.iter())
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops serving: wakes every event loop, each of which closes its connections (the first
    /// also the listener), and joins their threads. Idempotent.
    ///
    /// It blocks only until each loop notices the wake-up and drops its sockets, which takes no
    /// longer than one turn of the loop: the handler does not block, and neither does any socket
    /// operation. Idle keep-alive clients do not delay it. Should a wake-up ever fail, the loop
    /// still notices within [`MAX_POLL_WAIT`].
    ///
    /// # Errors
    ///
    /// If an event-loop thread panicked (every thread is joined all the same).
    pub(crate) fn shutdown(&mut self) -> io::Result<()> {
        if self.loops.iter().all(|l| l.thread.is_none()) {
            return Ok(());
        }
        self.shared.stop.store(true, Ordering::Release);
        for l in self.loops.iter().filter(|l| l.thread.is_some()) {
            if let Err(e) = l.waker.wake() {
                // Cannot really happen; the loop's poll returns within MAX_POLL_WAIT anyway.
                log::warn!("health endpoint: waking thread {:?} failed: {e}", l.name);
            }
        }
        let mut panicked = Vec::new();
        for l in &mut self.loops {
            if let Some(thread) = l.thread.take() {
                if thread.join().is_err() {
                    panicked.push(l.name.clone());
                }
            }
        }
        self.shared
            .counters
            .open_connections
            .store(0, Ordering::Relaxed);
        match panicked.as_slice() {
            [] => Ok(()),
            [one] => Err(io::Error::other(format!("thread {one:?} panicked"))),
            many => Err(io::Error::other(format!("threads {many:?} panicked"))),
        }
    }
}

impl Drop for Server {
    /// Shuts down and joins the event loops, logging (at warn level) if one had panicked. Never
    /// panics.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("health endpoint: {e}");
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let threads: Vec<&str> = self.loops.iter().map(|l| l.name.as_str()).collect();
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("threads", &threads)
            .field("running", &self.loops.iter().any(|l| l.thread.is_some()))
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

/// Another event loop, as the accepting loop hands connections to it.
struct Peer {
    inbox: Sender<TcpStream>,
    waker: Arc<Waker>,
}

/// What the accepting loop (loop 0) owns besides what every loop owns.
struct Acceptor {
    listener: TcpListener,
    /// While accepting is paused after an error, the listener is deregistered until then.
    paused_until: Option<Instant>,
    warnings: Warnings,
    /// Loops 1, 2, ...
    peers: Vec<Peer>,
    /// Where the search for the least loaded loop starts next, so that ties go round.
    next: usize,
}

impl Acceptor {
    /// The loop to hand the next connection to: the least loaded, ties going round.
    fn pick(&mut self, loads: &[AtomicUsize]) -> usize {
        let n = loads.len();
        let start = self.next;
        self.next = (start + 1) % n;
        let mut best = start;
        let mut least = loads[start].load(Ordering::Relaxed);
        for k in 1..n {
            let i = (start + k) % n;
            let load = loads[i].load(Ordering::Relaxed);
            if load < least {
                (best, least) = (i, load);
            }
        }
        best
    }
}

/// Everything one event-loop thread owns.
struct EventLoop {
    /// Its index in [`Shared::loads`]; loop 0 accepts.
    id: usize,
    poll: Poll,
    /// On loop 0 only.
    acceptor: Option<Acceptor>,
    /// Connections handed over by the accepting loop, on loops 1, 2, ...
    inbox: Option<Receiver<TcpStream>>,
    /// Where lingering connections' input is read to be discarded.
    scratch: Box<[u8]>,
    limits: Limits,
    handler: Handler,
    shared: Arc<Shared>,
    /// Connection `i` has token `FIRST_CONNECTION + i`.
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    /// Connections that used up their turn with work left: driven again without waiting.
    again: Vec<usize>,
    /// When the nearest deadline (or a later one) passes; `None` without connections.
    next_sweep: Option<Instant>,
    /// Responses sent later through [`Responder`]s, and the sending side and waker they get.
    answers: Receiver<Answer>,
    answer_sender: Sender<Answer>,
    waker: Arc<Waker>,
    /// Identifies connections across the reuse of their slots, for late answers.
    next_id: u64,
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
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut poll_warnings = Warnings::default();
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
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
            // Checked every turn, not only on a wake-up: it costs one atomic load when empty.
            self.take_handed_over(now);
            self.take_answers(now);
            for index in again {
                if let Some(c) = self.connections[index].as_mut() {
                    c.queued = false;
                    self.drive(index, now);
                }
            }
            if self
                .acceptor
                .as_ref()
                .is_some_and(|a| a.paused_until.is_some_and(|t| now >= t))
            {
                self.resume_accepting(now);
            }
            self.sweep(now);
            if !events.is_empty() {
                // Under load a loop never waits in `poll`, so the scheduler sees a thread that
                // never sleeps and lets it run until its time slice ends: on a machine where
                // clients or the application want the same cores, it is then taken off its core
                // for a whole tick (4 ms at 250 Hz) and every connection it serves waits that
                // long. Offering the core after each turn lets the others run between turns
                // instead. With no other thread ready on this core, it returns at once.
                std::thread::yield_now();
            }
        }
        // Dropping `self` closes every socket (see `Drop`).
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let paused = self.acceptor.as_ref().and_then(|a| a.paused_until);
        let wake = match (self.next_sweep, paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Round up so that the poll does not return a hair before the deadline.
        wake.map_or(MAX_POLL_WAIT, |t| {
            (t.saturating_duration_since(now) + Duration::from_millis(1)).min(MAX_POLL_WAIT)
        })
    }

    /// Accepts every pending connection (on loop 0), unless accepting is paused.
    fn accept_all(&mut self, now: Instant) {
        let Some(mut acceptor) = self.acceptor.take() else {
            return;
        };
        if acceptor.paused_until.is_none() {
            self.accept_with(&mut acceptor, now);
        }
        self.acceptor = Some(acceptor);
    }

    fn accept_with(&mut self, acceptor: &mut Acceptor, now: Instant) {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        loop {
            match acceptor.listener.accept() {
                Ok((stream, _)) => {
                    bump(&counters.accepted, 1);
                    // Only this thread admits, so the count cannot rise between the check and
                    // the increment; other loops only lower it.
                    if counters.open_connections.load(Ordering::Relaxed)
                        >= self.limits.max_connections
                    {
                        bump(&counters.rejected_over_limit, 1);
                        // Best effort: a fresh socket's send buffer is empty.
                        let _ = (&stream).write(BUSY);
                        continue;
                    }
                    counters.open_connections.fetch_add(1, Ordering::Relaxed);
                    self.hand_over(acceptor, stream, now);
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
                    acceptor.warnings.warn(
                        now,
                        format_args!(
                            "health endpoint: accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}"
                        ),
                    );
                    if let Err(e) = self.poll.registry().deregister(&mut acceptor.listener) {
                        log::debug!("health endpoint: deregistering the listener: {e}");
                    }
                    acceptor.paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Gives an admitted connection to the least loaded loop: this one, or another through its
    /// inbox and waker.
    fn hand_over(&mut self, acceptor: &mut Acceptor, stream: TcpStream, now: Instant) {
        let loads = &self.shared.loads;
        let target = acceptor.pick(loads);
        loads[target].fetch_add(1, Ordering::Relaxed);
        if target == self.id {
            self.insert(stream, now);
            return;
        }
        let peer = &acceptor.peers[target - 1];
        match peer.inbox.send(stream) {
            Ok(()) => {
                if let Err(e) = peer.waker.wake() {
                    // It still looks at its inbox within MAX_POLL_WAIT.
                    log::debug!("health endpoint: waking event loop {target}: {e}");
                }
            }
            Err(SendError(stream)) => {
                // That loop has ended (it panicked, or the server is stopping): serve it here,
                // and hand it nothing more.
                loads[target].store(GONE, Ordering::Relaxed);
                loads[self.id].fetch_add(1, Ordering::Relaxed);
                self.insert(stream, now);
            }
        }
    }

    /// Takes the connections the accepting loop handed to this one.
    fn take_handed_over(&mut self, now: Instant) {
        while let Some(stream) = self.inbox.as_ref().and_then(|i| i.try_recv().ok()) {
            self.insert(stream, now);
        }
    }

    /// Queues the responses that arrived through [`Responder`]s and drives their connections.
    fn take_answers(&mut self, now: Instant) {
        while let Ok(Answer {
            index,
            id,
            response,
        }) = self.answers.try_recv()
        {
            let Some(Some(c)) = self.connections.get_mut(index) else {
                continue; // its connection has closed
            };
            if c.id != id || !c.deliver(&response, now) {
                continue; // another connection in that slot, or not waiting
            }
            self.drive(index, now);
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        let Some(mut acceptor) = self.acceptor.take() else {
            return;
        };
        match self
            .poll
            .registry()
            .register(&mut acceptor.listener, LISTENER, Interest::READABLE)
        {
            Ok(()) => {
                acceptor.paused_until = None;
                // Connections that waited in the backlog raise no new edge: take them now.
                self.accept_with(&mut acceptor, now);
            }
            Err(e) => {
                acceptor.warnings.warn(
                    now,
                    format_args!("health endpoint: re-registering the listener failed: {e}"),
                );
                acceptor.paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
        self.acceptor = Some(acceptor);
    }

    /// Starts serving a connection admitted and counted for this loop.
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
            self.release(1);
            return;
        }
        // Responses are written whole; there is nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let mut connection = Connection::new(stream, self.limits.max_head_bytes, now);
        connection.id = self.next_id;
        connection.index = index;
        self.next_id += 1;
        self.note_deadline(connection.deadline(&self.limits).0);
        if index == self.connections.len() {
            self.connections.push(Some(connection));
        } else {
            self.connections[index] = Some(connection);
        }
    }

    /// Uncounts `n` closed connections of this loop, globally and from its load.
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.shared
            .counters
            .open_connections
            .fetch_sub(n, Ordering::Relaxed);
        // A loop marked GONE is no longer counted.
        let _ =
            self.shared.loads[self.id].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < GONE).then(|| l.saturating_sub(n))
            });
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut c) = self.connections[index].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(index);
            self.release(1);
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
            answers: &self.answer_sender,
            waker: &self.waker,
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

impl Drop for EventLoop {
    /// Closes every connection of the loop, and those handed to it and not yet taken, and
    /// uncounts them; when the loop ends, and also if it panicked.
    fn drop(&mut self) {
        let mut closed = self.connections.iter().flatten().count();
        self.connections.clear();
        if let Some(inbox) = &self.inbox {
            closed += inbox.try_iter().count();
        }
        self.release(closed);
    }
}

/// What a connection needs from the loop while it is driven.
struct Cx<'a> {
    now: Instant,
    limits: &'a Limits,
    handler: &'a Handler,
    counters: &'a Counters,
    scratch: &'a mut [u8],
    answers: &'a Sender<Answer>,
    waker: &'a Arc<Waker>,
}

/// How to send the response to a request answered [`Reply::Later`] once it arrives.
#[derive(Debug, Clone, Copy)]
struct Awaited {
    head_only: bool,
    close: bool,
    keep_alive_1_0: bool,
    since: Instant,
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
    /// Its slot in the loop and its identity, for responses that come later.
    index: usize,
    id: u64,
    /// The request waiting for a response that comes later, if one is.
    awaited: Option<Awaited>,
}

/// What answering the start of the input buffer did.
enum Step {
    Answered,
    NeedMore,
    Closing,
    /// The response comes later; nothing more is parsed until it has.
    Awaiting,
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
            index: 0,
            id: 0,
            awaited: None,
        }
    }

    /// Queues the response to the awaited request; `false` if none is awaited.
    fn deliver(&mut self, response: &Response, now: Instant) -> bool {
        let Some(awaited) = self.awaited.take() else {
            return false;
        };
        self.queue(
            response,
            awaited.head_only,
            awaited.close,
            awaited.keep_alive_1_0,
            now,
        );
        if awaited.close {
            self.state = State::Closing;
        }
        // A pipelined head that follows gets its own head-read time from now.
        self.head_since = (self.start < self.end).then_some(now);
        true
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
        let writing = self.write_since.map(|since| since + limits.write_timeout);
        if let Some(awaited) = self.awaited {
            // Earlier responses still being sent keep their own deadline.
            let answer = awaited.since + limits.answer_timeout;
            return (writing.map_or(answer, |w| w.min(answer)), true);
        }
        if let Some(deadline) = writing {
            return (deadline, true);
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
            _ if self.awaited.is_some() => "no answer in time",
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
            while self.state == State::Open
                && self.awaited.is_none()
                && self.unsent() < OUT_HIGH_WATER
            {
                if requests == REQUESTS_PER_TURN {
                    turn_used = true;
                    break;
                }
                match self.answer_one(cx) {
                    Step::Answered => requests += 1,
                    Step::NeedMore | Step::Closing | Step::Awaiting => break,
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
                if self.awaited.is_some() {
                    // The awaited response is still to be sent (its arrival drives us again).
                    return Next::Wait;
                }
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
                if self.awaited.is_some() {
                    // Pipelined requests fill the buffer while a response is awaited: read
                    // more once it has been sent (its arrival drives us again).
                    return Next::Wait;
                }
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
        let reply = match catch_unwind(AssertUnwindSafe(|| (cx.handler)(&request))) {
            Ok(reply) => reply,
            Err(_) => {
                log::error!(
                    "health endpoint: the handler panicked on {} {}",
                    request.method(),
                    request.path()
                );
                Reply::Now(Response::text(500, "internal error\n"))
            }
        };
        let head_only = request.method() == "HEAD";
        let keep_alive_1_0 = request.minor_version() == 0;
        let head_len = head.len;
        match reply {
            Reply::Now(response) => {
                self.queue(&response, head_only, close, keep_alive_1_0, cx.now);
            }
            Reply::Later(start) => {
                self.awaited = Some(Awaited {
                    head_only,
                    close,
                    keep_alive_1_0,
                    since: cx.now,
                });
                let responder = Responder::new(
                    cx.answers.clone(),
                    Arc::clone(cx.waker),
                    self.index,
                    self.id,
                );
                // If it panics, the responder it was given is dropped, which sends a 500.
                if catch_unwind(AssertUnwindSafe(|| start(responder))).is_err() {
                    log::error!(
                        "health endpoint: the handler's deferred answer panicked on {} {}",
                        request.method(),
                        request.path()
                    );
                }
                bump(&cx.counters.requests, 1);
                self.answered = answered;
                self.start += head_len;
                if close {
                    // Nothing after this request is read as a request.
                    self.start = self.end;
                }
                self.head_since = None;
                return Step::Awaiting;
            }
        }
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

//! [`EventLoop`]: one event-loop thread of a [`Server`](super::Server), which polls its
//! connections, and on loop 0 also accepts them and hands each to the least loaded loop.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::connection::{Connection, Cx, Next};
use super::reply::Answer;
use super::server::{Shared, GONE};
use super::stats::bump;
use super::{Handler, Limits};

const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// How long accepting pauses after an accept error such as `EMFILE`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The most events one poll returns.
const EVENTS_CAPACITY: usize = 256;
/// The longest an event loop waits in a poll: an idle loop wakes this often to look at its
/// inbox and the stop flag, which bounds a shutdown even if a wake-up were lost.
pub(super) const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// The sweep for deadlines runs at most this often.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(5);
/// The most often the loop logs the same kind of warning.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// What a best-effort answer to a connection over the limit says.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Cache-Control: no-store\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

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
            crate::relay::warn!("{message} ({} more like it not logged)", self.held_back);
        } else {
            crate::relay::warn!("{message}");
        }
        self.last = Some(now);
        self.held_back = 0;
    }
}

/// Another event loop, as the accepting loop hands connections to it.
pub(super) struct Peer {
    pub(super) inbox: Sender<TcpStream>,
    pub(super) waker: Arc<Waker>,
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
pub(super) struct EventLoop {
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
    /// Responses sent later through [`Responder`](super::Responder)s, and the sending side and
    /// waker they get.
    answers: Receiver<Answer>,
    answer_sender: Sender<Answer>,
    waker: Arc<Waker>,
    /// Identifies connections across the reuse of their slots, for late answers.
    next_id: u64,
}

impl EventLoop {
    /// Loop `id` of a server, polling with `poll`, whose waker is `waker`; loops 1, 2, ... take
    /// the connections handed to them from their `inbox`. It accepts nothing unless
    /// [`accept_from`](EventLoop::accept_from) makes it the accepting loop.
    pub(super) fn new(
        id: usize,
        poll: Poll,
        waker: Arc<Waker>,
        inbox: Option<Receiver<TcpStream>>,
        limits: Limits,
        handler: Handler,
        shared: Arc<Shared>,
    ) -> EventLoop {
        let (answer_sender, answers) = crossbeam_channel::unbounded();
        EventLoop {
            id,
            poll,
            acceptor: None,
            inbox,
            scratch: vec![0; 8 * 1024].into_boxed_slice(),
            limits,
            handler,
            shared,
            connections: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
            next_sweep: None,
            answers,
            answer_sender,
            waker,
            next_id: 0,
        }
    }

    /// Makes this loop (loop 0) the accepting one: it polls `listener`, and hands the
    /// connections to itself and to `peers`, loops 1, 2, ...
    pub(super) fn accept_from(
        &mut self,
        mut listener: TcpListener,
        peers: Vec<Peer>,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        self.acceptor = Some(Acceptor {
            listener,
            paused_until: None,
            warnings: Warnings::default(),
            peers,
            next: 0,
        });
        Ok(())
    }

    /// Serves until the server stops; dropping the loop then closes its connections.
    pub(super) fn run(mut self) {
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
                        crate::relay::debug!("health endpoint: deregistering the listener: {e}");
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
                    crate::relay::debug!("health endpoint: waking event loop {target}: {e}");
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

    /// Queues the responses that arrived through [`Responder`](super::Responder)s and drives
    /// their connections.
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
            crate::relay::debug!("health endpoint: registering a connection failed: {e}");
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
                    crate::relay::debug!("health endpoint: closing a connection: {}", c.phase());
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

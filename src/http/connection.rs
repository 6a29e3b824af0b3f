//! [`Connection`]: one client connection's state machine, from its first request head to its
//! lingering close, driven by its event loop.
//!
//! What one connection can keep queued is bounded twice over: in the process, its output buffer
//! passes [`OUT_HIGH_WATER`] by at most one response, for once it has, nothing more is parsed
//! until all of it has been written to the socket; in the kernel, its socket's buffers are
//! capped ([`socket::cap_buffers`]). A connection given up on with answers still queued is reset
//! when it is dropped, so that none of it outlives the connection in the kernel (see `Drop`).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::Waker;

use super::reply::Answer;
use super::request::{self, Parsed, Reject};
use super::socket;
use super::stats::{bump, Counters};
use super::{Handler, Limits, Reply, Responder, Response, MAX_HEADERS};

/// Once this many bytes are unsent, no further request is parsed from the connection until its
/// output buffer has been written out completely.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// After the last response of a connection, how long the server goes on reading (and
/// discarding) what the client still sends, so that closing does not reset the connection
/// before the client has read the response.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much a lingering connection may send before it is closed anyway.
const LINGER_DISCARD: usize = 64 * 1024;
/// Requests answered, and reads done, on one connection before the loop turns to the others.
const REQUESTS_PER_TURN: usize = 64;
const READS_PER_TURN: usize = 16;

/// What the loop does with a connection at its [`deadline`](Connection::deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// It took too long (a head, an idle keep-alive, a write, an answer): closed, counted as a
    /// timeout.
    TimedOut,
    /// Its lingering after its last response is over: closed.
    Lingered,
    /// It has been idle, with no request in progress, for
    /// [`HANDOVER_IDLE`](super::HANDOVER_IDLE) since the server handed over: it ends as after
    /// a last response ([`end_handed_over`](Connection::end_handed_over)).
    HandedOver,
}

/// What to do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Wait for readiness.
    Wait,
    /// It has work left but used up its turn.
    Again,
    /// Close it.
    Close,
}

/// What a connection needs from the loop while it is driven.
pub(super) struct Cx<'a> {
    pub(super) now: Instant,
    pub(super) limits: &'a Limits,
    pub(super) handler: &'a Handler,
    pub(super) counters: &'a Counters,
    pub(super) scratch: &'a mut [u8],
    pub(super) answers: &'a Sender<Answer>,
    pub(super) waker: &'a Arc<Waker>,
    /// The server's hand-over flag, looked at as each request is answered: a request read in
    /// the turn in which the server hands over is answered in the closing mode too.
    pub(super) handed_over: &'a AtomicBool,
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
pub(super) struct Connection {
    pub(super) stream: TcpStream,
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
    /// The unsent output reached [`OUT_HIGH_WATER`]: nothing is parsed until it is all sent.
    draining: bool,
    /// The connection came to its end on its own (the client closed, or the socket failed), so
    /// it closes the ordinary way; one dropped without this was given up on (see `Drop`).
    finished: bool,
    answered: u64,
    /// When the connection last became idle: accepted, or its last response sent with nothing
    /// of the next request received.
    idle_since: Instant,
    /// When the head-read clock started for the head being received, if one is.
    head_since: Option<Instant>,
    /// When the output buffer stopped being empty, if it is not.
    write_since: Option<Instant>,
    /// Whether it is in the loop's `again` list.
    pub(super) queued: bool,
    /// Its slot in the loop and its identity, for responses that come later.
    pub(super) index: usize,
    pub(super) id: u64,
    /// The request waiting for a response that comes later, if one is.
    awaited: Option<Awaited>,
    /// Once the server has handed over: when the connection is to end if it is idle then,
    /// with no request in progress (see [`hand_over`](Connection::hand_over)).
    handover: Option<Instant>,
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
    /// A connection over `stream`, just accepted, whose socket buffers are capped here (best
    /// effort: it is served without the caps if the system refuses them).
    pub(super) fn new(stream: TcpStream, head_bytes: usize, now: Instant) -> Connection {
        let _ = socket::cap_buffers(&stream);
        Connection {
            stream,
            state: State::Open,
            input: vec![0; head_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
            read_closed: false,
            output: Vec::new(),
            sent: 0,
            draining: false,
            finished: false,
            answered: 0,
            idle_since: now,
            // The first head must arrive within the head-read timeout of the accept.
            head_since: Some(now),
            write_since: None,
            queued: false,
            index: 0,
            id: 0,
            awaited: None,
            handover: None,
        }
    }

    /// Puts the connection in its closing mode, the server having handed over its listener.
    ///
    /// The rule: the response to a request in progress (one answered later) or to one that
    /// arrives from now on says `Connection: close`, and the connection closes once it is sent,
    /// reading nothing after that request; if the connection is idle with no request in
    /// progress at `idle_end` (nothing of a head received), it ends then
    /// ([`Due::HandedOver`]). A partial head goes on under its head-read deadline. What is
    /// already queued in the output buffer is sent as it was.
    pub(super) fn hand_over(&mut self, idle_end: Instant) {
        self.handover = Some(idle_end);
        if let Some(awaited) = &mut self.awaited {
            awaited.close = true;
            // Pipelined after it: never read as requests.
            self.start = self.end;
        }
    }

    /// Ends a connection at [`Due::HandedOver`]: its side is shut down, as after a last
    /// response, and it lingers (so its client sees the end of the stream, and a reset is
    /// avoided); the loop drives it next.
    pub(super) fn end_handed_over(&mut self, now: Instant) {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.state = State::Lingering {
            since: now,
            discarded: 0,
        };
    }

    /// Queues the response to the awaited request; `false` if none is awaited.
    pub(super) fn deliver(&mut self, response: &Response, now: Instant) -> bool {
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

    /// When the connection is to be closed (or ended) unless something happens, and what
    /// happens then.
    pub(super) fn deadline(&self, limits: &Limits) -> (Instant, Due) {
        if let State::Lingering { since, .. } = self.state {
            return (since + LINGER_TIMEOUT, Due::Lingered);
        }
        let writing = self.write_since.map(|since| since + limits.write_timeout);
        if let Some(awaited) = self.awaited {
            // Earlier responses still being sent keep their own deadline.
            let answer = awaited.since + limits.answer_timeout;
            return (writing.map_or(answer, |w| w.min(answer)), Due::TimedOut);
        }
        if let Some(deadline) = writing {
            return (deadline, Due::TimedOut);
        }
        let timeout = match self.head_since {
            Some(since) => since + limits.head_read_timeout,
            None => self.idle_since + limits.keep_alive_idle_timeout,
        };
        // Nothing of a head received (idle, or just accepted): no request in progress.
        match self.handover {
            Some(end) if self.start == self.end && end < timeout => (end, Due::HandedOver),
            _ => (timeout, Due::TimedOut),
        }
    }

    /// What the connection is waiting for, for logs.
    pub(super) fn phase(&self) -> &'static str {
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
    pub(super) fn drive(&mut self, cx: &mut Cx<'_>) -> Next {
        let next = self.turn(cx);
        if next == Next::Close {
            self.finished = true;
        }
        next
    }

    /// One turn of [`drive`](Connection::drive).
    fn turn(&mut self, cx: &mut Cx<'_>) -> Next {
        let mut requests = 0;
        let mut reads = 0;
        loop {
            if let State::Lingering { .. } = self.state {
                return self.linger(cx);
            }
            let mut turn_used = false;
            while self.state == State::Open && self.awaited.is_none() && !self.draining {
                if requests == REQUESTS_PER_TURN {
                    turn_used = true;
                    break;
                }
                match self.answer_one(cx) {
                    Step::Answered => requests += 1,
                    Step::NeedMore | Step::Closing | Step::Awaiting => break,
                }
            }
            // Requests may be waiting in the input buffer behind the answers that filled the
            // output: once those are all written, they are parsed before anything more is read
            // (no event would come for them, if the socket took everything at once).
            let held_back = self.draining && self.state == State::Open && self.awaited.is_none();
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
            if held_back {
                continue;
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
        let handed_over = self.handover.is_some() || cx.handed_over.load(Ordering::Acquire);
        let close = head.close || head.has_body || last || self.read_closed || handed_over;
        let reply = match catch_unwind(AssertUnwindSafe(|| (cx.handler)(&request))) {
            Ok(reply) => reply,
            Err(_) => {
                crate::relay::error!(
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
                    crate::relay::error!(
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
        crate::relay::debug!("health endpoint: refusing a request: {}", reject.reason());
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
        if self.unsent() >= OUT_HIGH_WATER {
            self.draining = true;
        }
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
        self.draining = false;
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

impl Drop for Connection {
    /// A connection that did not come to its end on its own was given up on: its loop dropped
    /// it at a deadline (the write deadline, with answers the client is not reading; an idle or
    /// lingering one), or because the server is stopping. If answers are still queued then,
    /// in its output buffer or in the kernel unacknowledged by the client, it is closed with a
    /// reset ([`socket::reset_on_close`]): an ordinary close would leave the kernel retrying to
    /// deliver them to a client that does not read, on an orphaned socket that no limit of the
    /// endpoint counts. A connection that ended on its own closes the ordinary way, so that a
    /// client that half-closed still reads its last answer.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let queued = self.unsent() > 0
            || socket::unacknowledged(&self.stream).is_some_and(|bytes| bytes > 0);
        if queued {
            let _ = socket::reset_on_close(&self.stream);
        }
    }
}

impl Connection {
    /// Whether the connection may be closed to make room for a newcomer, why, and since when
    /// it has made no progress (see [`admission`](super::admission)); `None` while a request of
    /// it is being answered (its answer comes later, or complete requests wait for their turn).
    /// Meant to be asked between two drives.
    pub(super) fn evictable(&self) -> Option<super::admission::Evictable> {
        use super::admission::{Evictable, EvictionReason};
        let (reason, since, closing) = match self.state {
            State::Lingering { since, .. } => (EvictionReason::Idle, since, true),
            _ if self.queued || self.awaited.is_some() => return None,
            // Between two drives, output left unsent means the socket would take no more.
            _ => match (self.write_since, self.head_since) {
                (Some(since), _) => (EvictionReason::Stalled, since, false),
                (None, Some(since)) => (EvictionReason::HeadLess, since, false),
                (None, None) => (EvictionReason::Idle, self.idle_since, false),
            },
        };
        Some(Evictable {
            reason,
            since,
            closing,
        })
    }
}

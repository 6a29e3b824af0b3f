//! [`EventLoop`]: one event-loop thread of a [`Server`](super::Server), which polls its
//! connections. Loop 0 also accepts them and hands each to a loop (`accept.rs`); every loop
//! admits the connections handed to it, evicting one of its own to make room when it must
//! (`admit.rs`), and puts its connections in their closing mode once the server hands over
//! (`handover.rs`).

mod accept;
mod admit;
mod handover;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::admission::{self, PeerCounts};
use super::connection::{Connection, Cx, Due, Next};
use super::reply::Answer;
use super::server::{Shared, GONE};
use super::stats::bump;
use super::{Handler, Limits};

use self::accept::Acceptor;
pub(super) use self::accept::{Handoff, Peer};
pub(super) use self::handover::HANDOVER_IDLE;

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

/// A connection of the loop, with what admission needs to know of it.
struct Slot {
    connection: Connection,
    /// The client's address (an IPv4-mapped IPv6 address as IPv4).
    peer: IpAddr,
    /// Whether it was evictable when last looked at: so counted in the loop's
    /// [`Shared::evictable`].
    evictable: bool,
}

/// Everything one event-loop thread owns.
pub(super) struct EventLoop {
    /// Its index in [`Shared::loads`]; loop 0 accepts.
    id: usize,
    poll: Poll,
    /// On loop 0 only.
    acceptor: Option<Acceptor>,
    /// Connections handed over by the accepting loop, on loops 1, 2, ...
    inbox: Option<Receiver<Handoff>>,
    /// Where lingering connections' input is read to be discarded.
    scratch: Box<[u8]>,
    limits: Limits,
    handler: Handler,
    shared: Arc<Shared>,
    /// Connection `i` has token `FIRST_CONNECTION + i`.
    slots: Vec<Option<Slot>>,
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
    /// How many connections each peer holds on this loop, and may hold.
    peers: PeerCounts,
    /// Evictions and refusals are logged, each at most once per [`WARN_INTERVAL`].
    evictions: Warnings,
    refusals: Warnings,
    /// Once the loop has seen the server hand over: when its connections that are idle with no
    /// request in progress end ([`Connection::hand_over`]).
    handover: Option<Instant>,
}

impl EventLoop {
    /// Loop `id` of a server, polling with `poll`, whose waker is `waker`; loops 1, 2, ... take
    /// the connections handed to them from their `inbox`. It accepts nothing unless
    /// [`accept_from`](EventLoop::accept_from) makes it the accepting loop.
    pub(super) fn new(
        id: usize,
        poll: Poll,
        waker: Arc<Waker>,
        inbox: Option<Receiver<Handoff>>,
        limits: Limits,
        handler: Handler,
        shared: Arc<Shared>,
    ) -> EventLoop {
        let (answer_sender, answers) = crossbeam_channel::unbounded();
        let share = admission::peer_share(limits.peer_limit(), shared.loads.len());
        EventLoop {
            id,
            poll,
            acceptor: None,
            inbox,
            scratch: vec![0; 8 * 1024].into_boxed_slice(),
            limits,
            handler,
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
            next_sweep: None,
            answers,
            answer_sender,
            waker,
            next_id: 0,
            peers: PeerCounts::new(share),
            evictions: Warnings::default(),
            refusals: Warnings::default(),
            handover: None,
        }
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
            // Before the events: a request read in this turn is answered in the closing mode.
            self.follow_handover(now);
            // Taken first: a connection that uses up its turn in this round waits for the next.
            let again = std::mem::take(&mut self.again);
            for event in &events {
                match event.token() {
                    LISTENER => self.note_pending_accepts(),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONNECTION, now),
                }
            }
            // Checked every turn, not only on a wake-up: it costs one atomic load when empty.
            self.take_handed_over(now);
            self.take_answers(now);
            for index in again {
                if let Some(slot) = self.slots[index].as_mut() {
                    slot.connection.queued = false;
                    self.drive(index, now);
                }
            }
            // After the connections' own events, so that a flood of newcomers does not delay
            // those already in; at most a fixed number per turn.
            let accepted = self.accept_pending(now);
            self.sweep(now);
            if !events.is_empty() || accepted {
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
        if !self.again.is_empty() || self.acceptor.as_ref().is_some_and(Acceptor::has_pending) {
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

    /// Queues the responses that arrived through [`Responder`](super::Responder)s and drives
    /// their connections.
    fn take_answers(&mut self, now: Instant) {
        // An answer that comes after a hand-over is sent with `Connection: close`, even when
        // the hand-over came after this turn began.
        self.follow_handover(now);
        while let Ok(Answer {
            index,
            id,
            response,
        }) = self.answers.try_recv()
        {
            let Some(Some(slot)) = self.slots.get_mut(index) else {
                continue; // its connection has closed
            };
            let c = &mut slot.connection;
            if c.id != id || !c.deliver(&response, now) {
                continue; // another connection in that slot, or not waiting
            }
            self.drive(index, now);
        }
    }

    /// Starts serving a connection admitted for this loop (its slot taken, its load counted),
    /// and reads at once what it has sent: a probe's request is answered now, and a connection
    /// its client has closed goes now.
    fn insert(&mut self, mut stream: TcpStream, peer: IpAddr, now: Instant) {
        let index = self.free.pop().unwrap_or(self.slots.len());
        let registered = self.poll.registry().register(
            &mut stream,
            Token(FIRST_CONNECTION + index),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            crate::relay::debug!("health endpoint: registering a connection failed: {e}");
            if index < self.slots.len() {
                self.free.push(index);
            }
            self.release_slots(1);
            self.unload(1);
            return;
        }
        // Responses are written whole; there is nothing to gain from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let mut connection = Connection::new(stream, self.limits.max_head_bytes, now);
        connection.id = self.next_id;
        connection.index = index;
        if let Some(idle_end) = self.handover {
            // Accepted before the hand-over, and on its way to this loop meanwhile.
            connection.hand_over(idle_end);
        }
        self.next_id += 1;
        self.note_deadline(connection.deadline(&self.limits).0);
        self.peers.add(peer);
        let slot = Slot {
            connection,
            peer,
            evictable: false,
        };
        if index == self.slots.len() {
            self.slots.push(Some(slot));
        } else {
            self.slots[index] = Some(slot);
        }
        self.drive(index, now);
    }

    /// Gives back `n` slots of the cap, over every loop; if that leaves none open after the
    /// listener was dropped at a hand-over, tells the server's `DrainWatch`.
    fn release_slots(&self, n: usize) {
        if n > 0 {
            let open = &self.shared.counters.open_connections;
            // SeqCst, with `retired`: the accepting loop sets it, then reads the count; one of
            // the two sees the other's write, so a drain is never missed.
            let before = open.fetch_sub(n, Ordering::SeqCst);
            if before == n && self.shared.retired.load(Ordering::SeqCst) {
                self.shared.signal_drained();
            }
        }
    }

    /// Uncounts `n` connections handed to this loop from its load.
    fn unload(&self, n: usize) {
        // A loop marked GONE is no longer counted.
        let _ =
            self.shared.loads[self.id].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < GONE).then(|| l.saturating_sub(n))
            });
    }

    /// Closes the connection in slot `index`, giving its slot of the cap back unless
    /// `keep_slot` (a newcomer takes it over).
    fn close(&mut self, index: usize, keep_slot: bool) {
        let Some(mut slot) = self.slots[index].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut slot.connection.stream);
        self.free.push(index);
        self.peers.remove(slot.peer);
        if slot.evictable {
            self.shared.evictable[self.id].fetch_sub(1, Ordering::Relaxed);
        }
        if !keep_slot {
            self.release_slots(1);
        }
        self.unload(1);
    }

    /// Closes the connection in slot `index` for good.
    fn remove(&mut self, index: usize) {
        self.close(index, false);
    }

    fn drive(&mut self, index: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return; // an event for a connection closed earlier in this turn
        };
        let c = &mut slot.connection;
        let mut cx = Cx {
            now,
            limits: &self.limits,
            handler: &self.handler,
            counters: &self.shared.counters,
            scratch: &mut self.scratch,
            answers: &self.answer_sender,
            waker: &self.waker,
            handed_over: &self.shared.handed_over,
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
                self.note_evictable(index);
            }
        }
    }

    /// Looks again at whether the connection in slot `index` is evictable, and counts the
    /// change in the loop's [`Shared::evictable`].
    fn note_evictable(&mut self, index: usize) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let evictable = slot.connection.evictable().is_some();
        if evictable != slot.evictable {
            slot.evictable = evictable;
            let delta = if evictable { 1 } else { -1 };
            self.shared.evictable[self.id].fetch_add(delta, Ordering::Relaxed);
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        self.next_sweep = Some(self.next_sweep.map_or(deadline, |t| t.min(deadline)));
    }

    /// Closes the connections whose deadline has passed (ends those idle after a hand-over),
    /// and finds the next deadline.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let mut nearest: Option<Instant> = None;
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            let (mut deadline, due) = slot.connection.deadline(&self.limits);
            if now >= deadline {
                match due {
                    Due::TimedOut => {
                        bump(&self.shared.counters.timed_out, 1);
                        let phase = slot.connection.phase();
                        crate::relay::debug!("health endpoint: closing a connection: {phase}");
                        self.remove(index);
                    }
                    Due::Lingered => self.remove(index),
                    Due::HandedOver => {
                        slot.connection.end_handed_over(now);
                        self.drive(index, now);
                    }
                }
                // Ended, not closed: it lingers until its new deadline.
                match &self.slots[index] {
                    Some(slot) => deadline = slot.connection.deadline(&self.limits).0,
                    None => continue,
                }
            }
            nearest = Some(nearest.map_or(deadline, |n| n.min(deadline)));
        }
        self.next_sweep = nearest.map(|t| t.max(now + MIN_SWEEP_INTERVAL));
    }
}

impl Drop for EventLoop {
    /// Closes every connection of the loop, and those handed to it and not yet taken, and
    /// uncounts them; when the loop ends, and also if it panicked.
    fn drop(&mut self) {
        let open = self.slots.iter().flatten().count();
        self.slots.clear();
        // Uncounted first, then marked GONE: the accepting loop hands it nothing more (it looks
        // before it sends), and what it sent already is in the inbox, drained next.
        self.unload(open);
        self.shared.loads[self.id].store(GONE, Ordering::Relaxed);
        let mut slots = open;
        if let Some(inbox) = self.inbox.take() {
            slots += inbox
                .try_iter()
                .map(|h| usize::from(h.reserved))
                .sum::<usize>();
            // Dropped here: a send from now on fails, and the sender admits it itself.
            drop(inbox);
        }
        self.release_slots(slots);
    }
}

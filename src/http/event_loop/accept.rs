//! The accepting loop's part (loop 0): it accepts, drops the connections their clients have
//! already closed, and hands each other one to a loop, which admits it (`admit.rs`): to the
//! least loaded loop when a slot of the cap is free, else to the loop with the most evictable
//! connections, which makes room by evicting one of them. It also registers its listener only
//! once the server accepts (a server may start paused), and drops it for good at a hand-over.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{SendError, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Waker};

use super::{EventLoop, Warnings, ACCEPT_BACKOFF, GONE, LISTENER};
use crate::http::admission::try_reserve;
use crate::http::stats::bump;

/// The most connections the accepting loop accepts in one turn; the rest of the backlog waits
/// for the next turn, after the connections already in have been served.
const ACCEPTS_PER_TURN: usize = 64;

/// A connection on its way to the loop that is to admit it.
pub(in crate::http) struct Handoff {
    pub(super) stream: TcpStream,
    /// The client's address (an IPv4-mapped IPv6 address as IPv4).
    pub(super) peer: IpAddr,
    /// Whether a slot of the cap was taken for it. If not, every slot was taken, and it was
    /// sent to a loop that had evictable connections, one of which the accepting loop counted
    /// as spoken for in that loop's [`Shared::evictable`](crate::http::server::Shared).
    pub(super) reserved: bool,
}

/// Another event loop, as the accepting loop hands connections to it.
pub(in crate::http) struct Peer {
    pub(in crate::http) inbox: Sender<Handoff>,
    pub(in crate::http) waker: Arc<Waker>,
}

/// What the accepting loop (loop 0) owns besides what every loop owns.
pub(super) struct Acceptor {
    listener: TcpListener,
    /// While accepting is paused after an error, the listener is deregistered until then.
    pub(super) paused_until: Option<Instant>,
    /// The server started paused and has not yet been told to accept: the listener is not
    /// registered (connections wait in the backlog).
    held: bool,
    /// Whether the backlog may hold connections: the listener was readable and accepting has
    /// not yet seen it empty. (Readiness is edge-triggered: no new event comes for those.)
    pending: bool,
    warnings: Warnings,
    /// Loops 1, 2, ...
    peers: Vec<Peer>,
    /// Where the search for a loop starts next, so that ties go round.
    next: usize,
}

impl Acceptor {
    /// Whether connections may wait in the backlog, and accepting is not paused.
    pub(super) fn has_pending(&self) -> bool {
        self.pending && self.paused_until.is_none() && !self.held
    }

    /// Whether the listener is registered with the loop's poll.
    fn registered(&self) -> bool {
        !self.held && self.paused_until.is_none()
    }

    /// The loop to hand the next connection to when a slot is free: the least loaded, ties
    /// going round.
    fn least_loaded(&mut self, loads: &[AtomicUsize]) -> usize {
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

    /// The loop to hand the next connection to when every slot is taken: the one with the most
    /// evictable connections (ties going round), one of which is then counted as spoken for;
    /// `None` if no loop has any.
    fn most_evictable(
        &mut self,
        loads: &[AtomicUsize],
        evictable: &[AtomicIsize],
    ) -> Option<usize> {
        let n = loads.len();
        let start = self.next;
        self.next = (start + 1) % n;
        let mut best = None;
        let mut most = 0;
        for k in 0..n {
            let i = (start + k) % n;
            let count = evictable[i].load(Ordering::Relaxed);
            if count > most && loads[i].load(Ordering::Relaxed) < GONE {
                (best, most) = (Some(i), count);
            }
        }
        let best = best?;
        evictable[best].fetch_sub(1, Ordering::Relaxed);
        Some(best)
    }
}

/// Whether the client of a just-accepted connection has already closed it (or reset it)
/// without sending anything: it would only take a slot until its end of stream is read.
fn closed_by_client(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

impl EventLoop {
    /// Makes this loop (loop 0) the accepting one: it polls `listener` (once the server's
    /// `accepting` flag is set, unless `accepting` now), and hands the connections to itself
    /// and to `peers`, loops 1, 2, ...
    pub(in crate::http) fn accept_from(
        &mut self,
        mut listener: TcpListener,
        peers: Vec<Peer>,
        accepting: bool,
    ) -> io::Result<()> {
        if accepting {
            self.poll
                .registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
        }
        self.acceptor = Some(Acceptor {
            listener,
            paused_until: None,
            held: !accepting,
            pending: false,
            warnings: Warnings::default(),
            peers,
            next: 0,
        });
        Ok(())
    }

    /// The listener is readable: connections wait in the backlog.
    pub(super) fn note_pending_accepts(&mut self) {
        if let Some(acceptor) = &mut self.acceptor {
            acceptor.pending = true;
        }
    }

    /// Accepts what waits in the backlog, at most [`ACCEPTS_PER_TURN`] (on loop 0), and resumes
    /// accepting once a pause is over (or begins, once the server accepts); whether it
    /// accepted anything. After a hand-over it drops the listener instead, for good.
    pub(super) fn accept_pending(&mut self, now: Instant) -> bool {
        let Some(mut acceptor) = self.acceptor.take() else {
            return false;
        };
        if self.shared.handed_over.load(Ordering::Acquire) {
            self.retire(acceptor);
            return false;
        }
        if acceptor.held && self.shared.accepting.load(Ordering::Acquire) {
            // As after a pause: what waited in the backlog is taken as pending.
            acceptor.held = false;
            self.resume_accepting(&mut acceptor, now);
        } else if acceptor.paused_until.is_some_and(|t| now >= t) {
            self.resume_accepting(&mut acceptor, now);
        }
        let accepted = acceptor.has_pending() && self.accept_turn(&mut acceptor, now);
        self.acceptor = Some(acceptor);
        accepted
    }

    /// One turn's accepts; whether it accepted anything.
    fn accept_turn(&mut self, acceptor: &mut Acceptor, now: Instant) -> bool {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        for turn in 0..ACCEPTS_PER_TURN {
            match acceptor.listener.accept() {
                Ok((stream, addr)) => {
                    bump(&counters.accepted, 1);
                    if closed_by_client(&stream) {
                        bump(&counters.abandoned, 1);
                        continue;
                    }
                    self.hand_over(acceptor, stream, addr.ip().to_canonical(), now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    acceptor.pending = false;
                    return turn > 0;
                }
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
                    return turn > 0;
                }
            }
        }
        true
    }

    /// Hands a newcomer to the loop that is to admit it: with a slot of the cap taken for it,
    /// to the least loaded loop; with every slot taken, to the loop with the most evictable
    /// connections. With none anywhere, it is refused here.
    fn hand_over(
        &mut self,
        acceptor: &mut Acceptor,
        stream: TcpStream,
        peer: IpAddr,
        now: Instant,
    ) {
        let shared = Arc::clone(&self.shared);
        let max = self.limits.max_connections;
        let reserved = try_reserve(&shared.counters.open_connections, max);
        let target = if reserved {
            acceptor.least_loaded(&shared.loads)
        } else {
            match acceptor.most_evictable(&shared.loads, &shared.evictable) {
                Some(target) => target,
                None => return self.refuse(&stream, peer, now),
            }
        };
        shared.loads[target].fetch_add(1, Ordering::Relaxed);
        let handoff = Handoff {
            stream,
            peer,
            reserved,
        };
        if target == self.id {
            return self.take_in(handoff, !reserved, now);
        }
        let other = &acceptor.peers[target - 1];
        // A loop that is ending has marked itself GONE: hand it nothing.
        let sent = if shared.loads[target].load(Ordering::Relaxed) >= GONE {
            Err(SendError(handoff))
        } else {
            other.inbox.send(handoff)
        };
        match sent {
            Ok(()) => {
                if let Err(e) = other.waker.wake() {
                    // It still looks at its inbox within MAX_POLL_WAIT.
                    crate::relay::debug!("health endpoint: waking event loop {target}: {e}");
                }
            }
            Err(SendError(handoff)) => {
                // That loop has ended (it panicked, or the server is stopping): admit it here,
                // and hand it nothing more. Nothing of this loop's was spoken for.
                shared.loads[target].store(GONE, Ordering::Relaxed);
                shared.loads[self.id].fetch_add(1, Ordering::Relaxed);
                self.take_in(handoff, false, now);
            }
        }
    }

    /// Drops the listener at a hand-over, deregistered first: the socket lives on in the process
    /// that took it over (an epoll registration would too, were the descriptor closed while
    /// registered). The loops' inboxes are dropped with it: nothing more is handed to them.
    /// Then, if no connection is open, tells the server's `DrainWatch`.
    fn retire(&mut self, mut acceptor: Acceptor) {
        if acceptor.registered() {
            if let Err(e) = self.poll.registry().deregister(&mut acceptor.listener) {
                crate::relay::debug!("health endpoint: deregistering the listener: {e}");
            }
        }
        drop(acceptor);
        crate::relay::info!("health endpoint: handed over; no longer accepting");
        // SeqCst, with the count: see `release_slots`.
        self.shared.retired.store(true, Ordering::SeqCst);
        if self.shared.open() == 0 {
            self.shared.signal_drained();
        }
    }

    /// Registers the listener again after a pause; the connections that waited in the backlog
    /// meanwhile raise no new event, so they are taken as pending.
    fn resume_accepting(&mut self, acceptor: &mut Acceptor, now: Instant) {
        match self
            .poll
            .registry()
            .register(&mut acceptor.listener, LISTENER, Interest::READABLE)
        {
            Ok(()) => {
                acceptor.paused_until = None;
                acceptor.pending = true;
            }
            Err(e) => {
                acceptor.warnings.warn(
                    now,
                    format_args!("health endpoint: re-registering the listener failed: {e}"),
                );
                acceptor.paused_until = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}

//! The server's side of a zero-downtime upgrade, in which a new process takes over the
//! listening socket: [`Server::start_accepting`] (the new process, started
//! [`Accepting::Paused`](super::Accepting::Paused)), [`Server::hand_over`] (the old one), and
//! waiting for the old one's connections to end ([`DrainWatch`]).
//!
//! Each call sets a flag of [`Shared`] and wakes the loops with their [`mio::Waker`]s; the
//! loops do the rest on their own threads (`event_loop/handover.rs`, and the accepting loop's
//! part in `event_loop/accept.rs`), so that a connection is only ever touched, and closed, by
//! its own loop. None of the calls blocks, nor takes a lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;

use super::{Server, Shared};

impl Server {
    /// Starts accepting, for a server started [`Accepting::Paused`](super::Accepting::Paused):
    /// the accepting loop registers its listener, and takes what waited in the backlog. A
    /// no-op if it accepts already, after a [`hand_over`](Server::hand_over) and after the
    /// shutdown. Idempotent, callable from any thread; it does not wait for the loop.
    pub(crate) fn start_accepting(&self) {
        if !self.shared.accepting.swap(true, Ordering::AcqRel) {
            self.wake(0);
        }
    }

    /// Stops accepting for good and puts every open connection in its closing mode; for the
    /// old process of an upgrade, once the new one serves the same listening socket.
    ///
    /// The rule: the accepting loop deregisters its listener and closes its descriptor (the
    /// socket lives on in the process that took it over, where connections that arrive later
    /// queue; none is refused). On every open connection, a request in progress or arriving
    /// later is answered as usual, its response says `Connection: close`, and the connection
    /// closes once it is sent (what was pipelined after it is not read). A connection with no
    /// request in progress (idle between requests, or with nothing of a head received) is
    /// closed once it has been idle for [`HANDOVER_IDLE`](crate::http::HANDOVER_IDLE) from the
    /// hand-over, unless a request arrives first; it ends as after a last answer (its side shut
    /// down, so its client reads the end of the stream, then a short linger). A partial head
    /// goes on under its head-read deadline; every other deadline holds as before. An answer
    /// already queued before the hand-over is sent as it was (without `Connection: close`);
    /// its connection then counts as idle, and ends at once if the idle time is over.
    ///
    /// Idempotent (a no-op after the shutdown), callable from any thread; it does not wait for
    /// the loops ([`wait_drained`](Server::wait_drained) does).
    pub(crate) fn hand_over(&self) {
        if !self.shared.handed_over.swap(true, Ordering::AcqRel) {
            for id in 0..self.loops.len() {
                self.wake(id);
            }
        }
    }

    /// The listening socket's descriptor while the server accepts or may (`None` from the
    /// [`hand_over`](Server::hand_over) on, and once the server has shut down), to hand to the
    /// process that is to take it over.
    ///
    /// The descriptor is the server's own, closed by the accepting loop at the hand-over or the
    /// shutdown: duplicate it (or pass it on) before either.
    #[cfg(unix)]
    pub(crate) fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        let running = self.loops.first().is_some_and(|l| l.thread.is_some());
        let serving = running && !self.shared.handed_over.load(Ordering::Acquire);
        serving.then_some(self.listener_fd)
    }

    /// The connections admitted and not yet closed, over every loop (0 once the server has
    /// shut down).
    // The endpoint waits through a `DrainWatch`; the tests call these two.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn open_connections(&self) -> usize {
        self.shared.open()
    }

    /// Waits until no connection is open (`true`), or until `deadline` (`false` if some still
    /// are); see [`DrainWatch::wait`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn wait_drained(&self, deadline: Instant) -> bool {
        self.drain_watch().wait(deadline)
    }

    /// What waits for the connections to end, held apart from the server: so that a caller
    /// that keeps the server behind a lock (the endpoint) waits without holding it.
    pub(crate) fn drain_watch(&self) -> DrainWatch {
        DrainWatch {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Whether the accepting loop has dropped its listener after a hand-over.
    #[cfg(test)]
    pub(crate) fn has_retired_listener(&self) -> bool {
        self.shared.retired.load(Ordering::SeqCst)
    }

    /// Wakes loop `id`, if it runs.
    fn wake(&self, id: usize) {
        let Some(l) = self.loops.get(id).filter(|l| l.thread.is_some()) else {
            return;
        };
        if let Err(e) = l.waker.wake() {
            // Cannot really happen; the loop looks at the flags within MAX_POLL_WAIT anyway.
            crate::relay::warn!("health endpoint: waking thread {:?} failed: {e}", l.name);
        }
    }
}

/// Waits for a server's open connections to end: [`Server::drain_watch`].
#[derive(Clone)]
pub(crate) struct DrainWatch {
    shared: Arc<Shared>,
}

impl DrainWatch {
    /// Returns `true` as soon as no connection is open, or `false` at `deadline` if some still
    /// are; at once if none is open when called, or `deadline` has passed.
    ///
    /// How it waits: on a channel, without ticks. After a [`Server::hand_over`], once the
    /// accepting loop has dropped its listener, the loop whose close brings the open
    /// connections to zero sends it a message (the accepting loop itself, if there were none
    /// left when it dropped the listener), and the shutdown sends one too; no send blocks.
    /// Since nothing is accepted any more, none opens again then; the one exception, a
    /// connection already on its way to a loop when the listener was dropped, is looked at
    /// again: a message comes when it ends too. A waiter that finds the count zero after a
    /// message puts the message back for any other waiter. Before a hand-over no message comes,
    /// so the count is then only looked at when called and at the deadline.
    pub(crate) fn wait(&self, deadline: Instant) -> bool {
        let (sender, receiver) = &self.shared.drained;
        loop {
            if self.shared.open() == 0 {
                return true;
            }
            match receiver.recv_deadline(deadline) {
                Ok(()) => {
                    if self.shared.open() == 0 {
                        let _ = sender.send(());
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return self.shared.open() == 0;
                }
            }
        }
    }

    /// The connections open now; see [`Server::open_connections`].
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn open_connections(&self) -> usize {
        self.shared.open()
    }
}

impl std::fmt::Debug for DrainWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainWatch")
            .field("open_connections", &self.shared.open())
            .finish()
    }
}

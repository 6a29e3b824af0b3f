//! Every loop's part of a hand-over ([`Server::hand_over`](crate::http::Server::hand_over)):
//! once it sees the server's flag, it puts each of its connections, and each one handed to it
//! later (accepted before the hand-over), in their closing mode
//! ([`Connection::hand_over`](crate::http::connection::Connection::hand_over)). The accepting
//! loop also drops its listener (`accept.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::EventLoop;

/// After a hand-over, how long a connection with no request in progress (idle between
/// requests, or with nothing of a head received) stays open for a request before it ends,
/// counted from when its loop saw the hand-over (at once: it is woken).
pub(in crate::http) const HANDOVER_IDLE: Duration = Duration::from_secs(1);

impl EventLoop {
    /// Puts every connection of the loop in its closing mode the first time the loop sees
    /// that the server has handed over; one atomic load on every other turn.
    pub(super) fn follow_handover(&mut self, now: Instant) {
        if self.handover.is_some() || !self.shared.handed_over.load(Ordering::Acquire) {
            return;
        }
        let idle_end = now + HANDOVER_IDLE;
        self.handover = Some(idle_end);
        for slot in self.slots.iter_mut().flatten() {
            slot.connection.hand_over(idle_end);
        }
        // The sweep finds each one's new deadline; the nearest is at most `idle_end`.
        self.note_deadline(idle_end);
    }
}

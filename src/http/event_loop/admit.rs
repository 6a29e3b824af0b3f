//! Every loop's part of admission: it takes the newcomers handed to it and decides
//! ([`admission::decide`]) whether each takes a free slot, takes the place of one of the loop's
//! evictable connections, or is refused; and it counts and logs evictions and refusals.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::net::TcpStream;

use super::{EventLoop, Handoff};
use crate::http::admission::{self, try_reserve, Candidate, EvictionReason, Verdict};
use crate::http::stats::bump;

/// What a best-effort answer to a connection refused for want of room says.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Cache-Control: no-store\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";

impl EventLoop {
    /// Takes the connections the accepting loop handed to this one.
    pub(super) fn take_handed_over(&mut self, now: Instant) {
        while let Some(handoff) = self.inbox.as_ref().and_then(|i| i.try_recv().ok()) {
            let spoken_for = !handoff.reserved;
            self.take_in(handoff, spoken_for, now);
        }
    }

    /// Admits a newcomer handed to this loop (its load already counted), evicting one of the
    /// loop's connections if it must, or refuses it. `spoken_for` if the accepting loop counted
    /// one of this loop's evictable connections as taken for it: that count is this loop's
    /// own again from here.
    pub(super) fn take_in(&mut self, handoff: Handoff, spoken_for: bool, now: Instant) {
        if spoken_for {
            self.shared.evictable[self.id].fetch_add(1, Ordering::Relaxed);
        }
        let Handoff {
            stream,
            peer,
            reserved,
        } = handoff;
        // A slot may have been freed since the accepting loop found none.
        let max = self.limits.max_connections;
        let reserved = reserved || try_reserve(&self.shared.counters.open_connections, max);
        let candidates = self.slots.iter().enumerate().filter_map(|(index, slot)| {
            let slot = slot.as_ref()?;
            Some(Candidate {
                index,
                peer: slot.peer,
                evictable: slot.connection.evictable()?,
            })
        });
        match admission::decide(peer, !reserved, &self.peers, candidates) {
            Verdict::Admit => self.insert(stream, peer, now),
            Verdict::Evict { index, reason } => {
                self.evict(index, reason, peer, reserved, now);
                self.insert(stream, peer, now);
            }
            Verdict::Refuse => {
                if reserved {
                    self.release_slots(1);
                }
                self.unload(1);
                self.refuse(&stream, peer, now);
            }
        }
    }

    /// Closes the connection in slot `index` to make room for a newcomer from `newcomer`,
    /// which takes over its slot of the cap unless it has one (`reserved`).
    fn evict(
        &mut self,
        index: usize,
        reason: EvictionReason,
        newcomer: IpAddr,
        reserved: bool,
        now: Instant,
    ) {
        let Some(victim) = self.slots[index].as_ref().map(|s| s.peer) else {
            return;
        };
        bump(&self.shared.counters.evicted[reason.index()], 1);
        let what = reason.describe();
        if self.peers.at_share(newcomer) {
            let share = self.peers.share();
            self.evictions.warn(
                now,
                format_args!(
                    "health endpoint: {newcomer} holds its share of connections ({share} on \
                     this event loop): closed its least recently active one ({what}) for its \
                     newest"
                ),
            );
        } else {
            let max = self.limits.max_connections;
            self.evictions.warn(
                now,
                format_args!(
                    "health endpoint: all {max} connections taken: closed the least recently \
                     active evictable one ({what}, from {victim}) for one from {newcomer}"
                ),
            );
        }
        self.close(index, !reserved);
    }

    /// Refuses a newcomer for want of room: a best-effort `503`, then it is closed (dropped).
    pub(super) fn refuse(&mut self, stream: &TcpStream, peer: IpAddr, now: Instant) {
        bump(&self.shared.counters.rejected, 1);
        self.refusals.warn(
            now,
            format_args!(
                "health endpoint: refused a connection from {peer} (503): every connection \
                 that could make room for it is busy answering a request"
            ),
        );
        // Best effort: a fresh socket's send buffer is empty.
        let _ = (&*stream).write(BUSY);
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

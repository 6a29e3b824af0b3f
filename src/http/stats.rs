//! [`ServerStats`]: the counters every event loop of a [`Server`](super::Server) bumps, the
//! snapshot of them that the server gives, and [`StatsSource`], which reads them for `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::admission::EvictionReason;

/// Counters of what a [`Server`](super::Server) has done since it started; a snapshot from
/// [`Server::stats`](super::Server::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ServerStats {
    /// Connections open now (zero once the server has shut down).
    pub(crate) open_connections: usize,
    /// Connections accepted, including those dropped, refused or evicted since.
    pub(crate) accepted: u64,
    /// Connections whose client had closed them before they were accepted: dropped without
    /// taking a slot.
    pub(crate) abandoned: u64,
    /// Connections answered `503` and closed at once because no connection could make room
    /// for them: every one was busy answering a request.
    pub(crate) rejected: u64,
    /// Connections closed to make room for a newcomer, by [`EvictionReason::index`].
    pub(crate) evicted: [u64; 3],
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

impl ServerStats {
    /// Connections evicted for `reason`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn evicted(&self, reason: EvictionReason) -> u64 {
        self.evicted[reason.index()]
    }
}

/// The live counters behind [`ServerStats`], shared by every event loop of a server.
#[derive(Default)]
pub(super) struct Counters {
    /// Connections admitted and not yet closed: the admission count that `max_connections`
    /// caps, over every event loop.
    pub(super) open_connections: AtomicUsize,
    pub(super) accepted: AtomicU64,
    pub(super) abandoned: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) evicted: [AtomicU64; 3],
    pub(super) timed_out: AtomicU64,
    pub(super) bad_requests: AtomicU64,
    pub(super) accept_errors: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) bytes_read: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Reads a server's counters, for as long as it is held (after the server has shut down too:
/// the last values, no connection open): how `/metrics` reads the endpoint's.
#[derive(Clone)]
pub(crate) struct StatsSource {
    counters: Arc<Counters>,
}

impl StatsSource {
    pub(super) fn new(counters: Arc<Counters>) -> StatsSource {
        StatsSource { counters }
    }

    /// A snapshot of the counters, summed over the event loops.
    pub(crate) fn read(&self) -> ServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            open_connections: c.open_connections.load(Ordering::Relaxed),
            accepted: get(&c.accepted),
            abandoned: get(&c.abandoned),
            rejected: get(&c.rejected),
            evicted: c.evicted.each_ref().map(get),
            timed_out: get(&c.timed_out),
            bad_requests: get(&c.bad_requests),
            accept_errors: get(&c.accept_errors),
            requests: get(&c.requests),
            bytes_read: get(&c.bytes_read),
        }
    }
}

impl std::fmt::Debug for StatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsSource").field(&self.read()).finish()
    }
}

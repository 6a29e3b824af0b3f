//! [`ServerStats`]: the counters every event loop of a [`Server`](super::Server) bumps, and
//! the snapshot of them that the server gives.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters of what a [`Server`](super::Server) has done since it started; a snapshot from
/// [`Server::stats`](super::Server::stats).
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

/// The live counters behind [`ServerStats`], shared by every event loop of a server.
#[derive(Default)]
pub(super) struct Counters {
    /// Connections admitted and not yet closed: the admission count that `max_connections`
    /// caps, over every event loop.
    pub(super) open_connections: AtomicUsize,
    pub(super) accepted: AtomicU64,
    pub(super) rejected_over_limit: AtomicU64,
    pub(super) timed_out: AtomicU64,
    pub(super) bad_requests: AtomicU64,
    pub(super) accept_errors: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) bytes_read: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

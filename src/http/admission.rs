//! Admission: which connection makes room for a newcomer, and when none may.
//!
//! A connection is *evictable* while it costs a slot without being served: it has not sent a
//! complete request head, it is an idle keep-alive connection (or one lingering after its last
//! answer), or its client does not read what it is sent. A connection is busy, and never
//! evicted, while a request of it is being answered. [`decide`] picks, among one event loop's
//! connections, the one that makes room for a newcomer: the least recently active evictable
//! one (one lingering after its last answer only when there is no other), of the newcomer's
//! own peer if that peer holds its share, else preferably of a peer that holds its share.
//! These are pure functions of what the loop knows, tested alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// What made a connection evictable; the `reason` label of its eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EvictionReason {
    /// It has not sent a complete request head (a slowloris, or a client that sent nothing).
    HeadLess,
    /// It has been answered and asks nothing more: kept alive, or lingering before its close.
    Idle,
    /// Its client does not read: answers wait to be sent.
    Stalled,
}

impl EvictionReason {
    /// Every reason, in the order of [`index`](EvictionReason::index).
    // For `/metrics`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [EvictionReason; 3] = [
        EvictionReason::HeadLess,
        EvictionReason::Idle,
        EvictionReason::Stalled,
    ];

    /// Its position in [`ALL`](EvictionReason::ALL), for arrays of counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Its label value: `head_less`, `idle` or `stalled`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EvictionReason::HeadLess => "head_less",
            EvictionReason::Idle => "idle",
            EvictionReason::Stalled => "stalled",
        }
    }

    /// What it means, for logs.
    pub(super) fn describe(self) -> &'static str {
        match self {
            EvictionReason::HeadLess => "without a complete request head",
            EvictionReason::Idle => "idle",
            EvictionReason::Stalled => "whose client does not read",
        }
    }
}

/// Why a connection may be evicted, and since when it has made no progress: accepted or begun
/// a head (head-less), answered (idle), or begun waiting for its client to read (stalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Evictable {
    pub(super) reason: EvictionReason,
    pub(super) since: Instant,
    /// It lingers after its last answer, waiting for its client to close: it goes on its own
    /// soon, and its answer may not have reached the client yet (a connection given up on
    /// with its answer unacknowledged is reset), so it is evicted only if no other one is.
    pub(super) closing: bool,
}

/// An evictable connection of an event loop, as [`decide`] weighs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    /// Its slot in the loop.
    pub(super) index: usize,
    pub(super) peer: IpAddr,
    pub(super) evictable: Evictable,
}

/// What to do with a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Serve it in a free slot.
    Admit,
    /// Close the connection in slot `index` and serve the newcomer instead.
    Evict {
        index: usize,
        reason: EvictionReason,
    },
    /// Nothing may make room: answer `503` and close it.
    Refuse,
}

/// How many connections each peer holds on one event loop, and how many it may hold.
#[derive(Debug)]
pub(super) struct PeerCounts {
    counts: HashMap<IpAddr, usize>,
    share: usize,
}

impl PeerCounts {
    /// Counts for a loop on which one peer may hold `share` connections (at least 1).
    pub(super) fn new(share: usize) -> PeerCounts {
        PeerCounts {
            counts: HashMap::new(),
            share: share.max(1),
        }
    }

    /// How many connections one peer may hold on this loop.
    pub(super) fn share(&self) -> usize {
        self.share
    }

    /// Whether `peer` holds its share: a newcomer of its evicts one of its own connections.
    pub(super) fn at_share(&self, peer: IpAddr) -> bool {
        self.counts.get(&peer).is_some_and(|&n| n >= self.share)
    }

    pub(super) fn add(&mut self, peer: IpAddr) {
        *self.counts.entry(peer).or_insert(0) += 1;
    }

    pub(super) fn remove(&mut self, peer: IpAddr) {
        if let Some(n) = self.counts.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&peer);
            }
        }
    }
}

/// The share of the connections one peer may hold on each of `loops` event loops when it may
/// hold `per_peer` over all of them: an even part, rounded up, and at least 1. (A peer's
/// connections are spread over the loops as everyone's are, so each loop holds about its part.)
pub(super) fn peer_share(per_peer: usize, loops: usize) -> usize {
    per_peer.div_ceil(loops.max(1)).max(1)
}

/// Takes one of the `max` slots counted by `open`; `false` if every one is taken.
pub(super) fn try_reserve(open: &AtomicUsize, max: usize) -> bool {
    open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n < max).then_some(n + 1)
    })
    .is_ok()
}

/// Keeps in `first` whichever of it and `c` is to be evicted first: one that is not closing
/// before one that is, then the one that has made no progress for longer (the least recently
/// active).
fn keep_first(first: &mut Option<Candidate>, c: Candidate) {
    let order = |c: &Candidate| (c.evictable.closing, c.evictable.since);
    if first.is_none_or(|f| order(&c) < order(&f)) {
        *first = Some(c);
    }
}

/// Decides what becomes of a newcomer from `newcomer` on a loop whose connections `peers`
/// counts and whose evictable connections are `candidates`; `full` when the server has no free
/// slot for it.
///
/// - If its peer holds its share, the peer's own least recently active evictable connection
///   makes room, free slot or not; with none, it is refused (its share is busy answering).
/// - Else, with a free slot, it is admitted.
/// - Else the least recently active evictable connection of the peers that hold their share
///   makes room, or if they have none, the least recently active of all; with none at all, it
///   is refused (every connection is busy answering).
///
/// Among the candidates, one lingering after its last answer goes only after every other.
pub(super) fn decide(
    newcomer: IpAddr,
    full: bool,
    peers: &PeerCounts,
    candidates: impl IntoIterator<Item = Candidate>,
) -> Verdict {
    let own_share_taken = peers.at_share(newcomer);
    if !own_share_taken && !full {
        return Verdict::Admit;
    }
    let (mut own, mut crowding, mut any) = (None, None, None);
    for c in candidates {
        if c.peer == newcomer {
            keep_first(&mut own, c);
        }
        if peers.at_share(c.peer) {
            keep_first(&mut crowding, c);
        }
        keep_first(&mut any, c);
    }
    let victim = if own_share_taken {
        own
    } else {
        crowding.or(any)
    };
    victim.map_or(Verdict::Refuse, |c| Verdict::Evict {
        index: c.index,
        reason: c.evictable.reason,
    })
}

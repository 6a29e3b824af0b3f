//! [`Limits`]: what a [`Server`](super::Server) enforces, their defaults and their bounds.

use std::io;
use std::time::Duration;

/// The most event loops a server runs.
pub(crate) const MAX_EVENT_LOOPS: usize = 16;
/// The longest timeout [`Limits`] keep: a longer one is taken as this.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits a [`Server`](super::Server) enforces, built from the defaults
/// (`Limits::new().max_connections(64)`); each builder method documents its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(super) max_connections: usize,
    pub(super) max_head_bytes: usize,
    pub(super) head_read_timeout: Duration,
    pub(super) keep_alive_idle_timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) max_requests_per_connection: Option<u64>,
    pub(super) event_loops: usize,
    pub(super) answer_timeout: Duration,
    pub(super) listen_backlog: usize,
    pub(super) max_connections_per_peer: Option<usize>,
}

impl Limits {
    /// The defaults.
    pub(crate) fn new() -> Limits {
        Limits {
            max_connections: 256,
            max_head_bytes: 8 * 1024,
            head_read_timeout: Duration::from_secs(5),
            keep_alive_idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_requests_per_connection: None,
            answer_timeout: Duration::from_secs(120),
            event_loops: 2,
            listen_backlog: 1024,
            max_connections_per_peer: None,
        }
    }

    /// The most connections open at once. When every slot is taken, a newcomer takes the place
    /// of the least recently active evictable connection (see [`admission`](super::admission));
    /// only when none is evictable is it answered `503` (best effort) and closed. One peer may
    /// hold about half of them. Default: 256. At least 1.
    #[must_use]
    pub(crate) fn max_connections(mut self, n: usize) -> Limits {
        self.max_connections = n;
        self
    }

    /// The most connections one peer (IP address) may hold; a newcomer of a peer that holds
    /// them takes the place of the peer's least recently active evictable connection. Each
    /// event loop holds its part of it. Default: half of
    /// [`max_connections`](Limits::max_connections), rounded up. At least 1.
    #[must_use]
    // Only the tests set it, to test the cap alone; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn max_connections_per_peer(mut self, n: usize) -> Limits {
        self.max_connections_per_peer = Some(n);
        self
    }

    /// What [`max_connections_per_peer`](Limits::max_connections_per_peer) is in force.
    pub(super) fn peer_limit(&self) -> usize {
        (self.max_connections_per_peer).unwrap_or(self.max_connections.div_ceil(2))
    }

    /// The most bytes a request head (request line and headers) may take; a head that does not
    /// end within them is answered `431`. It is also the size of each connection's input buffer.
    /// Default: 8 KiB. From 256 bytes to 1 MiB.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn max_head_bytes(mut self, n: usize) -> Limits {
        self.max_head_bytes = n;
        self
    }

    /// The time allowed to receive a complete request head, counted from the accept for the
    /// first request, and from the first byte of the head for later ones. Default: 5 s. More
    /// than zero; longer than a day is taken as a day.
    #[must_use]
    pub(crate) fn head_read_timeout(mut self, t: Duration) -> Limits {
        self.head_read_timeout = t.min(MAX_TIMEOUT);
        self
    }

    /// How long a kept-alive connection may stay idle between a response and the first byte of
    /// the next request. Default: 30 s. More than zero; longer than a day is taken as a day.
    #[must_use]
    pub(crate) fn keep_alive_idle_timeout(mut self, t: Duration) -> Limits {
        self.keep_alive_idle_timeout = t.min(MAX_TIMEOUT);
        self
    }

    /// The time allowed for queued responses to be sent, counted from when the output buffer
    /// stops being empty until it is empty again. Default: 10 s. More than zero; longer than a
    /// day is taken as a day.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn write_timeout(mut self, t: Duration) -> Limits {
        self.write_timeout = t.min(MAX_TIMEOUT);
        self
    }

    /// The most requests answered on one connection; the last answer says `Connection: close`
    /// and any further pipelined requests are dropped unanswered. Default: no limit (the output
    /// high-water mark and the timeouts bound what a connection costs). At least 1.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn max_requests_per_connection(mut self, n: Option<u64>) -> Limits {
        self.max_requests_per_connection = n;
        self
    }

    /// How many event-loop threads serve the connections: the first accepts them and hands
    /// each to the least loaded loop (itself included). A fixed number, whatever the number of
    /// connections. More than one keeps a descheduled loop from holding up every connection at
    /// once. Default: 2. From 1 to [`MAX_EVENT_LOOPS`].
    #[must_use]
    pub(crate) fn event_loops(mut self, n: usize) -> Limits {
        self.event_loops = n;
        self
    }

    /// How long a connection waits for a response the handler gave as
    /// [`Reply::Later`](super::Reply::Later) before it is closed. Default: 2 minutes. More than
    /// zero; longer than a day is taken as a day.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn answer_timeout(mut self, t: Duration) -> Limits {
        self.answer_timeout = t.min(MAX_TIMEOUT);
        self
    }

    /// How many connections the kernel may hold, handshake done, until the server accepts
    /// them: a burst of connections larger than this has its excess SYNs dropped, and those
    /// clients (probes among them) retry only after a second. The kernel holds no more than its
    /// own limit (`net.core.somaxconn` on Linux: 4096 by default since 5.4, 128 before); on
    /// Linux the server asks for no more than that, and logs (at info) when it asks for less
    /// than this. Default: 1024. At least 1 (0 is taken as 1). Unix only: elsewhere it stays
    /// mio's 128.
    #[must_use]
    pub(crate) fn listen_backlog(mut self, n: usize) -> Limits {
        self.listen_backlog = n.max(1);
        self
    }

    pub(super) fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if !(256..=1024 * 1024).contains(&self.max_head_bytes) {
            return invalid("max_head_bytes must be from 256 bytes to 1 MiB");
        }
        let timeouts = [
            self.head_read_timeout,
            self.keep_alive_idle_timeout,
            self.write_timeout,
            self.answer_timeout,
        ];
        // The builders take anything over a day as a day, so only zero is left to refuse.
        if timeouts.iter().any(|t| t.is_zero()) {
            return invalid("timeouts must be more than zero");
        }
        if self.max_connections_per_peer == Some(0) {
            return invalid("max_connections_per_peer must be at least 1");
        }
        if self.max_requests_per_connection == Some(0) {
            return invalid("max_requests_per_connection must be at least 1");
        }
        if !(1..=MAX_EVENT_LOOPS).contains(&self.event_loops) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("event_loops must be from 1 to {MAX_EVENT_LOOPS}"),
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new()
    }
}

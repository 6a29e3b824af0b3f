//! [`Limits`]: what a [`Server`](super::Server) enforces, their defaults and their bounds.

use std::io;
use std::time::Duration;

/// The most event loops a server runs.
pub(crate) const MAX_EVENT_LOOPS: usize = 16;
/// The longest timeout [`Limits`] accept.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

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
        }
    }

    /// The most connections open at once; more are accepted and closed at once (after a
    /// best-effort `503`). Default: 256. At least 1.
    #[must_use]
    pub(crate) fn max_connections(mut self, n: usize) -> Limits {
        self.max_connections = n;
        self
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
    /// first request, and from the first byte of the head for later ones. Default: 5 s.
    #[must_use]
    pub(crate) fn head_read_timeout(mut self, t: Duration) -> Limits {
        self.head_read_timeout = t;
        self
    }

    /// How long a kept-alive connection may stay idle between a response and the first byte of
    /// the next request. Default: 30 s.
    #[must_use]
    pub(crate) fn keep_alive_idle_timeout(mut self, t: Duration) -> Limits {
        self.keep_alive_idle_timeout = t;
        self
    }

    /// The time allowed for queued responses to be sent, counted from when the output buffer
    /// stops being empty until it is empty again. Default: 10 s.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn write_timeout(mut self, t: Duration) -> Limits {
        self.write_timeout = t;
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
    /// [`Reply::Later`](super::Reply::Later) before it is closed. Default: 2 minutes.
    #[must_use]
    // Only the tests set it; the health endpoint keeps the default.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn answer_timeout(mut self, t: Duration) -> Limits {
        self.answer_timeout = t;
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
        if timeouts.iter().any(|t| t.is_zero() || *t > MAX_TIMEOUT) {
            return invalid("timeouts must be more than zero and at most a day");
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

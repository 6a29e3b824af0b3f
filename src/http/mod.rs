//! A small, hardened HTTP/1.1 server for tiny, cached responses: the connection front of the
//! health endpoint.
//!
//! # Why not tiny_http
//!
//! tiny_http 0.12, measured serving a fixed 200:
//!
//! - a 256 MiB header line with no line end took the process from 18 MB to 264 MB: its header
//!   reader has no limit;
//! - 1000 idle connections made 1005 threads: one thread per connection, no cap;
//! - its accept loop ends for good on the first accept error, such as fd exhaustion (`EMFILE`);
//! - it never joins its accept thread.
//!
//! A health endpoint must keep answering exactly when the process is in trouble, so it owns its
//! connection front instead.
//!
//! # Design
//!
//! A fixed number of named event-loop threads ([`Limits::event_loops`], default 2) poll the
//! connections with [`mio`] (readiness polling over epoll/kqueue, not an async runtime). The
//! number of threads is the same whatever the number of connections. The first loop (thread
//! `NAME`) also owns the listener: it accepts and hands each connection to a loop, itself
//! included, through that loop's channel and its [`mio::Waker`] (see
//! [Admission](#admission)). From then on the connection belongs to that loop alone: its
//! buffers, its deadlines, its sweep and its eviction; the server takes no lock on the request
//! path. The other loops are threads `NAME 1`, `NAME 2`, ... With several loops, a loop that
//! the scheduler takes off its core holds up only its own share of the connections.
//!
//! Under load a loop never waits in its poll, so the scheduler would let it run to the end of
//! its time slice and then keep it off its core for a whole tick, its connections all waiting.
//! So after each turn that had events, a loop offers its core to other ready threads
//! ([`std::thread::yield_now`]), which returns at once when there are none. Measured with
//! 64 keep-alive clients on two cores they share with the server, two loops that yield cut the
//! 99th-percentile latency about threefold (6 ms to 2 ms); the yield alone, with one loop, cut
//! it by about a third, and two loops alone not at all (BENCHMARKS.md).
//!
//! Each connection has a fixed-size input buffer of [`Limits::max_head_bytes`] into which
//! request heads are read and parsed with [`httparse`] (at most [`MAX_HEADERS`] headers); the
//! buffer never grows. The [`Handler`] is called on the event-loop threads, on several at once:
//! it is contractually non-blocking (it renders from a cache). A handler that panics gets a
//! `500` answer; the server itself never panics on any input.
//!
//! A request whose answer takes time (a `/metrics` scrape waits for producers) is answered
//! [`Reply::Later`]: the handler hands a [`Responder`] to a thread of its own and returns; the
//! responder sends the response through the loop's answer channel and wakes the loop with its
//! waker. Until it arrives nothing more is parsed from that connection (pipelined requests stay
//! in order) and the other connections are served as usual; a responder dropped unanswered
//! sends a `500`, and an answer that does not come within [`Limits::answer_timeout`] (2 minutes)
//! closes the connection.
//!
//! Responses go to a per-connection output buffer that is written as the socket allows (partial
//! writes, `WouldBlock`). Once that buffer holds a fixed high-water mark (64 KiB), nothing more
//! is parsed from that connection until all of it has been written to the socket; the requests
//! waiting in the input buffer are then parsed at once. So a pipelining flood is served as fast
//! as the client reads, and pipelined requests are answered in order.
//!
//! What a connection keeps queued is bounded in the kernel as well, which otherwise grows a
//! socket's buffers to megabytes as the connection goes (autotuning: before these caps, a
//! client that pipelined and never read had 3.7 MB of answers queued in the kernel, which
//! outlived the connection as an orphaned socket). Each accepted connection asks for 64 KiB
//! send and receive buffers (`SO_SNDBUF`, `SO_RCVBUF`, in `socket.rs`); Linux doubles what it is
//! given, to 128 KiB each, and no longer grows them. The write timeout (10 s) runs whenever
//! the output buffer is not empty, so a client that does not read is dropped at it. A
//! connection the server gives up on (at a deadline, or because the server stops) while answers
//! are still queued, in its output buffer or unacknowledged in the kernel, is closed abortively
//! (`SO_LINGER` with a zero timeout: a reset), so that nothing of it is left to the kernel to go
//! on delivering to a client that does not read. A connection that ends on its own (the client
//! closed, the socket failed) closes the ordinary way, so a client that half-closed still reads
//! its last answer.
//!
//! Per connection, a client that pipelines and never reads therefore costs at most its 8 KiB
//! input buffer and 64 KiB of output plus one answer in the process, and its socket's two
//! capped buffers in the kernel (measured on Linux 6.18: at most 166 KB of answers and 128 KB
//! of requests queued, the kernel's accounting letting the payload pass the nominal 128 KiB a
//! little), for no longer than the write timeout, and nothing once it has been dropped. With
//! [`Limits::max_connections`], that bounds the whole, the kernel included; the one unbounded
//! term is the size of a single answer, which the handler decides (`/metrics` is as large as
//! the program's metrics).
//!
//! Deadlines are kept per connection as timestamps and enforced by each loop's sweep: the poll
//! timeout is the time to the nearest deadline (at most every few milliseconds, at least once a
//! second), so no timer thread exists.
//!
//! Accept errors (`EMFILE`, `ENFILE`, ...) never end the loop: they are logged (rate-limited)
//! and accepting pauses for 100 ms. The counters of [`ServerStats`] are shared by every loop.
//!
//! # Admission
//!
//! [`Limits::max_connections`] caps the open connections over every loop: one shared count,
//! taken and given back with atomic operations. A newcomer is never refused for a slot that a
//! connection holds without being served. A connection is *evictable* while it has not sent a
//! complete request head, while it is kept alive (or lingers after its last answer) asking
//! nothing, and while its client does not read (its answers wait to be sent); it is busy, and
//! never evicted, while a request of it is being answered. When every slot is taken, the
//! newcomer takes the place of the least recently active evictable connection: the one that
//! has made no progress for the longest (since it was accepted or began a head, was answered,
//! or began to wait for its client to read). A connection lingering after its last answer goes
//! only when no other one is evictable: it goes soon anyway, and its answer may not have reached
//! its client yet (a connection given up on with its answer unacknowledged is reset). Only if
//! none is evictable is the newcomer answered `503` (best effort) and closed.
//!
//! One peer (IP address, an IPv4-mapped IPv6 address counting as IPv4) may hold
//! [`Limits::max_connections_per_peer`], half the cap by default: a newcomer from a peer that
//! holds them takes the place of that peer's own least recently active evictable connection,
//! free slots or not, and is refused only if all of them are busy; when every slot is taken, a
//! newcomer from another peer takes first from the peers that hold their share. So neither a
//! client nor a peer can lock probes out by holding connections open: a slowloris, a crowd of
//! idle keep-alive clients or a flood ends up evicting its own connections.
//!
//! Connections belong to one loop and no lock guards them, so a connection is only ever
//! evicted by its own loop. Each loop keeps the per-peer counts of its own connections (each
//! loop holds its part of a peer's limit, as connections are spread evenly) and publishes how
//! many of them are evictable (one atomic per loop, updated after each drive). The accepting
//! loop takes a slot of the shared count for a newcomer if one is free, and hands it to the
//! least loaded loop; if none is free, it hands it to the loop with the most evictable
//! connections, counting one of them as spoken for so that a burst spreads over the loops, and
//! refuses it itself if no loop has any. The loop that receives it decides alone, from what it
//! knows ([`admission::decide`]): it admits it into the free slot, or evicts one of its own
//! connections and gives the newcomer its slot, or refuses it. The published counts are hints:
//! a loop whose evictable connections have all become busy meanwhile refuses, and that is
//! counted like any refusal. The least recently active connection is that of the receiving
//! loop, not of the whole server.
//!
//! Before admission, the accepting loop drops a connection whose client has already closed or
//! reset it without sending anything (it peeks at it): a connect-and-close flood takes no slot.
//! It accepts at most 64 connections per turn, after serving the events of the connections it
//! has, and a loop reads a newcomer as soon as it takes it, so a probe whose request came with
//! its connection is answered at once. The listen backlog is [`Limits::listen_backlog`] (1024;
//! mio and the standard library ask for 128, which a burst of connections overflows: the excess
//! SYNs are dropped, and those clients retry only after a second).
//!
//! Evictions by reason ([`EvictionReason`]: head-less, idle, stalled), refusals and the
//! connections dropped at the accept are counted in [`ServerStats`] (and so in the endpoint's
//! `/metrics`); evictions and refusals are logged at warn level, at most once a second per kind
//! and loop.
//!
//! [`Server::shutdown`] (or drop) wakes every loop with its [`mio::Waker`]; each closes its
//! connections and ends, and the call joins every thread before it returns.
//!
//! # Hand-over (zero-downtime upgrade)
//!
//! In an upgrade a new process inherits the listening socket (the same kernel socket, so the
//! same accept queue) and the old one stops taking connections from it. Both sides are flags of
//! the server's, each set from any thread with a wake-up of the loops, which do the rest on
//! their own threads (`server/handover.rs`, `event_loop/handover.rs`); nothing blocks and no
//! lock is taken.
//!
//! - The new process starts its server [`Accepting::Paused`]: the listener is bound or taken
//!   and listening, so connections wait in the kernel's backlog (never refused), but the
//!   accepting loop registers it only once [`Server::start_accepting`] is called, when the
//!   process is ready to answer well (its `/readyz` would otherwise fail the old process's
//!   clients).
//! - The old process calls [`Server::hand_over`]: the accepting loop deregisters its listener
//!   and closes its descriptor (connections that arrive later queue in the new process), and
//!   every connection goes into a closing mode: a request in progress or arriving later is
//!   answered as usual with `Connection: close`, and the connection closes once that response
//!   is sent (nothing pipelined after it is read); a connection with no request in progress
//!   (idle, or nothing of a head received) ends after [`HANDOVER_IDLE`] (1 s) from the
//!   hand-over unless a request arrives first, its side shut down as after a last response; a
//!   partial head goes on under its head-read deadline. [`Server::wait_drained`] (or a
//!   `DrainWatch`, which waits without the server) returns once no connection is open, or at
//!   a deadline, woken through a channel by the loop whose close leaves none open.
//!
//! # Protocol
//!
//! - HTTP/1.1 and HTTP/1.0. Keep-alive by default for 1.1 (`Connection: close` honoured); 1.0
//!   closes unless it sent `Connection: keep-alive`.
//! - Every response has `Content-Length`, `Content-Type` and `Cache-Control: no-store` (probe
//!   answers must never be cached), and `Connection: close` when the server closes after it.
//! - `HEAD` gets the headers the `GET` would get, with its `Content-Length` and no body.
//! - The endpoint serves `GET` and `HEAD` only: a request with a body (`Content-Length` > 0 or
//!   `Transfer-Encoding`) is answered, then the connection is closed; the body is never read
//!   as a request. Method routing (`404`, `405`) is the handler's job, not this layer's, so
//!   that both fronts of the endpoint (this one and tiny_http's) answer every method alike: the
//!   endpoint answers `405` with `Allow: GET, HEAD` to the other methods of RFC 9110 (and
//!   PATCH), and `501` to a method it does not recognise (RFC 9110 §9.1).
//! - Rejected without calling the handler, then closed: a malformed head (`400`); conflicting
//!   `Content-Length`/`Transfer-Encoding` or differing `Content-Length`s (`400`); an HTTP/1.1
//!   request without `Host`, or any request with more than one `Host` or with a `Host` that is
//!   not `uri-host [ ":" port ]` (`400`, RFC 9112 §3.2; `host.rs` has the grammar; an empty
//!   `Host` is accepted, since RFC 9112 tells a client to send one when the target URI has no
//!   authority); a request target with a fragment, `#...` (`400`: a fragment is not part of a
//!   request target, and the server does not guess what the client meant by stripping it); a
//!   head larger than `max_head_bytes` or with more than [`MAX_HEADERS`] headers (`431`); an
//!   HTTP version other than 1.x (`505`). The HTTP/2 connection preface is closed without an
//!   answer.
//!
//! # Limits and their defaults
//!
//! | limit | default | meaning |
//! | --- | --- | --- |
//! | [`max_connections`](Limits::max_connections) | 256 | open connections; then evictions |
//! | [`max_connections_per_peer`](Limits::max_connections_per_peer) | 128 | one IP's; half the cap |
//! | [`listen_backlog`](Limits::listen_backlog) | 1024 | queued by the kernel until accepted |
//! | [`max_head_bytes`](Limits::max_head_bytes) | 8 KiB | request line and headers, per request |
//! | [`head_read_timeout`](Limits::head_read_timeout) | 5 s | to receive a complete head |
//! | [`keep_alive_idle_timeout`](Limits::keep_alive_idle_timeout) | 30 s | idle between requests |
//! | [`write_timeout`](Limits::write_timeout) | 10 s | to write out queued responses, from when the output buffer stops being empty |
//! | [`max_requests_per_connection`](Limits::max_requests_per_connection) | none | then close |
//! | [`event_loops`](Limits::event_loops) | 2 | threads serving the connections (1 to 16) |
//!
//! A timeout of zero is refused; one over a day is taken as a day.
//!
//! The head-read clock starts when the connection is accepted, or at the first byte of a head
//! that follows an earlier response. The keep-alive clock starts when a response has been
//! written completely and nothing of the next request has arrived.

mod admission;
mod connection;
mod event_loop;
mod host;
mod limits;
mod listener;
mod reply;
mod request;
mod response;
mod server;
mod socket;
mod stats;

#[cfg(test)]
mod tests;

pub(crate) use self::limits::Limits;
// The bound of `Limits::event_loops`; outside `limits`, only the tests name it.
#[cfg_attr(not(test), allow(unused_imports))]
pub(crate) use self::limits::MAX_EVENT_LOOPS;
pub(crate) use self::reply::{Reply, Responder};
pub(crate) use self::request::{Request, MAX_HEADERS};
// The same split of a request target for the routes served from tiny_http.
#[cfg(feature = "tiny_http")]
pub(crate) use self::request::split_target;
pub(crate) use self::response::Response;
// Named by the docs and the tests.
#[cfg_attr(not(test), allow(unused_imports))]
use self::event_loop::HANDOVER_IDLE;
pub(crate) use self::server::{Accepting, Handler, Server};
// `/metrics` labels the endpoint's evictions by reason, and reads its counters at scrape time.
#[cfg_attr(not(feature = "metrics"), allow(unused_imports))]
pub(crate) use self::admission::EvictionReason;
pub(crate) use self::stats::ServerStats;
#[cfg_attr(not(feature = "metrics"), allow(unused_imports))]
pub(crate) use self::stats::StatsSource;

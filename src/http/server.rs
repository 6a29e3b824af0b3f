//! [`Server`]: binds, starts the event loops, hands out their counters, starts accepting (when
//! started paused) and hands over (`handover.rs`), and stops and joins them.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

use super::event_loop::{EventLoop, Peer, WAKER};
use super::listener;
use super::stats::{Counters, StatsSource};
use super::{Limits, Reply, Request, ServerStats};

mod handover;

/// Renders the response to a request. It is called on the event-loop threads, on several at
/// once when there are several, and must not block: it renders from a cache. If it panics, the
/// client gets a `500` and the server goes on.
pub(crate) type Handler = Arc<dyn Fn(&Request<'_>) -> Reply + Send + Sync>;

/// What every event loop of a server shares.
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    /// Whether the accepting loop may register its listener: `false` from a start with
    /// [`Accepting::Paused`] until [`Server::start_accepting`]. Only ever set to `true`.
    pub(super) accepting: AtomicBool,
    /// [`Server::hand_over`] was called: every loop puts its connections in their closing
    /// mode, and the accepting loop drops its listener. Only ever set to `true`.
    pub(super) handed_over: AtomicBool,
    /// The accepting loop has dropped its listener after a hand-over: from then on no
    /// connection is accepted, so once none is open, none ever is again (but see
    /// [`DrainWatch::wait`](handover::DrainWatch::wait) for the one exception). Set after
    /// `handed_over`.
    pub(super) retired: AtomicBool,
    /// A message each time the open connections fall to zero once `retired` is set (and at
    /// shutdown): what [`DrainWatch::wait`](handover::DrainWatch::wait) waits on. Sending
    /// never blocks (unbounded).
    pub(super) drained: (Sender<()>, Receiver<()>),
    pub(super) counters: Arc<Counters>,
    /// Per event loop, the connections handed to it and not yet closed: how the accepting loop
    /// finds the least loaded one. [`GONE`] once a loop can no longer take connections.
    pub(super) loads: Box<[AtomicUsize]>,
    /// Per event loop, how many of its connections are evictable, less those the accepting
    /// loop has already sent it newcomers for: where a newcomer finds room when every slot is
    /// taken. A hint (the loop itself decides), so it may be off for a moment, even negative.
    pub(super) evictable: Box<[AtomicIsize]>,
}

/// The load of an event loop that has ended: never the least.
pub(super) const GONE: usize = usize::MAX / 2;

impl Shared {
    /// Connections admitted and not yet closed, over every loop.
    pub(super) fn open(&self) -> usize {
        self.counters.open_connections.load(Ordering::SeqCst)
    }

    /// Tells [`DrainWatch::wait`](handover::DrainWatch::wait) that the open connections may
    /// have fallen to zero for good.
    pub(super) fn signal_drained(&self) {
        // Unbounded: never blocks. The receiving side lives as long as `self`.
        let _ = self.drained.0.send(());
    }
}

/// Whether a server starts accepting at once ([`Accepting::Now`]) or only once
/// [`Server::start_accepting`] is called ([`Accepting::Paused`]): until then its listener is
/// bound (or taken) and listening, so clients' connections wait in the kernel's backlog and
/// are never refused, but none is accepted. What a process that takes over a listening
/// socket from another (a zero-downtime upgrade) starts with, so that it does not take
/// connections before it is ready to answer them well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepting {
    /// Accepting from the start.
    Now,
    /// Accepting only from [`Server::start_accepting`] on.
    Paused,
}

/// One event-loop thread of a [`Server`], as the server keeps it.
struct LoopThread {
    name: String,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// A running HTTP/1.1 server: a fixed number of named event-loop threads
/// ([`Limits::event_loops`]) serving every connection (see the [module docs](super) for the
/// design and the limits).
///
/// [`shutdown`](Server::shutdown), or dropping the server, closes every connection and joins
/// every thread.
pub(crate) struct Server {
    local_addr: SocketAddr,
    /// The listener's descriptor, recorded at the bind (the listener itself belongs to loop
    /// 0): valid until a hand-over or the shutdown, when loop 0 closes it.
    #[cfg(unix)]
    listener_fd: std::os::fd::RawFd,
    shared: Arc<Shared>,
    /// Loop 0 accepts and hands connections to the others.
    loops: Vec<LoopThread>,
}

impl Server {
    /// Binds to `addr` (the first of its addresses that binds) and starts serving on
    /// [`Limits::event_loops`] threads, calling `handler` for each acceptable request. The
    /// accepting loop's thread is called `thread_name`, the others `thread_name 1`,
    /// `thread_name 2`, and so on.
    ///
    /// # Errors
    ///
    /// Invalid `limits` or `thread_name` (`InvalidInput`), and the errors of binding, creating
    /// the pollers or spawning the threads (any thread already spawned is then joined).
    // The endpoint binds with `take_or_bind`; the tests with this.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn bind(
        addr: impl ToSocketAddrs,
        limits: Limits,
        handler: Handler,
        thread_name: &str,
    ) -> io::Result<Server> {
        Server::take_or_bind(None, addr, limits, handler, thread_name, Accepting::Now)
    }

    /// Like [`bind`](Server::bind), serving the listening socket named `activated` that systemd
    /// passed to the process instead, if there is one by that name (it keeps its backlog), and
    /// accepting at once or only from [`start_accepting`](Server::start_accepting) on
    /// (`accepting`).
    ///
    /// # Errors
    ///
    /// Those of [`bind`](Server::bind), and a socket of that name that is not a listening TCP
    /// socket.
    pub(crate) fn take_or_bind(
        activated: Option<&str>,
        addr: impl ToSocketAddrs,
        limits: Limits,
        handler: Handler,
        thread_name: &str,
        accepting: Accepting,
    ) -> io::Result<Server> {
        limits.validate()?;
        if thread_name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "thread name contains a NUL byte",
            ));
        }
        let n = limits.event_loops;
        let listener = listener::take_or_bind(activated, addr, limits.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        #[cfg(unix)]
        let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepting: AtomicBool::new(accepting == Accepting::Now),
            handed_over: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            drained: crossbeam_channel::unbounded(),
            counters: Arc::default(),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            evictable: (0..n).map(|_| AtomicIsize::new(0)).collect(),
        });
        // Every poller, waker and inbox is made before any thread starts.
        let mut event_loops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n - 1);
        for id in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let inbox = (id > 0).then(|| {
                let (sender, receiver) = crossbeam_channel::unbounded();
                peers.push(Peer {
                    inbox: sender,
                    waker: Arc::clone(&waker),
                });
                receiver
            });
            let name = if id == 0 {
                thread_name.to_owned()
            } else {
                format!("{thread_name} {id}")
            };
            threads.push(LoopThread {
                name,
                waker,
                thread: None,
            });
            event_loops.push(EventLoop::new(
                id,
                poll,
                Arc::clone(&threads[id].waker),
                inbox,
                limits.clone(),
                Arc::clone(&handler),
                Arc::clone(&shared),
            ));
        }
        event_loops[0].accept_from(listener, peers, accepting == Accepting::Now)?;
        // From here on, dropping `server` on an error stops and joins the loops already started.
        let mut server = Server {
            local_addr,
            #[cfg(unix)]
            listener_fd,
            shared,
            loops: threads,
        };
        for (id, event_loop) in event_loops.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(server.loops[id].name.clone())
                .spawn(move || {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| event_loop.run())) {
                        crate::relay::error!(
                            "health endpoint event loop {id} panicked; it no longer serves"
                        );
                        resume_unwind(payload);
                    }
                })?;
            server.loops[id].thread = Some(thread);
        }
        Ok(server)
    }

    /// The address the server listens on (with the port the OS chose for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the server's counters, summed over its event loops.
    pub(crate) fn stats(&self) -> ServerStats {
        self.stats_source().read()
    }

    /// What reads the server's counters, for as long as it is held: [`stats`](Server::stats)
    /// from anywhere (the endpoint's `/metrics`).
    pub(crate) fn stats_source(&self) -> StatsSource {
        StatsSource::new(Arc::clone(&self.shared.counters))
    }

    /// How many connections each event loop has been handed and not yet closed, accepting loop
    /// first.
    // Only the tests look at the loads.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn loads(&self) -> Vec<usize> {
        (self.shared.loads.iter())
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops serving: wakes every event loop, each of which closes its connections (the first
    /// also the listener), and joins their threads. Idempotent.
    ///
    /// It blocks only until each loop notices the wake-up and drops its sockets, which takes no
    /// longer than one turn of the loop: the handler does not block, and neither does any socket
    /// operation. Idle keep-alive clients do not delay it. Should a wake-up ever fail, the loop
    /// still notices within [`MAX_POLL_WAIT`](super::event_loop::MAX_POLL_WAIT).
    ///
    /// # Errors
    ///
    /// If an event-loop thread panicked (every thread is joined all the same).
    pub(crate) fn shutdown(&mut self) -> io::Result<()> {
        if self.loops.iter().all(|l| l.thread.is_none()) {
            return Ok(());
        }
        self.shared.stop.store(true, Ordering::Release);
        for l in self.loops.iter().filter(|l| l.thread.is_some()) {
            if let Err(e) = l.waker.wake() {
                // Cannot really happen; the loop's poll returns within MAX_POLL_WAIT anyway.
                crate::relay::warn!("health endpoint: waking thread {:?} failed: {e}", l.name);
            }
        }
        let mut panicked = Vec::new();
        for l in &mut self.loops {
            if let Some(thread) = l.thread.take() {
                if thread.join().is_err() {
                    panicked.push(l.name.clone());
                }
            }
        }
        self.shared
            .counters
            .open_connections
            .store(0, Ordering::SeqCst);
        self.shared.signal_drained();
        match panicked.as_slice() {
            [] => Ok(()),
            [one] => Err(io::Error::other(format!("thread {one:?} panicked"))),
            many => Err(io::Error::other(format!("threads {many:?} panicked"))),
        }
    }
}

impl Drop for Server {
    /// Shuts down and joins the event loops, logging (at warn level) if one had panicked. Never
    /// panics.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            crate::relay::warn!("health endpoint: {e}");
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let threads: Vec<&str> = self.loops.iter().map(|l| l.name.as_str()).collect();
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("threads", &threads)
            .field("running", &self.loops.iter().any(|l| l.thread.is_some()))
            .field("stats", &self.stats())
            .finish()
    }
}

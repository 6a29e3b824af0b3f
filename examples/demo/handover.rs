//! The API's graceful close: tiny_http stops taking connections from the API's socket, which
//! another process (the new one, after an upgrade) may share, without losing one it took.
//!
//! tiny_http 0.12 owns its listener; its accept thread loops on a blocking `accept` until its
//! `close` flag is set, and its `Drop` wakes that accept by connecting once to the server's
//! address. With the socket shared by two processes that connection may be accepted by the
//! other one, and the old process's thread, still blocked in `accept`, then takes the next
//! real client and queues its request where nobody reads it. So the close goes this way
//! ([`Handover::hand_off`], the worker's close hook, while the run closure keeps serving):
//!
//! 1. a private listener `P` on `127.0.0.1:0` is `dup2`'d onto tiny_http's descriptor: every
//!    later `accept` of its thread takes from `P`, which no client knows;
//! 2. the one `accept` possibly still blocked on the shared socket is woken by connecting to
//!    the API's address and closing at once, every 10 ms (an empty connection, harmless
//!    wherever it lands); a real client it takes instead is served as usual;
//! 3. a marker request sent to `P` reaches the serve loop once tiny_http's thread has moved
//!    to `P` ([`Handover::is_marker`]): from then on it never takes a connection from the
//!    shared socket again. The wait is bounded ([`HAND_OFF`]), then the close goes on
//!    regardless, logging.
//!
//! From the start of the close, the API's own answers carry `Connection: close` (written raw
//! with [`respond_closing`]: tiny_http drops a `Connection` header from a `Response`, and
//! closes a connection only when the request asked), and the serve loop keeps answering until
//! tiny_http holds no connection ([`Handover::connections`]: tiny_http's own
//! `Server::num_connections` is `unimplemented!()` in 0.12) or [`DRAIN`] has passed since the
//! hand-off; it looks only when no request is waiting, and answers every request already
//! queued before it returns. The health routes on the API's port are answered by `TinyHttpRoutes`, which keeps
//! the connection alive: a client that keeps asking them there holds the drain to its bound.
//! When the server is dropped, its own wake-up connection goes to the shared address (the new
//! process's, or nobody's: harmless), and [`Handover`]'s drop wakes the accept thread on `P`,
//! so that it ends.
//!
//! [`Listening`] watches tiny_http's descriptor until the close begins (the swap would look like
//! a closed socket): see the demo's doc, "When the API can no longer accept".

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// The bound on the hand-off (steps 1 to 3): it takes a few milliseconds.
pub const HAND_OFF: Duration = Duration::from_secs(2);
/// The bound on the drain after the hand-off: with [`HAND_OFF`], within the runner's default
/// close timeout (10 s).
pub const DRAIN: Duration = Duration::from_secs(5);
/// How often the blocked `accept` is woken, and the drain looks again.
pub const TICK: Duration = Duration::from_millis(10);

/// The API's listening socket as tiny_http holds it, and the state of its close.
pub struct Handover {
    /// tiny_http's descriptor (tiny_http owns the listener).
    fd: RawFd,
    /// The API's address, shared with a new process after an upgrade.
    shared: SocketAddr,
    /// The request path that says tiny_http's thread accepts from the private listener.
    marker: String,
    /// Set when the close begins: answers carry `Connection: close`.
    closing: AtomicBool,
    /// Set when the hand-off is over (the marker came, or its bound passed).
    settled: AtomicBool,
    /// The private listener's address, once it replaced the shared socket.
    private: Mutex<Option<SocketAddr>>,
    arrived: (Sender<()>, Receiver<()>),
}

impl Handover {
    /// Watches `listener`, about to be handed to tiny_http.
    pub fn new(listener: &TcpListener) -> std::io::Result<Handover> {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        Ok(Handover {
            fd: listener.as_raw_fd(),
            shared: listener.local_addr()?,
            marker: format!("/.demo-handover-{:016x}", random.finish()),
            closing: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            private: Mutex::new(None),
            arrived: crossbeam_channel::bounded(1),
        })
    }

    /// Whether the close has begun.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Whether the hand-off is over: tiny_http takes no more connections from the shared
    /// socket (or the bound passed).
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// Whether `request` is the hand-off's marker (then to give to
    /// [`marker_arrived`](Handover::marker_arrived)).
    pub fn is_marker(&self, request: &tiny_http::Request) -> bool {
        request.url() == self.marker
    }

    /// Answers the marker request and tells [`hand_off`](Handover::hand_off).
    pub fn marker_arrived(&self, request: tiny_http::Request) {
        respond_closing(request, 200, "handed over\n");
        let _ = self.arrived.0.try_send(());
    }

    /// Steps 1 to 3 (see the module): returns once tiny_http's thread accepts from the private
    /// listener only, or after [`HAND_OFF`]. Runs on the closing thread while the serve loop
    /// goes on answering.
    pub fn hand_off(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let began = Instant::now();
        match self.swap() {
            Ok(private) => {
                *self.private.lock() = Some(private);
                match self.wait_marker(private, began) {
                    Ok(()) => log::info!(
                        "api: stopped accepting on {} in {:?}",
                        self.shared,
                        began.elapsed()
                    ),
                    Err(e) => log::warn!(
                        "api: the hand-off of {} did not complete ({e}); draining regardless",
                        self.shared
                    ),
                }
            }
            Err(e) => log::warn!("api: cannot stop accepting on {}: {e}", self.shared),
        }
        self.settled.store(true, Ordering::SeqCst);
    }

    /// Step 1: a private listener in place of the shared socket, on tiny_http's descriptor.
    fn swap(&self) -> std::io::Result<SocketAddr> {
        let private = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = private.local_addr()?;
        let fd = private.into_raw_fd();
        // SAFETY: both are open descriptors of this process; `dup2` atomically makes `self.fd`
        // name the private listener (tiny_http keeps using the number), then the private
        // listener's own number is closed: it is owned by nothing else.
        let swapped = unsafe { libc::dup2(fd, self.fd) };
        let error = std::io::Error::last_os_error();
        // SAFETY: see above.
        unsafe { libc::close(fd) };
        match swapped {
            -1 => Err(error),
            _ => Ok(addr),
        }
    }

    /// Steps 2 and 3: sends the marker to the private listener, and wakes the shared socket's
    /// blocked `accept` until the marker has come through.
    fn wait_marker(&self, private: SocketAddr, began: Instant) -> std::io::Result<()> {
        let mut marker = TcpStream::connect_timeout(&private, HAND_OFF)?;
        marker.set_write_timeout(Some(HAND_OFF))?;
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: handover\r\nConnection: close\r\n\r\n",
            self.marker
        );
        marker.write_all(head.as_bytes())?;
        loop {
            // An empty connection: tiny_http's task (or the other process's) reads EOF at once.
            // A refused one (no one listens any more) is as good.
            drop(TcpStream::connect_timeout(&self.shared, TICK));
            if self.arrived.1.recv_timeout(TICK).is_ok() {
                return Ok(());
            }
            if began.elapsed() >= HAND_OFF {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no marker within {HAND_OFF:?}"),
                ));
            }
        }
    }

    /// How many connections tiny_http still holds (accepted from the API's address): this
    /// process's connected TCP sockets whose local port is the API's, found among its
    /// descriptors (`/dev/fd`). Our own wake-up connections have the API's port as their peer's,
    /// not their own; the listening socket has no peer. `None` where `/dev/fd` cannot be read.
    pub fn connections(&self) -> Option<usize> {
        let port = self.shared.port();
        let count = std::fs::read_dir("/dev/fd")
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .filter(|&fd| {
                // SAFETY: the stream is never dropped, so `fd` is never closed here; a number
                // closed (or reused) meanwhile only makes getsockname(2) or getpeername(2)
                // fail or describe another socket, for this one count.
                let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
                socket.local_addr().is_ok_and(|a| a.port() == port) && socket.peer_addr().is_ok()
            })
            .count();
        Some(count)
    }
}

impl Drop for Handover {
    /// Runs after the server's drop (it set tiny_http's `close` flag): wakes the accept thread
    /// on the private listener, so that it sees the flag and ends.
    fn drop(&mut self) {
        if let Some(private) = *self.private.lock() {
            drop(TcpStream::connect_timeout(&private, TICK));
        }
    }
}

/// Answers `request` with `status` and `body` and `Connection: close`, written raw: tiny_http
/// ignores a `Connection` header in a `Response`. The client then closes, and tiny_http's
/// connection ends; one that sends another request anyway is answered the same way.
pub fn respond_closing(request: tiny_http::Request, status: u16, body: &str) {
    let head_only = *request.method() == tiny_http::Method::Head;
    let reason = tiny_http::StatusCode(status).default_reason_phrase();
    let mut raw = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        raw.push_str(body);
    }
    let mut writer = request.into_writer();
    if let Err(e) = writer
        .write_all(raw.as_bytes())
        .and_then(|()| writer.flush())
    {
        log::debug!("api: answering: {e}");
    }
}

/// tiny_http's listening socket, which it closes when its accept loop ends.
pub struct Listening {
    fd: RawFd,
    /// The socket's device and inode: once it is closed, its number may name another file.
    id: (libc::dev_t, libc::ino_t),
    /// The error that ended the accept loop, once `recv` has handed it over.
    pub ended: Mutex<Option<String>>,
}

impl Listening {
    /// Watches `listener`, about to be handed to tiny_http.
    pub fn watch(listener: &TcpListener) -> std::io::Result<Listening> {
        let fd = listener.as_raw_fd();
        Ok(Listening {
            fd,
            id: file_id(fd)?,
            ended: Mutex::new(None),
        })
    }

    /// `Ok` while tiny_http accepts connections.
    ///
    /// # Errors
    ///
    /// Once its accept loop has ended: why, if tiny_http said.
    pub fn accepting(&self) -> lifecycle::Result<()> {
        let why = match &*self.ended.lock() {
            Some(e) => e.clone(),
            None if file_id(self.fd).ok() == Some(self.id) => return Ok(()),
            None => "its listening socket is closed".to_owned(),
        };
        Err(lifecycle::Error::msg(format!(
            "not accepting connections: tiny_http's accept loop ended ({why})"
        )))
    }
}

/// The device and inode of the file that `fd` names.
fn file_id(fd: RawFd) -> std::io::Result<(libc::dev_t, libc::ino_t)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) writes only into `stat`; a number that names no open file is an error.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

//! [`HealthEndpoint`]: the HTTP face of a [`HealthChecker`] for probes, load balancers and people.

mod render;
mod routes;
#[cfg(feature = "tiny_http")]
mod tiny;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::checker::HealthChecker;
use crate::error::{Error, Phase, Result};
#[cfg(feature = "metrics")]
use crate::http::Reply;
use crate::http::{Accepting, Handler, Limits, Request, Server};
#[cfg(feature = "metrics")]
use crate::metrics::{Format, Job, Metrics, Outcome, Scraper};
use crate::service::{HealthReporter, Service};
use crate::state::StateMachine;
use crate::stop::StartContext;

use self::routes::{Ask, Route, Routes};
#[cfg(feature = "tiny_http")]
pub use self::tiny::TinyHttpRoutes;

const NAME: &str = "health endpoint";

/// The name of the socket the endpoint takes from systemd's socket activation, by default.
const SOCKET_NAME: &str = "health";

/// Options of a [`HealthEndpoint`], with documented defaults.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    hide_reasons: bool,
    limits: Limits,
    socket_name: Option<String>,
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
}

impl Default for EndpointOptions {
    fn default() -> EndpointOptions {
        EndpointOptions {
            hide_reasons: false,
            limits: Limits::default(),
            socket_name: Some(SOCKET_NAME.to_owned()),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl EndpointOptions {
    /// The defaults: reasons shown, 256 connections (half of them for one peer at most), 8 KiB
    /// request heads, 5 s to send a head, 30 s idle keep-alive, 10 s to take a response, a
    /// listen backlog of 1024, 2 event-loop threads, and the socket named `health` when systemd
    /// passed one (socket activation).
    pub fn new() -> EndpointOptions {
        EndpointOptions::default()
    }

    /// The socket to serve when the process was started by socket activation (default
    /// `Some("health")`; `None` always binds the endpoint's address).
    ///
    /// The rule: if systemd passed the process a socket of that name (`LISTEN_FDNAMES`; a
    /// `.socket` unit's `FileDescriptorName=`, `systemd-socket-activate --fdname`), the endpoint
    /// serves it, and keeps the listen backlog systemd gave it (the unit's `Backlog=`, not
    /// [`listen_backlog`](EndpointOptions::listen_backlog)); otherwise it binds its own
    /// address, as without systemd. A socket is taken once per process: a second endpoint with
    /// the same name binds its address. It is taken as
    /// [`systemd::take_listener`](crate::systemd::take_listener) takes it, so
    /// [`start`](Service::start) fails for a name no socket can have (empty, with `:`), for
    /// several sockets of that name, and for a socket of that name that is not a listening TCP
    /// socket; the error names its descriptor.
    ///
    /// On by default because it cannot change anything without systemd: only a process that
    /// systemd started with a socket of that name is affected, and for that process it is what
    /// the unit asks for.
    pub fn socket_activation(mut self, name: Option<&str>) -> EndpointOptions {
        self.socket_name = name.map(str::to_owned);
        self
    }

    /// Leaves failure reasons out of every answer (default `false`): they can leak internals
    /// (hosts, paths, queries) to whoever can reach the port. Answers then say
    /// `reason withheld`, as Kubernetes does.
    ///
    /// `/metrics` (when served) never holds reasons, but it does name every check and service,
    /// and the version and git sha.
    pub fn hide_reasons(mut self, hide: bool) -> EndpointOptions {
        self.hide_reasons = hide;
        self
    }

    /// How many connections may be open at once (default 256; at least 1, else
    /// [`start`](Service::start) fails).
    ///
    /// A newcomer is never refused for a slot that a connection holds without being served.
    /// When every slot is taken, the newcomer takes the place of the least recently active
    /// *evictable* connection: one that has not sent a complete request head, an idle
    /// keep-alive connection, or one whose client does not read its answer. Only when every
    /// connection is busy answering a request is the newcomer answered `503` and closed. So
    /// slowloris clients or idle keep-alive clients, however many, cannot lock probes out.
    ///
    /// One peer (IP address) may hold half the slots (rounded up): a newcomer from a peer that
    /// holds them takes the place of that peer's own least recently active evictable
    /// connection, and is refused only if all of them are busy. Each event-loop thread keeps its
    /// part of both limits for the connections it serves, so with several threads they hold
    /// about evenly rather than exactly.
    ///
    /// Evictions and refusals are logged at warn level (at most once a second per kind and
    /// thread) and counted in `/metrics` (`lifecycle_health_endpoint_connections_evicted_total`
    /// by reason, `..._rejected_total`), when it is served.
    pub fn max_connections(mut self, n: usize) -> EndpointOptions {
        self.limits = self.limits.max_connections(n);
        self
    }

    /// How many connections the kernel may queue, handshake done, before the endpoint accepts
    /// them (the listen backlog; default 1024, and 0 is taken as 1). A burst of connections
    /// beyond it has its excess SYNs dropped, and those clients retry only after a second: a
    /// probe with a 1 s timeout fails. The kernel holds no more than its own limit
    /// (`net.core.somaxconn` on Linux: 4096 by default since 5.4, 128 before); on Linux the
    /// endpoint asks for no more than that, and says so in its log (at info level) when it
    /// lowers the value. Connections that their client closed before they were accepted are
    /// dropped at once and never take a slot. On platforms other than Unix the backlog stays
    /// 128. A socket taken from systemd ([`socket_activation`](EndpointOptions::socket_activation))
    /// keeps the backlog systemd listens with.
    pub fn listen_backlog(mut self, n: usize) -> EndpointOptions {
        self.limits = self.limits.listen_backlog(n);
        self
    }

    /// How long a client may take to send a whole request head (default 5 s); a slower one is
    /// disconnected. Zero makes [`start`](Service::start) fail; more than a day is taken as a
    /// day.
    pub fn head_read_timeout(mut self, timeout: Duration) -> EndpointOptions {
        self.limits = self.limits.head_read_timeout(timeout);
        self
    }

    /// Serves `metrics` at `GET /metrics` (default: none, and `/metrics` is `404`), with the
    /// health metrics of this endpoint's checker. Each scrape runs on a thread of the endpoint's
    /// own (`health metrics`), so probes are answered meanwhile, however long producers take.
    /// The [`Runner`](crate::Runner) sets this from [`Runner::metrics`](crate::Runner::metrics).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: Metrics) -> EndpointOptions {
        self.metrics = Some(metrics);
        self
    }

    /// How long an idle keep-alive connection is kept open (default 30 s); sooner if a
    /// newcomer needs its slot (see [`max_connections`](EndpointOptions::max_connections)).
    /// Zero makes [`start`](Service::start) fail; more than a day is taken as a day.
    pub fn idle_timeout(mut self, timeout: Duration) -> EndpointOptions {
        self.limits = self.limits.keep_alive_idle_timeout(timeout);
        self
    }

    /// How many threads serve the connections (default 2; from 1 to 16, else
    /// [`start`](Service::start) fails). It is a fixed number, whatever the number of
    /// connections: the first thread, `health http`, accepts every connection and hands each
    /// to the least loaded thread (itself included); the others are called `health http 1`,
    /// `health http 2`, and so on. One thread is enough for probes; a second one keeps the
    /// latency tail short under heavy load on a busy machine, where a thread that the
    /// scheduler takes off its core holds up every connection it serves.
    pub fn event_loops(mut self, n: usize) -> EndpointOptions {
        self.limits = self.limits.event_loops(n);
        self
    }
}

/// Serves a [`HealthChecker`]'s cache over HTTP, as a [`Service`]: `start` binds and spawns its
/// threads ([`EndpointOptions::event_loops`], 2 by default), `close` returns once they have
/// ended, even with clients connected.
///
/// # Routes (`GET` and `HEAD`)
///
/// | path | answers |
/// | --- | --- |
/// | `/livez` | liveness: the process is alive, its health checker is polling, and every [liveness check](crate::health::CheckOptions::liveness) passes its health |
/// | `/readyz`, `/ready` | readiness: every check's `ready()` |
/// | `/healthz`, `/health` | every check's readiness and health, except [traffic gates](crate::health::CheckOptions::traffic_gate), which count toward readiness only |
/// | `/readyz/NAME`, `/healthz/NAME` | one check (404 if there is none by that name, and for `/healthz/NAME` of a traffic gate) |
#[cfg_attr(
    feature = "metrics",
    doc = "| `/metrics` | Prometheus metrics, with [`EndpointOptions::metrics`] (feature `metrics`; else 404) |"
)]
#[cfg_attr(
    not(feature = "metrics"),
    doc = "| `/metrics` | Prometheus metrics, with `EndpointOptions::metrics` (feature `metrics`; else 404) |"
)]
///
/// Status `200` when passing (also when only informational checks fail: status `warn`), `503`
/// when failing. The body is `application/health+json` in the shape of the IETF health-check
/// draft (`status`, `version`, `releaseId`, and per check `"name:probe"` its status, output,
/// time of the last change and consecutive failures), kept under 8 KiB. With `?verbose`, the
/// Kubernetes text form instead: `[+]name ok`, `[-]name failed: reason`, and a last line
/// `readyz check passed` or `failed`. `?exclude=NAME` (repeatable) leaves a check out of the
/// verdict. Other paths get `404`, other methods `405`, malformed requests `400` or a closed
/// connection.
///
/// Every answer is rendered from the checker's cached snapshot: a slow or hung check never
/// delays it.
///
/// # Connections
///
/// A fixed number of event-loop threads serves every connection, whatever their number
/// ([`EndpointOptions::event_loops`]); request heads are limited in size and time, idle
/// connections are dropped, and the connection count is capped, a newcomer taking the place of
/// a connection that holds a slot without being served (see
/// [`EndpointOptions::max_connections`]), so that probes get through whatever other clients do. Bind it where probes can reach it and people cannot, or turn on
/// [`EndpointOptions::hide_reasons`].
///
/// Under systemd's socket activation it serves the socket named `health`, when the process
/// was passed one, instead of binding its address ([`EndpointOptions::socket_activation`]).
///
/// With metrics, one more thread (`health metrics`) runs the scrapes, so that a scrape waiting
/// for producers never holds up an event loop; closing refuses queued scrapes and waits for the
/// one in progress, at most the producers' longest bound and a few seconds.
///
/// A program that already serves tiny_http behind its own limits can answer the same routes
/// on its own port instead (feature `tiny_http`: `health::TinyHttpRoutes`, which says when to
/// choose which).
///
/// ```
/// use std::sync::Arc;
/// use lifecycle::{HealthChecker, HealthEndpoint, Service, StartContext};
///
/// let checker = Arc::new(HealthChecker::new("1.0.0", "abc123"));
/// let endpoint = HealthEndpoint::new("127.0.0.1:0".parse().unwrap(), checker.clone());
/// checker.start(&StartContext::background())?;
/// endpoint.start(&StartContext::background())?;
/// let addr = endpoint.local_addr().expect("bound");
/// assert_ne!(addr.port(), 0);
/// // ... probes GET http://{addr}/readyz ...
/// endpoint.close()?;
/// checker.close()?;
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct HealthEndpoint {
    addr: SocketAddr,
    checker: Arc<HealthChecker>,
    options: EndpointOptions,
    sm: StateMachine,
    server: Mutex<Option<Server>>,
    bound: Mutex<Option<SocketAddr>>,
    /// [`pause_accepting`](HealthEndpoint::pause_accepting) was called: `start` starts the
    /// server [`Accepting::Paused`].
    paused: AtomicBool,
    #[cfg(feature = "metrics")]
    scraper: Mutex<Option<Arc<Scraper>>>,
}

impl HealthEndpoint {
    /// An endpoint that will listen on `addr` (port 0 lets the OS choose; read it back with
    /// [`local_addr`](HealthEndpoint::local_addr)) and answer from `checker`; or, when systemd
    /// started the process with a socket named `health` (socket activation), on that socket
    /// (see [`EndpointOptions::socket_activation`]).
    pub fn new(addr: SocketAddr, checker: Arc<HealthChecker>) -> HealthEndpoint {
        HealthEndpoint::with_options(addr, checker, EndpointOptions::new())
    }

    /// Like [`new`](HealthEndpoint::new), with options.
    pub fn with_options(
        addr: SocketAddr,
        checker: Arc<HealthChecker>,
        options: EndpointOptions,
    ) -> HealthEndpoint {
        HealthEndpoint {
            addr,
            checker,
            options,
            sm: StateMachine::new(),
            server: Mutex::new(None),
            bound: Mutex::new(None),
            paused: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            scraper: Mutex::new(None),
        }
    }

    /// The address it listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.bound.lock()
    }
}

// A zero-downtime upgrade's side (`http`'s docs, "Hand-over"); the runner's upgrades, on Linux
// only, call these.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl HealthEndpoint {
    /// Before `start`: the endpoint will start with accepting paused (its socket listening,
    /// connections waiting in the backlog, never refused). No effect once started.
    pub(crate) fn pause_accepting(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Begins accepting (no-op if not paused or not started, and after a
    /// [`hand_over`](HealthEndpoint::hand_over)). Non-blocking, from any thread.
    pub(crate) fn start_accepting(&self) {
        if let Some(server) = self.server.lock().as_ref() {
            server.start_accepting();
        }
    }

    /// Stops accepting for good, its listener's descriptor closed, and puts every connection in
    /// its closing mode (the rule: [`Server::hand_over`]). No-op if not started; idempotent,
    /// non-blocking, from any thread; `close` closes and joins everything after it.
    pub(crate) fn hand_over(&self) {
        if let Some(server) = self.server.lock().as_ref() {
            server.hand_over();
        }
    }

    /// Waits until no connection is open (`true`; at once if not started or closed), or until
    /// `deadline` (`false`); after a hand-over, woken by the loops ([`Server::drain_watch`]).
    /// The endpoint's lock is not held while it waits.
    pub(crate) fn wait_drained(&self, deadline: Instant) -> bool {
        let watch = self.server.lock().as_ref().map(Server::drain_watch);
        watch.is_none_or(|w| w.wait(deadline))
    }

    /// The listening socket's descriptor while the endpoint serves (`None` before start, after
    /// [`hand_over`](HealthEndpoint::hand_over) or close), for the upgrade to hand to the new
    /// process. It stays the endpoint's: duplicate it (or pass it on) before either.
    #[cfg(unix)]
    pub(crate) fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        self.server.lock().as_ref().and_then(Server::listener_fd)
    }

    /// The name of its socket under socket activation ([`EndpointOptions::socket_activation`]),
    /// for the upgrade to name the socket it hands on by.
    pub(crate) fn socket_name(&self) -> Option<&str> {
        self.options.socket_name.as_deref()
    }
}

impl HealthReporter for HealthEndpoint {
    fn name(&self) -> &str {
        NAME
    }
    fn ready(&self) -> Result<()> {
        self.sm
            .ready()
            .map_err(|e| e.in_service(NAME, Phase::Ready))
    }
}

impl Service for HealthEndpoint {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm
            .start_once(|| {
                let routes =
                    Routes::new(self.checker.clone()).hide_reasons(self.options.hide_reasons);
                #[cfg(feature = "metrics")]
                let scraper = match &self.options.metrics {
                    Some(metrics) => {
                        metrics.watch_checker(self.checker.clone());
                        let scraper = Arc::new(Scraper::spawn(metrics.clone())?);
                        *self.scraper.lock() = Some(scraper.clone());
                        Some(scraper)
                    }
                    None => None,
                };
                #[cfg(feature = "metrics")]
                let routes = routes.serve_metrics(scraper.is_some());
                let handler: Handler = Arc::new(move |req: &Request<'_>| {
                    let ask = Ask {
                        method: req.method(),
                        path: req.path(),
                        query: req.query(),
                        accept: req.accept(),
                    };
                    match routes.route(&ask) {
                        Route::Answer(response) => response.into(),
                        #[cfg(feature = "metrics")]
                        Route::Scrape(format) => match &scraper {
                            Some(scraper) => scrape(scraper, format),
                            // Not routed without a scraper.
                            None => routes::not_found(ask.method).into(),
                        },
                        Route::Elsewhere => routes::not_found(ask.method).into(),
                    }
                });
                let server = Server::take_or_bind(
                    self.options.socket_name.as_deref(),
                    self.addr,
                    self.options.limits.clone(),
                    handler,
                    "health http",
                    if self.paused.load(Ordering::Acquire) {
                        Accepting::Paused
                    } else {
                        Accepting::Now
                    },
                )
                .map_err(|e| {
                    #[cfg(feature = "metrics")]
                    {
                        // Taken out first: its drop waits for a scrape, never under the lock.
                        let scraper = self.scraper.lock().take();
                        drop(scraper);
                    }
                    let message = format!("cannot listen on {}: {e}", self.addr);
                    Error::other(std::io::Error::new(e.kind(), message))
                })?;
                let addr = server.local_addr();
                crate::relay::info!("{NAME}: listening on http://{addr}");
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.options.metrics {
                    metrics.watch_endpoint(server.stats_source());
                }
                *self.bound.lock() = Some(addr);
                *self.server.lock() = Some(server);
                Ok(())
            })
            .map_err(|e| e.in_service(NAME, Phase::Start))
    }

    fn close(&self) -> Result<()> {
        self.sm
            .close_once(|| {
                let server = self.server.lock().take();
                let closed = match server {
                    Some(mut server) => server
                        .shutdown()
                        .map_err(|e| Error::from(e).in_service(NAME, Phase::Close)),
                    None => Ok(()),
                };
                // Then the scrape thread, whose answers no loop would take any more: it refuses
                // what is queued and ends after the scrape in progress.
                #[cfg(feature = "metrics")]
                {
                    // Taken out first: its drop waits for a scrape, never under the lock.
                    let scraper = self.scraper.lock().take();
                    drop(scraper);
                }
                Ok(closed?)
            })
            .map_err(|e| e.in_service(NAME, Phase::Close))
    }
}

impl fmt::Debug for HealthEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthEndpoint")
            .field("addr", &self.addr)
            .field("bound", &self.local_addr())
            .field("state", &self.sm.state())
            .field("options", &self.options)
            .finish()
    }
}

/// `/metrics`: handed to the scrape thread, whose answer comes back through the event loop.
#[cfg(feature = "metrics")]
fn scrape(scraper: &Arc<Scraper>, format: Format) -> Reply {
    let scraper = Arc::clone(scraper);
    Reply::Later(Box::new(move |responder| {
        let job = Job {
            format,
            reply: Box::new(move |outcome| responder.send(routes::scraped(format, outcome))),
        };
        if let Err(refused) = scraper.submit(job) {
            (refused.reply)(Outcome::Busy);
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{EndpointOptions, HealthEndpoint};
    use crate::checker::HealthChecker;
    use crate::service::Service;
    use crate::stop::StartContext;

    const WATCHDOG: Duration = Duration::from_secs(10);

    /// Sends a keep-alive `HEAD /livez`: its answer is a head alone.
    fn ask(stream: &mut TcpStream) {
        let head = b"HEAD /livez HTTP/1.1\r\nHost: t\r\n\r\n";
        stream.write_all(head).unwrap();
    }

    /// Reads one answer's head.
    fn answer_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).expect("an answer"), 1, "ended early");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn endpoint(options: EndpointOptions) -> HealthEndpoint {
        let checker = Arc::new(HealthChecker::new("1", "t"));
        HealthEndpoint::with_options("127.0.0.1:0".parse().unwrap(), checker, options)
    }

    #[test]
    fn not_activated_it_binds_its_address_with_or_without_a_socket_name() {
        for name in [Some("health"), None] {
            let e = endpoint(EndpointOptions::new().socket_activation(name));
            e.start(&StartContext::background()).unwrap();
            assert_ne!(e.local_addr().unwrap().port(), 0);
            e.close().unwrap();
        }
    }

    #[test]
    fn a_socket_name_no_socket_can_have_fails_the_start_and_says_why() {
        for (name, says) in [
            ("", "is empty"),
            ("a:b", "contains `:`"),
            ("a\0", "printable"),
        ] {
            let e = endpoint(EndpointOptions::new().socket_activation(Some(name)));
            let error = e
                .start(&StartContext::background())
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{name:?}: {error}");
            assert!(error.contains("socket activation"), "{name:?}: {error}");
            assert!(e.local_addr().is_none());
        }
    }

    #[test]
    fn the_upgrade_calls_are_harmless_before_start_and_after_close() {
        let e = endpoint(EndpointOptions::new().socket_activation(Some("up")));
        assert_eq!(e.socket_name(), Some("up"));
        e.start_accepting();
        e.hand_over();
        e.hand_over();
        assert!(e.wait_drained(Instant::now()));
        #[cfg(unix)]
        assert_eq!(e.listener_fd(), None);
        e.start(&StartContext::background()).unwrap();
        #[cfg(unix)]
        assert!(e.listener_fd().is_some());
        e.close().unwrap();
        e.hand_over();
        e.start_accepting();
        assert!(e.wait_drained(Instant::now()));
        #[cfg(unix)]
        assert_eq!(e.listener_fd(), None);
        assert_eq!(
            endpoint(EndpointOptions::new()).socket_name(),
            Some("health")
        );
    }

    #[test]
    fn a_paused_endpoint_answers_once_accepting_then_hands_over_and_drains() {
        let e = endpoint(EndpointOptions::new().socket_activation(None));
        assert_eq!(e.socket_name(), None);
        e.pause_accepting();
        e.start(&StartContext::background()).unwrap();
        let addr = e.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).expect("connect: queued in the backlog");
        c.set_write_timeout(Some(WATCHDOG)).unwrap();
        ask(&mut c);
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(c.read(&mut byte).is_err(), "no answer while paused");

        e.start_accepting();
        c.set_read_timeout(Some(WATCHDOG)).unwrap();
        let head = answer_head(&mut c);
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        assert!(!head.contains("Connection: close"), "{head}");
        #[cfg(unix)]
        assert!(e.listener_fd().is_some());
        e.hand_over();
        #[cfg(unix)]
        assert_eq!(e.listener_fd(), None);
        ask(&mut c);
        let head = answer_head(&mut c);
        assert!(head.contains("Connection: close"), "{head}");
        // Open until its client closes too (it lingers after its last answer).
        assert!(!e.wait_drained(Instant::now()));
        drop(c);
        assert!(e.wait_drained(Instant::now() + WATCHDOG), "drained");
        e.close().unwrap();
    }
}

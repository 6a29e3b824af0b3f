//! [`HealthEndpoint`]: the HTTP face of a [`HealthChecker`] for probes, load balancers and people.

mod render;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::checker::{HealthChecker, Probe, Snapshot};
use crate::error::{Error, Phase, Result};
#[cfg(feature = "metrics")]
use crate::http::Reply;
use crate::http::{Handler, Limits, Request, Response, Server};
#[cfg(feature = "metrics")]
use crate::metrics::{Format, Job, Metrics, Outcome, Scraper};
use crate::service::{HealthReporter, Service};
use crate::state::StateMachine;
use crate::stop::StartContext;

use self::render::Overall;

const NAME: &str = "health endpoint";
const HEALTH_JSON: &str = "application/health+json";

/// Options of a [`HealthEndpoint`], with documented defaults.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    hide_reasons: bool,
    limits: Limits,
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
}

impl EndpointOptions {
    /// The defaults: reasons shown, 256 connections, 8 KiB request heads, 5 s to send a head,
    /// 30 s idle keep-alive, 10 s to take a response, 2 event-loop threads.
    pub fn new() -> EndpointOptions {
        EndpointOptions::default()
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

    /// How many connections may be open at once (default 256); more are closed at once.
    pub fn max_connections(mut self, n: usize) -> EndpointOptions {
        self.limits = self.limits.max_connections(n);
        self
    }

    /// How long a client may take to send a whole request head (default 5 s); a slower one is
    /// disconnected.
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

    /// How long an idle keep-alive connection is kept open (default 30 s).
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
/// | `/livez` | liveness: the process is alive and its health checker is polling |
/// | `/readyz`, `/ready` | readiness: every check's `ready()` |
/// | `/healthz`, `/health` | everything: every check's readiness and health |
/// | `/readyz/NAME`, `/healthz/NAME` | one check (404 if there is none by that name) |
/// | `/metrics` | Prometheus metrics, with [`EndpointOptions::metrics`] (feature `metrics`; else 404) |
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
/// ([`EndpointOptions::event_loops`]); request heads are
/// limited in size and time, idle connections are dropped, and the connection count is capped
/// (see [`EndpointOptions`]). Bind it where probes can reach it and people cannot, or turn on
/// [`EndpointOptions::hide_reasons`].
///
/// With metrics, one more thread (`health metrics`) runs the scrapes, so that a scrape waiting
/// for producers never holds up an event loop; closing refuses queued scrapes and waits for the
/// one in progress, at most the producers' longest bound and a few seconds.
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
    #[cfg(feature = "metrics")]
    scraper: Mutex<Option<Arc<Scraper>>>,
}

impl HealthEndpoint {
    /// An endpoint that will listen on `addr` (port 0 lets the OS choose; read it back with
    /// [`local_addr`](HealthEndpoint::local_addr)) and answer from `checker`.
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
            #[cfg(feature = "metrics")]
            scraper: Mutex::new(None),
        }
    }

    /// The address it listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.bound.lock()
    }
}

impl HealthReporter for HealthEndpoint {
    fn name(&self) -> &str {
        NAME
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready().map_err(|e| e.in_service(NAME, Phase::Ready))
    }
}

impl Service for HealthEndpoint {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            let checker = self.checker.clone();
            let hide = self.options.hide_reasons;
            let cache = Mutex::new(AnswerCache::default());
            #[cfg(feature = "metrics")]
            let scraper = match &self.options.metrics {
                Some(metrics) => {
                    metrics.watch_checker(checker.clone());
                    let scraper = Arc::new(Scraper::spawn(metrics.clone())?);
                    *self.scraper.lock() = Some(scraper.clone());
                    Some(scraper)
                }
                None => None,
            };
            let handler: Handler = Arc::new(move |req: &Request<'_>| {
                #[cfg(feature = "metrics")]
                if let (Some(scraper), "/metrics") = (&scraper, req.path()) {
                    return scrape(scraper, req);
                }
                answer(&checker, hide, &cache, req).into()
            });
            let server = Server::bind(
                self.addr,
                self.options.limits.clone(),
                handler,
                "health http",
            )
            .map_err(|e| {
                #[cfg(feature = "metrics")]
                drop(self.scraper.lock().take());
                Error::msg(format!("cannot listen on {}: {e}", self.addr))
            })?;
            let addr = server.local_addr();
            log::info!("{NAME}: listening on http://{addr}");
            *self.bound.lock() = Some(addr);
            *self.server.lock() = Some(server);
            Ok(())
        })
        .map_err(|e| e.in_service(NAME, Phase::Start))
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
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
            drop(self.scraper.lock().take());
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

/// What a request asks for, parsed from its path and query.
struct Query {
    verbose: bool,
    excluded: Vec<String>,
}

fn parse_query(query: Option<&str>) -> Query {
    let mut q = Query {
        verbose: false,
        excluded: Vec::new(),
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "verbose" => q.verbose = !matches!(value, "0" | "false"),
            "exclude" => q.excluded.push(percent_decode(value)),
            _ => {}
        }
    }
    q
}

/// Decodes `%XX` escapes and `+` (a space in a query); invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last plain `/readyz` and `/healthz` answers (no check named, no `verbose`, nothing
/// excluded: what probes ask, over and over), each with the snapshot it was rendered from.
///
/// A probe's question gets the same answer until the checker publishes a change, so rendering
/// it anew for every request is wasted work. A cached answer is reused only while a fresh
/// snapshot [shows the same](Snapshot::shows_the_same_as) as the one it was rendered from: the
/// same publication, the same checker state, and no check stale. Otherwise the answer is
/// rendered from the fresh snapshot, as without the cache. The handler runs on the server's
/// event-loop threads; the lock is held only to compare snapshots and clone an answer (an
/// `Arc` body), never while rendering.
#[derive(Default)]
struct AnswerCache {
    /// `[readyz, healthz]`.
    slots: [Option<(Snapshot, Response)>; 2],
}

/// Routes one request. Runs on the server's event-loop threads: it only reads the checker's
/// cached snapshot and renders it (or reuses its last rendering of the same snapshot).
fn answer(
    checker: &HealthChecker,
    hide_reasons: bool,
    cache: &Mutex<AnswerCache>,
    req: &Request<'_>,
) -> Response {
    if req.method() != "GET" && req.method() != "HEAD" {
        return Response::text(405, "method not allowed: use GET or HEAD\n")
            .with_header("Allow", "GET, HEAD");
    }
    let path = req.path();
    let (what, probes, only): (&str, &[Probe], Option<&str>) = match path {
        "/livez" => return live(checker, req),
        "/readyz" | "/ready" => ("readyz", &[Probe::Ready], None),
        "/healthz" | "/health" => ("healthz", &[Probe::Ready, Probe::Health], None),
        _ => match path
            .strip_prefix("/readyz/")
            .map(|n| ("readyz", &[Probe::Ready][..], n))
            .or_else(|| {
                path.strip_prefix("/healthz/")
                    .map(|n| ("healthz", &[Probe::Ready, Probe::Health][..], n))
            }) {
            Some((what, probes, name)) if !name.is_empty() => (what, probes, Some(name)),
            _ => return Response::text(404, "not found: try /livez, /readyz or /healthz\n"),
        },
    };
    let query = parse_query(req.query());
    let decoded;
    let only = match only {
        Some(n) => {
            decoded = percent_decode(n);
            Some(decoded.as_str())
        }
        None => None,
    };
    let snapshot = checker.snapshot();
    let slot = (only.is_none() && !query.verbose && query.excluded.is_empty())
        .then_some(usize::from(what == "healthz"));
    if let Some(slot) = slot {
        if let Some((rendered_from, response)) = &cache.lock().slots[slot] {
            if rendered_from.shows_the_same_as(&snapshot) {
                return response.clone();
            }
        }
    }
    let Some((overall, items)) = render::collect(&snapshot, probes, only, &query.excluded) else {
        return Response::text(404, format!("no check named {:?}\n", only.unwrap_or("")));
    };
    if query.verbose {
        let body = render::verbose(what, overall, &items, hide_reasons);
        return Response::text(overall.http_status(), body);
    }
    let description = match only {
        Some(n) => format!("check {n}"),
        None if what == "readyz" => "readiness of every check".to_owned(),
        None => "health and readiness of every check".to_owned(),
    };
    let body = render::json(&snapshot, &description, overall, &items, hide_reasons);
    let response = Response::new(overall.http_status(), HEALTH_JSON, body.into_bytes());
    if let Some(slot) = slot {
        cache.lock().slots[slot] = Some((snapshot, response.clone()));
    }
    response
}

/// `/metrics`: handed to the scrape thread, whose answer comes back through the event loop.
#[cfg(feature = "metrics")]
fn scrape(scraper: &Arc<Scraper>, req: &Request<'_>) -> Reply {
    if req.method() != "GET" && req.method() != "HEAD" {
        return Response::text(405, "method not allowed: use GET or HEAD\n")
            .with_header("Allow", "GET, HEAD")
            .into();
    }
    let format = Format::from_accept(req.accept());
    let scraper = Arc::clone(scraper);
    Reply::Later(Box::new(move |responder| {
        let job = Job {
            format,
            reply: Box::new(move |outcome| {
                responder.send(match outcome {
                    Outcome::Body(body) => {
                        Response::new(200, format.content_type(), body.into_bytes())
                    }
                    Outcome::Busy => Response::text(503, "too many scrapes at once; try again\n")
                        .with_header("Retry-After", "1"),
                    Outcome::Failed => Response::text(500, "the scrape failed; see the log\n"),
                });
            }),
        };
        if let Err(refused) = scraper.submit(job) {
            (refused.reply)(Outcome::Busy);
        }
    }))
}

/// Liveness: the process answers and its health checker is polling. It does not depend on any
/// check, so a failing dependency never gets the process restarted.
fn live(checker: &HealthChecker, req: &Request<'_>) -> Response {
    let snapshot = checker.snapshot();
    let polling = snapshot.checker_state() == crate::State::Started;
    let overall = if polling {
        Overall::Pass
    } else {
        Overall::Fail
    };
    let query = parse_query(req.query());
    if query.verbose {
        let mut body = String::new();
        if polling {
            body.push_str("[+]ping ok\n[+]health checker ok\nlivez check passed\n");
        } else {
            body.push_str(&format!(
                "[+]ping ok\n[-]health checker failed: not polling (state: {})\nlivez check failed\n",
                snapshot.checker_state()
            ));
        }
        return Response::text(overall.http_status(), body);
    }
    let mut body = String::from("{\"status\":\"");
    body.push_str(if polling { "pass" } else { "fail" });
    body.push_str("\",\"version\":");
    render::push_json_str(&mut body, snapshot.version());
    body.push_str(",\"releaseId\":");
    render::push_json_str(&mut body, snapshot.sha());
    body.push_str(",\"description\":\"liveness\"}");
    Response::new(overall.http_status(), HEALTH_JSON, body.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("verbose&exclude=db&exclude=a%20b&exclude=c+d&x=1"));
        assert!(q.verbose);
        assert_eq!(q.excluded, ["db", "a b", "c d"]);
        assert!(!parse_query(Some("verbose=false")).verbose);
        assert!(!parse_query(None).verbose);
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%9c%93"), "✓");
    }
}

//! [`TinyHttpRoutes`]: the health routes answered from the program's own tiny_http server.

use std::fmt;
use std::sync::Arc;

use crate::checker::HealthChecker;
use crate::http::{split_target, Response};
#[cfg(feature = "metrics")]
use crate::metrics::{self, Metrics};

#[cfg(feature = "metrics")]
use super::routes::scraped;
use super::routes::{Ask, Route, Routes};

/// The health routes of a [`HealthChecker`] (and `/metrics`), answered from the requests that
/// the program's own [tiny_http](https://docs.rs/tiny_http/0.12) server receives (feature
/// `tiny_http`): one port for the program's API and its probes.
///
/// [`respond`](TinyHttpRoutes::respond) answers a request for a health route exactly as the
/// [`HealthEndpoint`](crate::HealthEndpoint) would: the same routes, status codes, content
/// types and bodies, `Cache-Control: no-store`, `Allow` on a `405`, `HEAD` with the headers
/// (and `Content-Length`) of the `GET` and no body, all rendered from the checker's cached
/// snapshot with the same reuse of the last plain answer. See
/// [`HealthEndpoint`](crate::HealthEndpoint#routes-get-and-head) for the routes and what they
/// answer. Any other request is given back, untouched, for the program to answer. What differs
/// is tiny_http's own framing: it adds `Date` and `Server` headers and handles keep-alive its
/// way.
///
/// # TinyHttpRoutes or HealthEndpoint
///
/// The [`HealthEndpoint`](crate::HealthEndpoint) is a hardened front of its own: a cap on
/// connections, fixed limits on request heads, deadlines to send a head and take an answer,
/// and a fixed number of threads of its own, whatever the number of connections. It keeps
/// answering probes when the process is in trouble, and is the default choice (the
/// [`Runner`](crate::Runner) starts one).
///
/// `TinyHttpRoutes` suits a program that already serves tiny_http behind its own limits (a
/// reverse proxy, a private network) and wants one port. It inherits tiny_http's front as it
/// is: no limit on a request head's size, and one thread per connection, without a cap. Probes
/// then share the fate of the program's API: a flood of connections to the API delays them.
/// `ARCHITECTURE.md`, section "Why the endpoint has its own HTTP front", has the measurements.
///
/// # Example
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::TcpStream;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use lifecycle::health::TinyHttpRoutes;
/// use lifecycle::{HealthChecker, Service, StartContext};
///
/// let checker = Arc::new(HealthChecker::new("1.0.0", "abc123"));
/// checker.start(&StartContext::background())?;
/// let server = Arc::new(tiny_http::Server::http("127.0.0.1:0")?);
/// let addr = server.server_addr().to_ip().expect("listening on an IP address");
/// let routes = TinyHttpRoutes::new(checker.clone());
/// let serving = std::thread::Builder::new().name("api http".into()).spawn({
///     let server = Arc::clone(&server);
///     // Ends once `unblock` is called.
///     move || {
///         for request in server.incoming_requests() {
///             let Some(request) = routes.respond(request) else {
///                 continue; // a health route: answered
///             };
///             // The program's own routes.
///             let answer = tiny_http::Response::from_string("no such job\n").with_status_code(404);
///             if let Err(e) = request.respond(answer) {
///                 eprintln!("answering: {e}");
///             }
///         }
///     }
/// })?;
///
/// let mut stream = TcpStream::connect(addr)?;
/// stream.set_read_timeout(Some(Duration::from_secs(10)))?;
/// stream.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
/// let mut answer = String::new();
/// stream.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
/// assert!(answer.contains(r#""description":"liveness""#), "{answer}");
///
/// server.unblock();
/// serving.join().expect("the server thread panicked");
/// checker.close()?;
/// # Ok::<(), lifecycle::BoxError>(())
/// ```
pub struct TinyHttpRoutes {
    routes: Routes,
    #[cfg(feature = "metrics")]
    metrics: Option<Metrics>,
}

impl TinyHttpRoutes {
    /// The health routes of `checker`, with reasons shown and without `/metrics`.
    pub fn new(checker: Arc<HealthChecker>) -> TinyHttpRoutes {
        TinyHttpRoutes {
            routes: Routes::new(checker),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Leaves failure reasons out of every answer (default `false`), as
    /// [`EndpointOptions::hide_reasons`](crate::health::EndpointOptions::hide_reasons) does:
    /// answers then say `reason withheld`.
    pub fn hide_reasons(mut self, hide: bool) -> TinyHttpRoutes {
        self.routes = self.routes.hide_reasons(hide);
        self
    }

    /// Answers `GET /metrics` (and `HEAD`) with `metrics` (default: none, and `/metrics` is
    /// given back to the program), feature `metrics`. From then on `metrics` reads its health
    /// metrics from this checker, as it does from a [`HealthEndpoint`](crate::HealthEndpoint)'s
    /// once that starts. The format follows the request's `Accept`: Prometheus text 0.0.4, or
    /// OpenMetrics text 1.0.0 (see [`Format::from_accept`](crate::metrics::Format::from_accept)).
    ///
    /// Unlike the [`HealthEndpoint`](crate::HealthEndpoint), which scrapes on a thread of its
    /// own, the scrape runs on the thread that calls [`respond`](TinyHttpRoutes::respond), with
    /// [`Metrics::encode`]: it waits for the producers, at most the longest producer's bound
    /// (plus the wait for a scrape already in progress). With slow producers, call `respond`
    /// for `/metrics` where such a wait is acceptable. A scrape that panics is answered `500`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: Metrics) -> TinyHttpRoutes {
        metrics.watch_checker(Arc::clone(self.routes.checker()));
        self.routes = self.routes.serve_metrics(true);
        self.metrics = Some(metrics);
        self
    }

    /// Answers `request` if it asks for one of the health routes and returns `None`; otherwise
    /// gives it back untouched (`Some(request)`) for the program to answer.
    ///
    /// The health routes are `/livez`, `/readyz`, `/ready`, `/healthz`, `/health`,
    /// `/readyz/NAME`, `/healthz/NAME`
    #[cfg_attr(
        feature = "metrics",
        doc = "and, with [`metrics`](TinyHttpRoutes::metrics), `/metrics`,"
    )]
    /// whatever the method (another method than `GET` and `HEAD` is answered `405`) and the
    /// query. A request target in absolute form (`http://host/readyz`) names its path.
    ///
    /// It never blocks on a check: answers are rendered from the checker's cached snapshot.
    #[cfg_attr(
        feature = "metrics",
        doc = "Only a `/metrics` scrape waits, for the producers (see [`metrics`](TinyHttpRoutes::metrics))."
    )]
    /// Writing the answer blocks as tiny_http's
    /// [`Request::respond`](tiny_http::Request::respond) does; an error writing it (the client
    /// went away) is logged at debug level and the request is consumed.
    #[must_use = "a request given back must be answered, or tiny_http answers it 500 when it is dropped"]
    pub fn respond(&self, request: tiny_http::Request) -> Option<tiny_http::Request> {
        let route = {
            let (path, query) = split_target(request.url());
            let accept = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str());
            self.routes.route(&Ask {
                method: request.method().as_str(),
                path,
                query,
                accept,
            })
        };
        let response = match route {
            Route::Answer(response) => response,
            #[cfg(feature = "metrics")]
            Route::Scrape(format) => match &self.metrics {
                Some(metrics) => scraped(format, metrics::scrape(metrics, format)),
                // Not routed without metrics.
                None => return Some(request),
            },
            Route::Elsewhere => return Some(request),
        };
        send(request, &response);
        None
    }
}

impl fmt::Debug for TinyHttpRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TinyHttpRoutes")
            .field("routes", &self.routes)
            .finish()
    }
}

/// Sends `response` with the headers the endpoint would send. Its length is always given:
/// tiny_http would otherwise send a body of 32 KiB or more chunked.
fn send(request: tiny_http::Request, response: &Response) {
    let mut headers = Vec::with_capacity(4);
    let mut header = |name: &str, value: &str| match tiny_http::Header::from_bytes(name, value) {
        Ok(h) => headers.push(h),
        // Unreachable: what `Response` sends is visible ASCII.
        Err(()) => crate::relay::debug!("health routes: dropping response header {name:?}"),
    };
    header("Content-Type", response.sent_content_type());
    header("Cache-Control", "no-store");
    for (name, value) in response.sent_headers() {
        header(name, value);
    }
    let body = response.body();
    let status = tiny_http::StatusCode(response.sent_status());
    let answer = tiny_http::Response::new(status, headers, body, Some(body.len()), None)
        .with_chunked_threshold(usize::MAX);
    if let Err(e) = request.respond(answer) {
        crate::relay::debug!("health routes: writing a {} answer: {e}", status.0);
    }
}

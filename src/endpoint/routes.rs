//! The health routes, whatever front serves them: which route a request asks for, and its
//! answer, rendered from the checker's cached snapshot.
//!
//! [`Routes::route`] is the one place that decides an answer. The fronts only carry it: the
//! [`HealthEndpoint`](super::HealthEndpoint)'s own HTTP server, and
//! [`TinyHttpRoutes`](super::TinyHttpRoutes) for a program's tiny_http server. A `/metrics`
//! scrape is the one answer a front produces itself ([`Route::Scrape`]), because each runs it
//! where it may block: the endpoint on its scrape thread, tiny_http on the caller's thread.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::checker::{HealthChecker, Snapshot};
use crate::http::Response;
#[cfg(feature = "metrics")]
use crate::metrics::{Format, Outcome};

use super::render::{self, Overall, Question};

const HEALTH_JSON: &str = "application/health+json";

/// What a request asks, as any front sees it: the parts of a request that choose its answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    /// As sent (methods are case-sensitive): `"GET"`, `"HEAD"`, ...
    pub(crate) method: &'a str,
    /// The request target up to the first `?`, not decoded: `"/healthz"`.
    pub(crate) path: &'a str,
    /// After the first `?`, if there is one; not decoded.
    pub(crate) query: Option<&'a str>,
    /// The first `Accept` header, if any.
    // Only `/metrics` negotiates its format.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) accept: Option<&'a str>,
}

/// How to answer a request.
pub(crate) enum Route {
    /// With this response (`HEAD` gets its headers, without the body).
    Answer(Response),
    /// With a scrape of the metrics in this format: a `GET` or `HEAD` of `/metrics`, when the
    /// routes [serve metrics](Routes::serve_metrics). The front runs the scrape where it may
    /// block and answers with [`scraped`].
    #[cfg(feature = "metrics")]
    Scrape(Format),
    /// Not one of the health routes, whatever the method: the endpoint answers
    /// [`not_found`]; tiny_http gives the request back to the program.
    Elsewhere,
}

/// The health routes of one checker (see [`HealthEndpoint`](super::HealthEndpoint) for the
/// table), with the cache of their plain answers.
pub(crate) struct Routes {
    checker: Arc<HealthChecker>,
    hide_reasons: bool,
    #[cfg(feature = "metrics")]
    metrics: bool,
    cache: Mutex<AnswerCache>,
}

/// Which of the health routes a path names.
enum Target<'a> {
    /// `/livez`, `/readyz` or `/healthz`; `only` a check's name, not decoded (never for
    /// `/livez`, which has no per-check form).
    Probes {
        question: Question,
        only: Option<&'a str>,
    },
    #[cfg(feature = "metrics")]
    Metrics,
}

impl Routes {
    /// The routes of `checker`: reasons shown, no `/metrics`.
    pub(crate) fn new(checker: Arc<HealthChecker>) -> Routes {
        Routes {
            checker,
            hide_reasons: false,
            #[cfg(feature = "metrics")]
            metrics: false,
            cache: Mutex::new(AnswerCache::default()),
        }
    }

    /// Leaves failure reasons out of every answer (see
    /// [`EndpointOptions::hide_reasons`](super::EndpointOptions::hide_reasons)).
    pub(crate) fn hide_reasons(mut self, hide: bool) -> Routes {
        self.hide_reasons = hide;
        // Answers cached with the other setting must not be served with this one.
        self.cache = Mutex::new(AnswerCache::default());
        self
    }

    /// Routes `/metrics` to [`Route::Scrape`] (else it is [`Route::Elsewhere`]).
    #[cfg(feature = "metrics")]
    pub(crate) fn serve_metrics(mut self, serve: bool) -> Routes {
        self.metrics = serve;
        self
    }

    /// The checker whose snapshot the routes answer from.
    #[cfg(all(feature = "tiny_http", feature = "metrics"))]
    pub(crate) fn checker(&self) -> &Arc<HealthChecker> {
        &self.checker
    }

    /// Decides how to answer `ask`. It never blocks: it reads the checker's cached snapshot and
    /// renders it (or reuses its last rendering of the same snapshot), so a front may call it on
    /// any thread, on several at once.
    pub(crate) fn route(&self, ask: &Ask<'_>) -> Route {
        let Some(target) = self.target(ask.path) else {
            return Route::Elsewhere;
        };
        if ask.method != "GET" && ask.method != "HEAD" {
            return Route::Answer(method_not_allowed(ask.method));
        }
        match target {
            Target::Probes { question, only } => {
                Route::Answer(self.probes(question, only, ask.query))
            }
            #[cfg(feature = "metrics")]
            Target::Metrics => Route::Scrape(Format::from_accept(ask.accept)),
        }
    }

    fn target<'a>(&self, path: &'a str) -> Option<Target<'a>> {
        let every = |question| Target::Probes {
            question,
            only: None,
        };
        match path {
            "/livez" => return Some(every(Question::Live)),
            "/readyz" | "/ready" => return Some(every(Question::Ready)),
            "/healthz" | "/health" => return Some(every(Question::Health)),
            #[cfg(feature = "metrics")]
            "/metrics" if self.metrics => return Some(Target::Metrics),
            _ => {}
        }
        let prefixes = [
            ("/readyz/", Question::Ready),
            ("/healthz/", Question::Health),
        ];
        let (question, name) = prefixes
            .iter()
            .find_map(|&(prefix, q)| Some((q, path.strip_prefix(prefix)?)))?;
        (!name.is_empty()).then_some(Target::Probes {
            question,
            only: Some(name),
        })
    }

    /// `/livez`, `/readyz`, `/healthz` and their per-check forms.
    fn probes(&self, question: Question, only: Option<&str>, query: Option<&str>) -> Response {
        let query = parse_query(query);
        let decoded;
        let only = match only {
            Some(n) => {
                decoded = percent_decode(n);
                Some(decoded.as_str())
            }
            None => None,
        };
        let snapshot = self.checker.snapshot();
        let plain = only.is_none() && query.excluded.is_empty();
        let slot = (plain && !query.verbose).then_some(match question {
            Question::Ready => 0,
            Question::Health => 1,
            Question::Live => 2,
        });
        if let Some(slot) = slot {
            if let Some((rendered_from, response)) = &self.cache.lock().slots[slot] {
                if rendered_from.shows_the_same_as(&snapshot) {
                    return response.clone();
                }
            }
        }
        let (mut overall, items) = match render::collect(&snapshot, question, only, &query.excluded)
        {
            Ok(answer) => answer,
            Err(unanswered) => {
                return Response::text(404, unanswered.explain(only.unwrap_or("")));
            }
        };
        if question == Question::Live && plain && !snapshot.is_live().is_passing() {
            // Liveness is `Snapshot::is_live`'s to decide, as for the systemd watchdog; the
            // items (which follow the same rule per check) only tell pass from warn.
            overall = Overall::Fail;
        }
        if query.verbose {
            let body = render::verbose(question, overall, &items, self.hide_reasons);
            return Response::text(overall.http_status(), body);
        }
        let description = match (only, question) {
            (Some(n), _) => format!("check {n}"),
            (None, Question::Live) => "liveness".to_owned(),
            (None, Question::Ready) => "readiness of every check".to_owned(),
            (None, Question::Health) => {
                "health and readiness of every check but the traffic gates".to_owned()
            }
        };
        let body = render::json(&snapshot, &description, overall, &items, self.hide_reasons);
        let response = Response::new(overall.http_status(), HEALTH_JSON, body.into_bytes());
        if let Some(slot) = slot {
            self.cache.lock().slots[slot] = Some((snapshot, response.clone()));
        }
        response
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Routes");
        d.field("hide_reasons", &self.hide_reasons);
        #[cfg(feature = "metrics")]
        d.field("metrics", &self.metrics);
        d.finish_non_exhaustive()
    }
}

/// The endpoint's answer to a request for no health route: `405` or `501` to a method other
/// than `GET` and `HEAD` (see [`method_not_allowed`]), else `404`.
pub(crate) fn not_found(method: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return method_not_allowed(method);
    }
    Response::text(404, "not found: try /livez, /readyz or /healthz\n")
}

/// The methods of RFC 9110 (§9) and PATCH (RFC 5789), which the endpoint recognises and
/// refuses with `405`; any other is not implemented.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The answer to a method other than `GET` and `HEAD`: `405` with `Allow: GET, HEAD` to a
/// method the endpoint recognises, `501` to one it does not (RFC 9110 §9.1, §15.6.2).
fn method_not_allowed(method: &str) -> Response {
    if !KNOWN_METHODS.contains(&method) {
        return Response::text(501, "not implemented: use GET or HEAD\n");
    }
    Response::text(405, "method not allowed: use GET or HEAD\n").with_header("Allow", "GET, HEAD")
}

/// The answer to a [`Route::Scrape`], from what became of the scrape.
#[cfg(feature = "metrics")]
pub(crate) fn scraped(format: Format, outcome: Outcome) -> Response {
    match outcome {
        Outcome::Body(body) => Response::new(200, format.content_type(), body.into_bytes()),
        Outcome::Busy => Response::text(503, "too many scrapes at once; try again\n")
            .with_header("Retry-After", "1"),
        Outcome::Failed => Response::text(500, "the scrape failed; see the log\n"),
    }
}

/// What a request's query asks for.
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

/// The last plain `/readyz`, `/healthz` and `/livez` answers (no check named, no `verbose`,
/// nothing excluded: what probes ask, over and over), each with the snapshot it was rendered
/// from.
///
/// A probe's question gets the same answer until the checker publishes a change, so rendering
/// it anew for every request is wasted work. A cached answer is reused only while a fresh
/// snapshot [shows the same](Snapshot::shows_the_same_as) as the one it was rendered from: the
/// same publication, the same checker state, and no check stale. Otherwise the answer is
/// rendered from the fresh snapshot, as without the cache. The routes are called on the
/// fronts' threads, several at once; the lock is held only to compare snapshots and clone an
/// answer (an `Arc` body), never while rendering.
#[derive(Default)]
struct AnswerCache {
    /// `[readyz, healthz, livez]`.
    slots: [Option<(Snapshot, Response)>; 3],
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

    #[track_caller]
    fn check(routes: &Routes, method: &str, target: &str, expect: Option<u16>) {
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let ask = Ask {
            method,
            path,
            query,
            accept: None,
        };
        let got = match routes.route(&ask) {
            Route::Answer(r) => Some(r.status()),
            #[cfg(feature = "metrics")]
            Route::Scrape(_) => Some(0),
            Route::Elsewhere => None,
        };
        assert_eq!(got, expect, "{method} {target}");
    }

    #[test]
    fn routes_by_path_then_method() {
        // An unstarted checker: every answer about it fails, but every route answers.
        let routes = Routes::new(Arc::new(HealthChecker::new("1", "abc")));
        check(&routes, "GET", "/livez", Some(503));
        check(&routes, "HEAD", "/readyz?verbose", Some(503));
        check(&routes, "GET", "/healthz/nope", Some(404));
        // `/livez` has no per-check form: a path under it is no health route (the program's,
        // under tiny_http).
        check(&routes, "GET", "/livez/nope", None);
        check(&routes, "POST", "/readyz", Some(405));
        check(&routes, "PROPFIND", "/livez", Some(501));
        check(&routes, "POST", "/jobs", None);
        check(&routes, "GET", "/readyz/", None);
        check(&routes, "GET", "/metrics", None);
        #[cfg(feature = "metrics")]
        {
            let routes = routes.serve_metrics(true);
            check(&routes, "GET", "/metrics", Some(0));
            check(&routes, "DELETE", "/metrics", Some(405));
        }
        assert_eq!(not_found("POST").status(), 405);
        assert_eq!(not_found("BREW").status(), 501);
        assert_eq!(not_found("GET").status(), 404);
    }
}

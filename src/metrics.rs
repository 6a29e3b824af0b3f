//! Prometheus metrics (feature `metrics`, on by default): the lifecycle's own, the program's, and
//! producers evaluated at scrape time, served at `/metrics` by the
//! [`HealthEndpoint`](crate::HealthEndpoint).
//!
//! [`Metrics`] is a cheap, cloneable handle. Give it to the [`Runner`](crate::Runner) with
//! [`Runner::metrics`](crate::Runner::metrics) (or to an endpoint with
//! [`EndpointOptions::metrics`](crate::health::EndpointOptions::metrics)) and `GET /metrics` answers
//! with:
//!
//! - **the lifecycle's own metrics**, read at scrape time from their sources (the health
//!   checker's cache and the runner's bookkeeping, never from the services themselves):
//!
//!   | family | labels | what |
//!   | --- | --- | --- |
//!   | `lifecycle_service_state` | `service`, `state` | 1 for each service's current [`State`](crate::State), 0 for the others |
//!   | `lifecycle_service_start_duration_seconds` | `service` | from the call to start until ready |
//!   | `lifecycle_service_close_duration_seconds` | `service` | how long its close took |
//!   | `lifecycle_health_status` | `probe` | 1 if the process passes `live` / `ready` / `health` overall |
//!   | `lifecycle_health_check_status` | `check`, `probe` | 1 if the check passes the probe |
//!   | `lifecycle_health_check_consecutive_failures` | `check`, `probe` | failures in a row |
//!   | `lifecycle_health_check_poll_duration_seconds` | `check` | its latest poll |
//!   | `lifecycle_health_check_stuck` | `check` | 1 while its latest call has not returned |
//!   | `lifecycle_health_stuck_calls` | | calls into checks that have not returned |
//!   | `lifecycle_build_info` | `version`, `git_sha`, `lifecycle_version` | from the [`HealthChecker`] |
//!   | `process_start_time_seconds` | | when the process started |
//!   | `process_cpu_seconds_total` | | user and system CPU time, a counter (Linux) |
//!   | `process_open_fds` | | open file descriptors (Linux) |
//!   | `process_max_fds` | | the soft limit on open files (Linux) |
//!   | `process_virtual_memory_bytes` | | virtual memory size (Linux) |
//!   | `process_resident_memory_bytes` | | resident memory size (Linux) |
//!   | `process_threads` | | the process's threads (Linux) |
//!   | `lifecycle_metrics_producer_failures_total` | `producer`, `reason` | see below |
//!   | `lifecycle_metrics_producer_duration_seconds` | `producer` | its latest completed call |
//!   | `lifecycle_health_endpoint_connections_open` | | connections the endpoint holds open |
//!   | `lifecycle_health_endpoint_connections_accepted_total` | | connections it accepted |
//!   | `lifecycle_health_endpoint_connections_abandoned_total` | | closed by their client before they were accepted: no slot taken |
//!   | `lifecycle_health_endpoint_connections_evicted_total` | `reason` | closed to make room for a newcomer |
//!   | `lifecycle_health_endpoint_connections_rejected_total` | | answered `503`: nothing could make room |
//!   | `lifecycle_health_endpoint_connections_timed_out_total` | | closed at a head, idle or write deadline |
//!   | `lifecycle_health_endpoint_accept_errors_total` | | failed accepts (`EMFILE`, ...) |
//!   | `lifecycle_health_endpoint_requests_total` | | requests answered |
//!   | `lifecycle_health_endpoint_bad_requests_total` | | requests refused unread (`400`, `431`, `505`) |
//!
//!   State label values are `unstarted`, `starting`, `started`, `start_failed`, `closing`,
//!   `closed` and `close_failed`; eviction reasons are `head_less` (no complete request head
//!   yet), `idle` (kept alive, asking nothing) and `stalled` (its client does not read). The
//!   endpoint's families are those of the endpoint that serves these metrics (see
//!   [`EndpointOptions::max_connections`](crate::health::EndpointOptions::max_connections)).
//!   The `process_*` families are named, typed and described as the Prometheus client
//!   libraries export them (client_golang and Python's `prometheus_client`; `process_threads`
//!   as the Rust `prometheus` crate does), and read from `/proc/self` at every scrape: CPU time is `utime` and
//!   `stime` of `/proc/self/stat` in seconds, resident memory its `rss` pages times the page
//!   size, virtual memory its `vsize`, threads its `num_threads`; open descriptors are the
//!   entries of `/proc/self/fd` (the one that reads it included, as the client libraries count
//!   them), and the maximum is the soft `RLIMIT_NOFILE` (left out when unlimited). A value that
//!   cannot be read is left out of that scrape. Elsewhere than on Linux these families are
//!   absent, and `process_start_time_seconds` is when the first [`Metrics`] was made.
//!   These names and labels are a contract: they change only with a note in the changelog.
//! - **the program's metrics**, registered in the same `prometheus-client`
//!   [`Registry`] with [`register`](Metrics::register) or
//!   [`with_registry`](Metrics::with_registry): counters, gauges, histograms, families, collectors.
//!   They must be cheap to read (atomics): they are encoded on the scrape's thread.
//! - **producers** ([`add_producer`](Metrics::add_producer)): functions called at every scrape, each
//!   on a thread of its own and each within its own bound, for values that are costly or may
//!   block (a queue's depth in a remote broker, a pool's statistics). A producer that misses its
//!   bound is left out of that scrape and never called again while its call is stuck; the scrape
//!   is answered anyway, and the miss is counted in
//!   `lifecycle_metrics_producer_failures_total{producer,reason}` (`timeout`, `stuck`, `error`,
//!   `panic`, `invalid`, `spawn`).
//!
//! Names starting with `lifecycle_` or `process_` are the crate's.
//!
//! # Formats
//!
//! `/metrics` answers in the Prometheus text format 0.0.4, or in OpenMetrics text 1.0.0 when the
//! request's `Accept` prefers `application/openmetrics-text` (as Prometheus' own scrapes do): see
//! [`Format::from_accept`]. Everything is encoded by `prometheus-client`, whose text encoder
//! speaks OpenMetrics; the 0.0.4 answer is derived from it by rewriting the descriptor lines that
//! differ (a counter `x` is typed as `x_total`, `# EOF` and `# UNIT` go), never the samples.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use lifecycle::metrics::{Format, Metrics};
//! use lifecycle::metrics::prometheus_client::metrics::counter::Counter;
//!
//! let metrics = Metrics::new();
//! let served: Counter = Counter::default();
//! metrics.register("api_requests", "Requests served by the API", served.clone())?;
//! metrics.add_producer("pool", Duration::from_millis(50), |out| {
//!     out.gauge("idle", "Idle connections in the pool.", 4.0);
//!     Ok(())
//! })?;
//!
//! served.inc();
//! let text = metrics.encode(Format::Prometheus);
//! assert!(text.contains("# TYPE api_requests_total counter\napi_requests_total 1\n"));
//! assert!(text.contains("pool_idle 4"));
//! # Ok::<(), lifecycle::Error>(())
//! ```

mod builtin;
mod expose;
mod process;
mod producer;
mod scraper;

use std::collections::HashSet;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::checker::HealthChecker;
use crate::error::{Error, ErrorKind, Result};
use crate::http::StatsSource;
use crate::runner::table::ServiceTable;

pub use self::expose::Format;
pub use self::producer::Samples;
pub(crate) use self::scraper::{Job, Outcome, Scraper};
// A scrape on the caller's thread, for the routes served from tiny_http.
#[cfg(feature = "tiny_http")]
pub(crate) use self::scraper::scrape;

use self::builtin::Builtin;
use self::producer::{ProduceFn, Producer};

/// The registry, producers and sources behind `/metrics`: a cheap, cloneable handle (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: RwLock<Registry>,
    producers: RwLock<Vec<Arc<Producer>>>,
    checker: RwLock<Option<Arc<HealthChecker>>>,
    services: RwLock<Option<Arc<ServiceTable>>>,
    /// The endpoint's connection counters, once an endpoint serves these metrics.
    endpoint: RwLock<Option<StatsSource>>,
    process_start: Option<SystemTime>,
    /// Held by the scrape in progress: producers are never called by two scrapes at once.
    scrape: Mutex<()>,
    /// The names the metrics registered through [`Metrics::register`] expose.
    registered: Mutex<HashSet<String>>,
    /// Removed producers whose last call's thread is still to be joined.
    retired: Mutex<Vec<Arc<Producer>>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// An empty registry and no producers. The lifecycle's own metrics appear once the
    /// handle is given to a runner or an endpoint.
    pub fn new() -> Metrics {
        Metrics {
            inner: Arc::new(Inner {
                registry: RwLock::new(Registry::default()),
                producers: RwLock::new(Vec::new()),
                checker: RwLock::new(None),
                services: RwLock::new(None),
                endpoint: RwLock::new(None),
                process_start: process_start_time(),
                scrape: Mutex::new(()),
                registered: Mutex::new(HashSet::new()),
                retired: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Registers one of the program's metrics (see `prometheus-client`'s
    /// [`Registry::register`]): a counter `name` is exposed as `name_total`, and `help` gets a
    /// final period (and is escaped: it may hold any text).
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidInput`] if `name` is not `[a-zA-Z_][a-zA-Z0-9_]*` or is the
    ///   crate's (`lifecycle_*`, `process_*`);
    /// - [`ErrorKind::DuplicateName`] if a metric registered here already exposes that name
    ///   (a counter `x` also takes `x_total` and `x_created`, a histogram `x_bucket`, ...).
    pub fn register(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
        metric: impl Metric,
    ) -> Result<()> {
        self.register_inner(name.into(), help.into(), None, metric)
    }

    /// Registers one of the program's metrics with a unit, which is appended to its name
    /// ([`Registry::register_with_unit`]).
    ///
    /// # Errors
    ///
    /// As [`register`](Metrics::register), for the name with its unit.
    pub fn register_with_unit(
        &self,
        name: impl Into<String>,
        help: impl Into<String>,
        unit: Unit,
        metric: impl Metric,
    ) -> Result<()> {
        self.register_inner(name.into(), help.into(), Some(unit), metric)
    }

    fn register_inner(
        &self,
        name: String,
        help: String,
        unit: Option<Unit>,
        metric: impl Metric,
    ) -> Result<()> {
        let full = match &unit {
            Some(unit) => format!("{name}_{}", unit.as_str()),
            None => name.clone(),
        };
        if !producer::is_name(&full) || is_reserved(&full) {
            return Err(Error::invalid_input(
                &full,
                "a metric name must match [a-zA-Z_][a-zA-Z0-9_]* and not start with \
                 `lifecycle_` or `process_` (the crate's)",
            ));
        }
        let names = occupied(&full, metric.metric_type().as_str());
        let mut registry = self.inner.registry.write();
        let mut taken = self.inner.registered.lock();
        if names.iter().any(|n| taken.contains(n)) {
            return Err(Error::registration(ErrorKind::DuplicateName, &full));
        }
        taken.extend(names);
        let help = producer::escape_help(&help);
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, metric),
            None => registry.register(name, help, metric),
        }
        Ok(())
    }

    /// Runs `f` with the registry, for everything else `prometheus-client` offers: sub-registries
    /// with a prefix or labels, collectors.
    ///
    /// Scrapes wait while `f` runs: keep it short, and do not scrape from inside it. What is
    /// registered here is not checked: names must be valid and unique, help texts must not hold
    /// line breaks, and collectors must be quick (they run on the scrape's thread; one that
    /// panics is left out of that scrape).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.inner.registry.write())
    }

    /// Adds a producer: `produce` is called at every scrape, on a thread `metrics <name>`, and
    /// fills [`Samples`] whose names are prefixed with `name` and `_`.
    ///
    /// A call that has not returned `timeout` after the scrape began is left out of that scrape
    /// (the scrape is answered without it), and the producer is not called again until that call
    /// returns. Producers run concurrently, so a scrape waits at most the longest bound.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidInput`] if `name` is not `[a-zA-Z_][a-zA-Z0-9_]*`, is `lifecycle`
    ///   or `process` or starts with either and `_` (the crate's), or `timeout` is zero or over
    ///   a minute;
    /// - [`ErrorKind::DuplicateName`] if a producer of that name exists.
    pub fn add_producer(
        &self,
        name: &str,
        timeout: Duration,
        produce: impl Fn(&mut Samples) -> Result<()> + Send + Sync + 'static,
    ) -> Result<()> {
        if !producer::is_name(name) {
            return Err(Error::invalid_input(
                name,
                "a producer's name must match [a-zA-Z_][a-zA-Z0-9_]*",
            ));
        }
        if is_reserved(name) {
            return Err(Error::invalid_input(
                name,
                "producer names `lifecycle*` and `process*` (with `_`) are the crate's",
            ));
        }
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            return Err(Error::invalid_input(
                name,
                "a producer's timeout must be more than zero and at most a minute",
            ));
        }
        let mut producers = self.inner.producers.write();
        if producers.iter().any(|p| &*p.name == name) {
            return Err(Error::registration(ErrorKind::DuplicateName, name));
        }
        let produce: Arc<ProduceFn> = Arc::new(produce);
        producers.push(Arc::new(Producer::new(name, timeout, produce)));
        Ok(())
    }

    /// Removes a producer; a call of it in progress finishes on its own (its thread is joined by
    /// a later scrape, or when the last handle goes).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRegistered`] if there is no producer of that name.
    pub fn remove_producer(&self, name: &str) -> Result<()> {
        let mut producers = self.inner.producers.write();
        let Some(at) = producers.iter().position(|p| &*p.name == name) else {
            return Err(Error::registration(ErrorKind::NotRegistered, name));
        };
        let removed = producers.remove(at);
        self.inner.retired.lock().push(removed);
        Ok(())
    }

    /// Encodes everything, as `/metrics` serves it: the lifecycle's metrics, the registry, then
    /// the producers' samples.
    ///
    /// It blocks while the producers run: at most the longest producer's bound, plus the wait
    /// for a scrape already in progress (scrapes take turns, so that no producer is called by
    /// two at once).
    pub fn encode(&self, format: Format) -> String {
        let _turn = self.inner.scrape.lock();
        // Removed producers whose last call has ended are joined; the others wait for a later
        // scrape.
        self.inner.retired.lock().retain(|p| p.reap().is_some());
        let producers = self.inner.producers.read().clone();
        let calls: Vec<_> = producers.iter().filter_map(Producer::call).collect();
        let snapshot = self.inner.checker.read().as_ref().map(|c| c.snapshot());
        let services = self.inner.services.read().clone();
        let endpoint = self.inner.endpoint.read().as_ref().map(StatsSource::read);

        let mut user = String::new();
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            encode_registry(&mut user, &self.inner.registry.read())
        }));
        match encoded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                crate::relay::warn!("metrics: encoding the registry failed: {e}; it is left out");
                user.clear();
            }
            Err(_) => {
                crate::relay::error!("metrics: a metric or collector of the registry panicked; the registry is left out of this scrape");
                user.clear();
            }
        }
        // Every name a family exposes appears once: a producer's family that would take a name
        // the registry, or an earlier producer, has taken is left out (and counted).
        let mut taken = HashSet::new();
        for (name, typ) in user
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        {
            taken.extend(occupied(name, typ));
        }
        let mut produced = Vec::new();
        for call in calls {
            let producer = Arc::clone(call.producer());
            if let Some(mut samples) = call.finish() {
                let dropped = samples.retain_unique(&mut taken);
                if !dropped.is_empty() {
                    producer.fail(producer::Failure::Invalid);
                    crate::relay::warn!(
                        "metrics producer {:?}: families left out, their names are taken: {dropped:?}",
                        producer.name
                    );
                }
                produced.push(samples);
            }
        }

        let mut own = Registry::default();
        own.register_collector(Box::new(Scrape::Builtin(Builtin {
            process_start: self.inner.process_start,
            snapshot,
            services,
            endpoint,
            producers,
        })));
        let mut theirs = Registry::default();
        theirs.register_collector(Box::new(Scrape::Produced(produced)));

        // The lifecycle's families, then the registry's, then the producers'.
        let mut out = String::with_capacity(user.len() + 4096);
        if let Err(e) = encode_registry(&mut out, &own) {
            crate::relay::warn!("metrics: encoding the lifecycle's metrics failed: {e}");
        }
        out.push_str(&user);
        if let Err(e) = encode_registry(&mut out, &theirs) {
            crate::relay::warn!("metrics: encoding the producers' samples failed: {e}");
        }
        let _ = encode_eof(&mut out);
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => expose::openmetrics_to_prometheus(&out),
        }
    }

    /// Reads health metrics and build information from `checker` (the endpoint's).
    pub(crate) fn watch_checker(&self, checker: Arc<HealthChecker>) {
        *self.inner.checker.write() = Some(checker);
    }

    /// Reads the connection counters of the endpoint that serves these metrics from `source`.
    pub(crate) fn watch_endpoint(&self, source: StatsSource) {
        *self.inner.endpoint.write() = Some(source);
    }

    /// Reads the services' states and durations from `table` (a runner's).
    pub(crate) fn watch_services(&self, table: Arc<ServiceTable>) {
        *self.inner.services.write() = Some(table);
    }

    /// The longest bound of the producers: what a scrape waits for them at most.
    pub(crate) fn longest_producer_bound(&self) -> Duration {
        let producers = self.inner.producers.read();
        producers
            .iter()
            .map(|p| p.timeout)
            .max()
            .unwrap_or_default()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let producers = self.inner.producers.read();
        f.debug_struct("Metrics")
            .field(
                "producers",
                &producers.iter().map(|p| &*p.name).collect::<Vec<_>>(),
            )
            .field("watches_health", &self.inner.checker.read().is_some())
            .field("watches_services", &self.inner.services.read().is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    /// Joins the producers' threads that have ended; names those still running, which end on
    /// their own when their call returns.
    fn drop(&mut self) {
        let retired = std::mem::take(self.retired.get_mut());
        for p in self.producers.get_mut().iter().chain(&retired) {
            if let Some(name) = p.reap() {
                crate::relay::warn!(
                    "metrics producer {name:?} is still running as its registry goes"
                );
            }
        }
    }
}

/// Whether a metric or producer name is the crate's: `lifecycle`, `process`, or either with `_`
/// and more.
fn is_reserved(name: &str) -> bool {
    ["lifecycle", "process"].iter().any(|r| {
        name == *r
            || name
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('_'))
    })
}

/// Every sample name a family of type `typ` (as OpenMetrics names it) called `name` exposes.
fn occupied(name: &str, typ: &str) -> Vec<String> {
    let suffixes: &[&str] = match typ {
        "counter" => &["", "_total", "_created"],
        "info" => &["", "_info"],
        "histogram" => &["", "_bucket", "_sum", "_count", "_created"],
        "summary" => &["", "_sum", "_count", "_created"],
        "gaugehistogram" => &["", "_bucket", "_gsum", "_gcount"],
        "stateset" | "gauge" | "unknown" => &[""],
        _ => &[""],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// What one scrape encodes through `prometheus-client` besides the registry.
#[derive(Debug)]
enum Scrape {
    Builtin(Builtin),
    Produced(Vec<Samples>),
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        match self {
            Scrape::Builtin(b) => b.encode(&mut encoder),
            Scrape::Produced(all) => all.iter().try_for_each(|s| s.encode(&mut encoder)),
        }
    }
}

/// When the process started: from `/proc` on Linux, else when the first [`Metrics`] was made.
fn process_start_time() -> Option<SystemTime> {
    static FIRST_SEEN: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    #[cfg(target_os = "linux")]
    if let Some(t) = linux_process_start_time() {
        return Some(t);
    }
    Some(*FIRST_SEEN.get_or_init(SystemTime::now))
}

#[cfg(target_os = "linux")]
fn linux_process_start_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // Field 22, `starttime`, in clock ticks since boot; fields from 3 on follow the name.
    let ticks: u64 = after_comm.split_whitespace().nth(22 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0)?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot =
        Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

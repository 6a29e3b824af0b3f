//! The lifecycle's own metrics, read at scrape time from their sources of truth: the health
//! checker's cached [`Snapshot`], the runner's [`ServiceTable`], the health endpoint's
//! [`ServerStats`], the producers' counts, the process (`/proc/self`, see [`ProcessStats`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::checker::{Probe, Snapshot};
use crate::http::{EvictionReason, ServerStats};
use crate::runner::table::ServiceTable;
use crate::state::State;

use super::process::ProcessStats;
use super::producer::{Failure, Producer};

/// Everything one scrape reads, gathered before encoding.
pub(super) struct Builtin {
    pub(super) process_start: Option<SystemTime>,
    pub(super) snapshot: Option<Snapshot>,
    pub(super) services: Option<Arc<ServiceTable>>,
    /// The counters of the endpoint that serves these metrics, read for this scrape.
    pub(super) endpoint: Option<ServerStats>,
    pub(super) producers: Vec<Arc<Producer>>,
}

impl fmt::Debug for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builtin").finish_non_exhaustive()
    }
}

type Labels<'a> = [(&'static str, &'a str)];

/// Encodes a family of type `typ` from `(labels, metric)` pairs; writes nothing when there are
/// none.
fn family<'l, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, unit): (&str, &str, Option<&Unit>),
    typ: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, M)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, typ)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // A family without labels has one sample, written `name v` rather than `name{} v`.
            return value.encode(metric);
        }
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Encodes a gauge family from `(labels, value)` pairs; writes nothing when there are none.
fn gauges<'l>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, f64)>,
) -> fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(encoder, (name, help, unit), MetricType::Gauge, samples)
}

/// Encodes a counter family (exposed as `name_total`) from `(labels, value)` pairs.
fn counters<'l>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, u64)>,
) -> fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(encoder, (name, help, None), MetricType::Counter, samples)
}

fn bit(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The label value of a state: snake case, as Prometheus label values go.
pub(super) fn state_label(state: State) -> &'static str {
    match state {
        State::Unstarted => "unstarted",
        State::Starting => "starting",
        State::Started => "started",
        State::StartFailed => "start_failed",
        State::Closing => "closing",
        State::Closed => "closed",
        State::CloseFailed => "close_failed",
    }
}

impl Builtin {
    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_process(encoder)?;
        self.encode_services(encoder)?;
        if let Some(snapshot) = &self.snapshot {
            encode_health(encoder, snapshot)?;
        }
        if let Some(stats) = &self.endpoint {
            encode_endpoint(encoder, stats)?;
        }
        self.encode_producers(encoder)
    }

    fn encode_process(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(snapshot) = &self.snapshot {
            let labels: &Labels<'_> = &[
                ("version", snapshot.version()),
                ("git_sha", snapshot.sha()),
                ("lifecycle_version", env!("CARGO_PKG_VERSION")),
            ];
            let mut info = encoder.encode_descriptor(
                "lifecycle_build",
                "The program's version and git sha (from its HealthChecker), and lifecycle's version.",
                None,
                MetricType::Info,
            )?;
            info.encode_info(&labels)?;
        }
        if let Some(start) = self.process_start {
            let at = start.duration_since(UNIX_EPOCH).unwrap_or_default();
            gauges(
                encoder,
                "process_start_time",
                "Start time of the process since the Unix epoch.",
                Some(&Unit::Seconds),
                [(Vec::new(), seconds(at))],
            )?;
        }
        encode_resources(encoder, &ProcessStats::read())
    }

    fn encode_services(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let Some(table) = &self.services else {
            return Ok(());
        };
        let rows = table.rows();
        gauges(
            encoder,
            "lifecycle_service_state",
            "The lifecycle state of each service the runner manages: 1 for its current state, 0 for the others.",
            None,
            rows.iter().flat_map(|row| {
                let current = row.state();
                State::ALL.into_iter().map(move |s| {
                    (
                        vec![("service", row.name()), ("state", state_label(s))],
                        bit(s == current),
                    )
                })
            }),
        )?;
        gauges(
            encoder,
            "lifecycle_service_start_duration",
            "How long each service took from the call to its start until it was ready.",
            Some(&Unit::Seconds),
            rows.iter().filter_map(|row| {
                let took = row.start_duration()?;
                Some((vec![("service", row.name())], seconds(took)))
            }),
        )?;
        gauges(
            encoder,
            "lifecycle_service_close_duration",
            "How long each service's close took.",
            Some(&Unit::Seconds),
            rows.iter().filter_map(|row| {
                let took = row.close_duration()?;
                Some((vec![("service", row.name())], seconds(took)))
            }),
        )?;
        counters(
            encoder,
            "lifecycle_service_restarts",
            "How many restarts of each service began: after its instance failed or ended (restart_always), along with a service it needs, or cut short by the shutdown (0 for a service never restarted).",
            rows.iter().map(|row| (vec![("service", row.name())], row.restarts())),
        )?;
        let (handed_over, failed) = table.upgrades();
        counters(
            encoder,
            "lifecycle_upgrades",
            "Upgrades of the program in place (SIGHUP, RunHandle::upgrade) in this process, by outcome: handed_over (its new process was ready and serves), failed (it failed to start, exited, or was not ready within the upgrade timeout, and was killed; or it could not begin).",
            [
                (vec![("outcome", "handed_over")], handed_over),
                (vec![("outcome", "failed")], failed),
            ],
        )
    }

    fn encode_producers(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if self.producers.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "lifecycle_metrics_producer_failures",
            "Scrapes in which a metrics producer's samples were missing or partly left out, by reason.",
            None,
            MetricType::Counter,
        )?;
        for p in &self.producers {
            for failure in Failure::ALL {
                let labels: &Labels<'_> = &[("producer", &p.name), ("reason", failure.as_str())];
                ConstCounter::new(p.failures(failure)).encode(metric.encode_family(&labels)?)?;
            }
        }
        gauges(
            encoder,
            "lifecycle_metrics_producer_duration",
            "How long each metrics producer's latest completed call took.",
            Some(&Unit::Seconds),
            self.producers.iter().filter_map(|p| {
                let took = p.last_duration()?;
                Some((vec![("producer", &*p.name)], seconds(took)))
            }),
        )
    }
}

/// The process's resources, as the Prometheus client libraries name and describe them
/// (client_golang's process collector, Python's `ProcessCollector`, the Rust `prometheus`
/// crate's for `process_threads`); a value that could not be read leaves its family out.
fn encode_resources(encoder: &mut DescriptorEncoder<'_>, stats: &ProcessStats) -> fmt::Result {
    if let Some(cpu) = stats.cpu_seconds {
        // A counter of seconds: `process_cpu_seconds_total` in both formats.
        family(
            encoder,
            (
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
            ),
            MetricType::Counter,
            [(Vec::new(), ConstCounter::new(cpu))],
        )?;
    }
    let gauges = [
        (
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            stats.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            stats.max_fds,
        ),
        (
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            stats.virtual_bytes,
        ),
        (
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            stats.resident_bytes,
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            None,
            stats.threads,
        ),
    ];
    for (name, help, unit, value) in gauges {
        // Integers, written as such (`4096`, not `4096.0`).
        let sample = value.map(|v| (Vec::new(), ConstGauge::new(v)));
        family(encoder, (name, help, unit), MetricType::Gauge, sample)?;
    }
    Ok(())
}

fn encode_health(encoder: &mut DescriptorEncoder<'_>, snapshot: &Snapshot) -> fmt::Result {
    let probes = [Probe::Ready, Probe::Health];
    gauges(
        encoder,
        "lifecycle_health_status",
        "Whether the process passes each probe overall (1) or fails it (0): ready is every check's readiness, as /readyz answers; health is every check's health except traffic gates' (/healthz also asks their readiness); live is liveness, as /livez answers (the checker polls and no liveness check's health fails).",
        None,
        probes
            .map(|probe| {
                let verdict = match probe {
                    Probe::Ready => snapshot.is_ready(),
                    Probe::Health => snapshot.is_healthy(),
                };
                (vec![("probe", probe.as_str())], bit(verdict.is_passing()))
            })
            .into_iter()
            .chain([(vec![("probe", "live")], bit(snapshot.is_live().is_passing()))]),
    )?;
    gauges(
        encoder,
        "lifecycle_health_check_status",
        "Whether each check passes each probe (1) or fails it (0), stale results counting as failing.",
        None,
        snapshot.checks().flat_map(|c| {
            probes.map(move |probe| {
                (
                    vec![("check", c.name()), ("probe", probe.as_str())],
                    bit(c.probe(probe).is_passing()),
                )
            })
        }),
    )?;
    gauges(
        encoder,
        "lifecycle_health_check_consecutive_failures",
        "How many polls or reports in a row each check has failed each probe.",
        None,
        snapshot.checks().flat_map(|c| {
            probes.map(move |probe| {
                (
                    vec![("check", c.name()), ("probe", probe.as_str())],
                    f64::from(c.probe(probe).consecutive_failures()),
                )
            })
        }),
    )?;
    gauges(
        encoder,
        "lifecycle_health_check_poll_duration",
        "How long each check's latest poll (ready() then health_report()) took.",
        Some(&Unit::Seconds),
        snapshot.checks().filter_map(|c| {
            let took = c.last_poll_duration()?;
            Some((vec![("check", c.name())], seconds(took)))
        }),
    )?;
    gauges(
        encoder,
        "lifecycle_health_check_stuck",
        "Whether each check's latest call has not returned (1): it is not polled again until it does.",
        None,
        snapshot
            .checks()
            .map(|c| (vec![("check", c.name())], bit(c.is_stuck()))),
    )?;
    gauges(
        encoder,
        "lifecycle_health_stuck_calls",
        "Calls into health checks that have not returned, across all checks.",
        None,
        [(Vec::new(), snapshot.stuck_calls() as f64)],
    )
}

/// The health endpoint's connection counters, from its [`ServerStats`].
fn encode_endpoint(encoder: &mut DescriptorEncoder<'_>, stats: &ServerStats) -> fmt::Result {
    gauges(
        encoder,
        "lifecycle_health_endpoint_connections_open",
        "Connections the health endpoint holds open.",
        None,
        [(Vec::new(), stats.open_connections as f64)],
    )?;
    let totals = [
        (
            "lifecycle_health_endpoint_connections_accepted",
            "Connections the health endpoint accepted, including those it dropped, refused or evicted since.",
            stats.accepted,
        ),
        (
            "lifecycle_health_endpoint_connections_abandoned",
            "Connections closed by their client before the health endpoint accepted them: dropped without taking a slot.",
            stats.abandoned,
        ),
        (
            "lifecycle_health_endpoint_connections_rejected",
            "Connections the health endpoint answered 503 and closed because no connection could make room: every one was busy answering a request.",
            stats.rejected,
        ),
        (
            "lifecycle_health_endpoint_connections_timed_out",
            "Connections the health endpoint closed because a request head, an idle keep-alive or a write took too long.",
            stats.timed_out,
        ),
        (
            "lifecycle_health_endpoint_accept_errors",
            "Failed accepts of the health endpoint (such as EMFILE), each followed by a short pause.",
            stats.accept_errors,
        ),
        (
            "lifecycle_health_endpoint_requests",
            "Requests the health endpoint answered.",
            stats.requests,
        ),
        (
            "lifecycle_health_endpoint_bad_requests",
            "Requests the health endpoint refused without answering them (400, 431, 505, an HTTP/2 preface).",
            stats.bad_requests,
        ),
    ];
    for (name, help, value) in totals {
        counters(encoder, name, help, [(Vec::new(), value)])?;
    }
    counters(
        encoder,
        "lifecycle_health_endpoint_connections_evicted",
        "Connections the health endpoint closed to make room for a newcomer, by what made them evictable: head_less (no complete request head), idle (kept alive, asking nothing), stalled (its client does not read).",
        EvictionReason::ALL.map(|r| (vec![("reason", r.as_str())], stats.evicted(r))),
    )
}

//! Producers: user functions evaluated at scrape time on threads of their own, each within its
//! bound, and the [`Samples`] they fill.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::error::{Error, Result};
use crate::thread::Thread;

/// What a producer function is: it fills [`Samples`] from whatever it measures.
pub(super) type ProduceFn = dyn Fn(&mut Samples) -> Result<()> + Send + Sync + 'static;

/// Why a producer's samples are missing from a scrape (or partly so, for `Invalid`): the label
/// values of `lifecycle_metrics_producer_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// It did not return within its bound.
    Timeout,
    /// Its call from an earlier scrape is still running, so it was not called again.
    Stuck,
    /// It returned an error.
    Error,
    /// It panicked.
    Panic,
    /// Some of its samples had invalid names, labels or values and were left out.
    Invalid,
    /// Its thread could not be spawned.
    Spawn,
}

impl Failure {
    pub(super) const ALL: [Failure; 6] = [
        Failure::Timeout,
        Failure::Stuck,
        Failure::Error,
        Failure::Panic,
        Failure::Invalid,
        Failure::Spawn,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Stuck => "stuck",
            Failure::Error => "error",
            Failure::Panic => "panic",
            Failure::Invalid => "invalid",
            Failure::Spawn => "spawn",
        }
    }
}

/// A registered producer: its function, its bound, its call in progress and its failure counts.
pub(super) struct Producer {
    pub(super) name: Arc<str>,
    pub(super) timeout: Duration,
    produce: Arc<ProduceFn>,
    /// The latest call, until its thread has been joined.
    call: Mutex<Option<Running>>,
    failures: [AtomicU64; Failure::ALL.len()],
    /// The duration of the latest call that returned, in nanoseconds (`u64::MAX`: none yet).
    last_duration_nanos: AtomicU64,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one call of a producer's function came to: its result and its samples, or its panic.
type Produced = thread::Result<(Result<()>, Samples)>;

/// The latest call of a producer: its thread, and whether the function it runs has returned.
///
/// Whether a call is stuck is read from `returned`, never from the thread: a call whose result
/// has been received has returned, though its thread may take a moment longer to exit.
struct Running {
    thread: Thread<Produced>,
    /// Set by the thread as soon as the producer's function has returned (or panicked).
    returned: Arc<AtomicBool>,
}

impl Running {
    /// Whether the producer's function has returned: then joining the thread waits for no
    /// user code, only for the thread to exit.
    fn has_returned(&self) -> bool {
        self.returned.load(Ordering::Acquire)
    }
}

/// One call in progress, started by [`Producer::call`].
pub(super) struct Call {
    producer: Arc<Producer>,
    began: Instant,
    result: Receiver<Produced>,
}

impl Producer {
    pub(super) fn new(name: &str, timeout: Duration, produce: Arc<ProduceFn>) -> Producer {
        Producer {
            name: Arc::from(name),
            timeout,
            produce,
            call: Mutex::new(None),
            failures: Default::default(),
            last_duration_nanos: AtomicU64::new(u64::MAX),
        }
    }

    pub(super) fn failures(&self, failure: Failure) -> u64 {
        self.failures[failure as usize].load(Ordering::Relaxed)
    }

    pub(super) fn last_duration(&self) -> Option<Duration> {
        match self.last_duration_nanos.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    pub(super) fn fail(&self, failure: Failure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a call on a thread `metrics <name>`, unless the previous call has not returned
    /// (then it counts as stuck and `None` is returned).
    pub(super) fn call(self: &Arc<Producer>) -> Option<Call> {
        let mut slot = self.call.lock();
        if let Some(previous) = slot.take() {
            if !previous.has_returned() {
                *slot = Some(previous);
                self.fail(Failure::Stuck);
                crate::relay::warn!(
                    "metrics producer {:?}: its previous call has not returned; not called again",
                    self.name
                );
                return None;
            }
            previous.thread.join();
        }
        let produce = Arc::clone(&self.produce);
        let prefix = Arc::clone(&self.name);
        let returned = Arc::new(AtomicBool::new(false));
        let returning = Arc::clone(&returned);
        let began = Instant::now();
        let spawned = Thread::spawn(format!("metrics {}", self.name), move || {
            let produced = catch_unwind(AssertUnwindSafe(|| {
                let mut samples = Samples::new(&prefix);
                let result = produce(&mut samples);
                (result, samples)
            }));
            // Before the result is sent: whoever receives it finds the call returned.
            returning.store(true, Ordering::Release);
            produced
        });
        match spawned {
            Ok(thread) => {
                let result = thread.receiver().clone();
                *slot = Some(Running { thread, returned });
                Some(Call {
                    producer: Arc::clone(self),
                    began,
                    result,
                })
            }
            Err(e) => {
                self.fail(Failure::Spawn);
                crate::relay::warn!(
                    "metrics producer {:?}: cannot spawn its thread: {e}",
                    self.name
                );
                None
            }
        }
    }

    /// Joins the latest call's thread if its call has returned; returns the name of the
    /// producer if its call has not (it is then left to end on its own).
    pub(super) fn reap(&self) -> Option<Arc<str>> {
        let mut slot = self.call.lock();
        match slot.take() {
            Some(running) if running.has_returned() => {
                running.thread.join();
                None
            }
            Some(running) => {
                *slot = Some(running);
                Some(Arc::clone(&self.name))
            }
            None => None,
        }
    }
}

impl Call {
    /// The producer called.
    pub(super) fn producer(&self) -> &Arc<Producer> {
        &self.producer
    }

    /// Waits for the call until its bound, counted from its start; returns its samples if it
    /// returned successfully in time (keeping its valid samples if some were invalid).
    pub(super) fn finish(self) -> Option<Samples> {
        let p = &self.producer;
        match self.result.recv_deadline(self.began + p.timeout) {
            Ok(Ok((result, samples))) => {
                let took = self.began.elapsed();
                p.last_duration_nanos.store(
                    u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1),
                    Ordering::Relaxed,
                );
                if let Err(e) = result {
                    p.fail(Failure::Error);
                    crate::relay::warn!("metrics producer {:?} failed: {e}", p.name);
                    return None;
                }
                if let Some(first) = &samples.invalid {
                    p.fail(Failure::Invalid);
                    crate::relay::warn!(
                        "metrics producer {:?}: samples left out ({}): first: {first}",
                        p.name,
                        samples.invalid_count
                    );
                }
                Some(samples)
            }
            Ok(Err(payload)) => {
                p.fail(Failure::Panic);
                let e = Error::panicked(&p.name, crate::error::Phase::Run, &*payload);
                crate::relay::warn!("metrics producer: {e}");
                None
            }
            Err(RecvTimeoutError::Timeout) => {
                p.fail(Failure::Timeout);
                crate::relay::warn!(
                    "metrics producer {:?} did not return within {:?}; its samples are left out",
                    p.name,
                    p.timeout
                );
                None
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The thread ended without sending: only a panic in the send itself could.
                p.fail(Failure::Panic);
                None
            }
        }
    }
}

/// The samples a producer adds to one scrape: gauges and counters, with or without labels.
///
/// Every family's name is prefixed with the producer's name and `_`: a producer `queue` that adds
/// a gauge `depth` exposes `queue_depth`. A family is described by the `help` of its first
/// sample. Invalid input is left out of the scrape (and counted in
/// `lifecycle_metrics_producer_failures_total{reason="invalid"}`), never written out broken: a
/// name or label name that is not `[a-zA-Z_][a-zA-Z0-9_]*`, a name reused with another type, a
/// negative or NaN counter. A label set given twice in one family keeps its last value.
///
/// ```
/// use std::time::Duration;
/// use lifecycle::metrics::Metrics;
///
/// let metrics = Metrics::new();
/// metrics.add_producer("queue", Duration::from_millis(100), |out| {
///     out.gauge("depth", "Jobs waiting.", 12.0);
///     out.gauge_with("depth_by_priority", "Jobs waiting, by priority.", &[("priority", "high")], 3.0);
///     out.counter("dropped", "Jobs dropped since start.", 7.0);
///     Ok(())
/// })?;
/// let text = metrics.encode(lifecycle::metrics::Format::Prometheus);
/// assert!(text.contains("\nqueue_depth 12\n") || text.contains("\nqueue_depth 12.0\n"));
/// assert!(text.contains("queue_depth_by_priority{priority=\"high\"}"));
/// assert!(text.contains("queue_dropped_total 7"));
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct Samples {
    prefix: Arc<str>,
    families: BTreeMap<String, Family>,
    invalid: Option<String>,
    invalid_count: usize,
}

struct Family {
    help: String,
    counter: bool,
    samples: BTreeMap<Vec<(String, String)>, f64>,
}

impl fmt::Debug for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Samples")
            .field("prefix", &self.prefix)
            .field("families", &self.families.keys().collect::<Vec<_>>())
            .field("invalid", &self.invalid_count)
            .finish()
    }
}

impl Samples {
    fn new(prefix: &Arc<str>) -> Samples {
        Samples {
            prefix: Arc::clone(prefix),
            families: BTreeMap::new(),
            invalid: None,
            invalid_count: 0,
        }
    }

    /// Adds a gauge sample without labels: `<producer>_<name> value`.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Samples {
        self.add(false, name, help, &[], value)
    }

    /// Adds a gauge sample with labels: `<producer>_<name>{k="v",...} value`.
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Samples {
        self.add(false, name, help, labels, value)
    }

    /// Adds a counter sample without labels: `<producer>_<name>_total value`. `name` is given
    /// without `_total`; `value` must be finite and not negative.
    pub fn counter(&mut self, name: &str, help: &str, value: f64) -> &mut Samples {
        self.add(true, name, help, &[], value)
    }

    /// Adds a counter sample with labels (see [`counter`](Samples::counter)).
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Samples {
        self.add(true, name, help, labels, value)
    }

    fn add(
        &mut self,
        counter: bool,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Samples {
        if let Err(why) = self.try_add(counter, name, help, labels, value) {
            self.invalid_count += 1;
            self.invalid.get_or_insert(why);
        }
        self
    }

    fn try_add(
        &mut self,
        counter: bool,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> std::result::Result<(), String> {
        if !is_name(name) {
            return Err(format!("invalid metric name {name:?}"));
        }
        if counter && name.ends_with("_total") {
            return Err(format!("counter {name:?}: give its name without `_total`"));
        }
        if counter && !(value.is_finite() && value >= 0.0) {
            return Err(format!("counter {name:?}: invalid value {value}"));
        }
        let mut set = Vec::with_capacity(labels.len());
        for &(k, v) in labels {
            if !is_name(k) || k.starts_with("__") {
                return Err(format!("{name:?}: invalid label name {k:?}"));
            }
            if set.iter().any(|(seen, _): &(String, String)| seen == k) {
                return Err(format!("{name:?}: label {k:?} given twice"));
            }
            set.push((k.to_owned(), v.to_owned()));
        }
        set.sort();
        let full = format!("{}_{name}", self.prefix);
        let family = self.families.entry(full).or_insert_with(|| Family {
            help: escape_help(help),
            counter,
            samples: BTreeMap::new(),
        });
        if family.counter != counter {
            return Err(format!("{name:?} used both as a gauge and as a counter"));
        }
        family.samples.insert(set, value);
        Ok(())
    }

    /// Leaves out the families that would expose a name in `taken`, adding the names of the
    /// others to it; returns the names of the families left out.
    pub(super) fn retain_unique(&mut self, taken: &mut HashSet<String>) -> Vec<String> {
        let mut dropped = Vec::new();
        self.families.retain(|name, family| {
            let names = super::occupied(name, if family.counter { "counter" } else { "gauge" });
            if names.iter().any(|n| taken.contains(n)) {
                dropped.push(name.clone());
                false
            } else {
                taken.extend(names);
                true
            }
        });
        dropped
    }

    /// Writes the families through `prometheus-client`'s encoder.
    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        for (name, family) in &self.families {
            let typ = if family.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, typ)?;
            if let Some((labels, &value)) = family.samples.iter().next() {
                if labels.is_empty() && family.samples.len() == 1 {
                    // `name v` rather than `name{} v` (which is valid, but unusual).
                    if family.counter {
                        ConstCounter::new(value).encode(metric)?;
                    } else {
                        ConstGauge::new(value).encode(metric)?;
                    }
                    continue;
                }
            }
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                if family.counter {
                    ConstCounter::new(*value).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether `s` is a valid metric or label name without colons: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(super) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Escapes a help text for OpenMetrics (`\\`, `\n`, `\"`): prometheus-client writes help as is.
pub(super) fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Samples {
        Samples::new(&Arc::from("p"))
    }

    #[test]
    fn names_are_checked() {
        assert!(is_name("a_b9") && is_name("_x") && !is_name("9a") && !is_name("a-b"));
        assert!(!is_name("") && !is_name("a:b") && !is_name("é"));
    }

    #[test]
    fn invalid_samples_are_left_out_and_counted() {
        let mut s = samples();
        s.gauge("ok", "fine", 1.0)
            .gauge("bad-name", "x", 1.0)
            .counter("c", "x", -1.0)
            .counter("c_total", "x", 1.0)
            .counter("ok", "type clash", 1.0)
            .gauge_with("l", "x", &[("__reserved", "v")], 1.0)
            .gauge_with("l", "x", &[("a", "1"), ("a", "2")], 1.0)
            .counter("nan", "x", f64::NAN);
        assert_eq!(s.invalid_count, 7);
        assert!(s.invalid.as_deref().unwrap().contains("bad-name"));
        assert_eq!(s.families.keys().collect::<Vec<_>>(), ["p_ok"]);
        assert_eq!(s.families["p_ok"].samples.len(), 1);
    }

    #[test]
    fn a_label_set_given_twice_keeps_the_last_value() {
        let mut s = samples();
        s.gauge_with("g", "h", &[("b", "1"), ("a", "2")], 1.0)
            .gauge_with("g", "h", &[("a", "2"), ("b", "1")], 5.0);
        let family = &s.families["p_g"];
        assert_eq!(family.samples.len(), 1);
        assert_eq!(family.samples.values().next(), Some(&5.0));
    }

    #[test]
    fn an_instant_producer_called_back_to_back_is_never_stuck() {
        let produce: Arc<ProduceFn> = Arc::new(|out: &mut Samples| {
            out.gauge("size", "Connections.", 4.0);
            Ok(())
        });
        let p = Arc::new(Producer::new("instant", Duration::from_secs(30), produce));
        for i in 0..1000 {
            // Right after its result is received, its thread may not have exited yet: the call
            // has returned all the same, so the next one is made.
            let call = p.call().unwrap_or_else(|| panic!("call {i} was not made"));
            let samples = call.finish().expect("its samples");
            assert_eq!(
                samples.families.keys().collect::<Vec<_>>(),
                ["instant_size"]
            );
        }
        assert_eq!(p.failures(Failure::Stuck), 0);
        assert_eq!(p.reap(), None);
    }

    #[test]
    fn help_is_escaped() {
        assert_eq!(escape_help("a \"b\" \\ c\nd"), "a \\\"b\\\" \\\\ c\\nd");
    }
}

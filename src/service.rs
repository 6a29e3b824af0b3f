//! The [`Service`] and [`HealthReporter`] traits, and the [`HealthReport`] they produce.

use std::any::Any;
use std::collections::btree_map::{self, BTreeMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{flatten_call, Error, Phase, Result};
use crate::stop::StartContext;

/// Something that can say whether it is ready and healthy.
///
/// Every [`Service`] is a `HealthReporter`; a reporter need not be a service (a dependency probe
/// can report health without being started or closed).
///
/// Implementations must be cheap and must not block for long: a health checker calls them
/// periodically and treats a call that does not return in time as a failure.
pub trait HealthReporter: Send + Sync {
    /// The component's name, unique among the services of a program. It names the component in
    /// every error, log line, health report and metric.
    ///
    /// A name must not be empty nor hold control characters: the [`Runner`](crate::Runner),
    /// [`MultiStart`](crate::MultiStart) and the [`HealthChecker`](crate::HealthChecker) refuse
    /// such a name, and a second component of a name they already hold, with an error of kind
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) or
    /// [`DuplicateName`](crate::ErrorKind::DuplicateName).
    fn name(&self) -> &str;

    /// `Ok` once the component is initialised and can take work (Kubernetes' *ready*).
    ///
    /// # Errors
    ///
    /// Why it is not ready.
    fn ready(&self) -> Result<()>;

    /// The health of the component and of its parts: its own [`name`](HealthReporter::name) and
    /// each sub-component's name, each mapped to `Ok` or the reason it is unhealthy. Merge a
    /// sub-service's report into your own with [`HealthReport::merge`].
    ///
    /// The default reports the component alone, with the status of [`ready`](HealthReporter::ready).
    fn health_report(&self) -> HealthReport {
        HealthReport::single(self.name(), self.ready())
    }
}

/// A long-running part of a program, started once and closed once.
///
/// Used as `Arc<dyn Service>`. Typically a service embeds a [`StateMachine`](crate::StateMachine)
/// so that its start and close run exactly once; a service that runs a loop spawns a named
/// thread in `start` and joins it in `close` (see [`StopSignal`](crate::StopSignal) for the
/// canonical shape).
///
/// The [`Runner`](crate::Runner) calls `start` and `close` on threads it reuses from call to
/// call (named after the call on Linux, `start db`, as the system shows them; the standard
/// library's [`std::thread::current`] name is the pool's): a service keeps nothing in a
/// thread-local from its start to its close, nor expects a fresh thread.
pub trait Service: HealthReporter {
    /// Starts the service and returns once it is started.
    ///
    /// - Must return promptly once `ctx` is cancelled (a shutdown was requested or the start
    ///   deadline passed), with the error [`StartContext::check`] gives.
    /// - Cannot keep `ctx` after returning; work that outlives the start waits on a
    ///   [`StopSignal`](crate::StopSignal) of its own.
    /// - A service whose start fails cleans up what it started itself: it will not be closed.
    ///
    /// # Errors
    ///
    /// Why the service could not start.
    fn start(&self, ctx: &StartContext) -> Result<()>;

    /// Closes the service, waiting until its threads have ended and its resources are released.
    ///
    /// After `close` the service is not started again: build a new one.
    ///
    /// # Errors
    ///
    /// Why the service could not close cleanly. It is still considered closed.
    fn close(&self) -> Result<()>;
}

/// The health of a component and its parts: names mapped to `Ok` or the reason for failing.
///
/// Names are kept sorted, so reports print the same way every time.
///
/// ```
/// use lifecycle::{Error, HealthReport};
///
/// let mut report = HealthReport::single("app", Ok(()));
/// let mut db = HealthReport::single("app.db", Ok(()));
/// db.insert("app.db.pool", Err(Error::msg("no connections")));
/// report.merge(db);
///
/// assert!(!report.is_healthy());
/// let failing: Vec<_> = report.failures().map(|(name, _)| name).collect();
/// assert_eq!(failing, ["app.db.pool"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct HealthReport {
    checks: BTreeMap<String, Result<()>>,
}

impl HealthReport {
    /// An empty report.
    pub fn new() -> HealthReport {
        HealthReport::default()
    }

    /// A report of one component.
    pub fn single(name: impl Into<String>, status: Result<()>) -> HealthReport {
        let mut report = HealthReport::new();
        report.insert(name, status);
        report
    }

    /// Records the status of `name`. If `name` is already there, the two statuses combine: the
    /// result fails if either fails, keeping both errors.
    pub fn insert(&mut self, name: impl Into<String>, status: Result<()>) {
        match self.checks.entry(name.into()) {
            btree_map::Entry::Vacant(v) => {
                v.insert(status);
            }
            btree_map::Entry::Occupied(mut o) => {
                let combined = match (o.get().clone(), status) {
                    (Ok(()), s) | (s, Ok(())) => s,
                    (Err(a), Err(b)) => Err(Error::join([a, b]).expect("two errors")),
                };
                *o.get_mut() = combined;
            }
        }
    }

    /// Copies every entry of `other` (a sub-service's report) into this report; a name present
    /// in both combines as in [`insert`](HealthReport::insert).
    pub fn merge(&mut self, other: HealthReport) {
        for (name, status) in other.checks {
            self.insert(name, status);
        }
    }

    /// The status recorded for `name`.
    pub fn get(&self, name: &str) -> Option<&Result<()>> {
        self.checks.get(name)
    }

    /// Whether every entry is `Ok` (an empty report is healthy).
    pub fn is_healthy(&self) -> bool {
        self.checks.values().all(Result::is_ok)
    }

    /// The failing entries, in name order.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.checks
            .iter()
            .filter_map(|(n, s)| s.as_ref().err().map(|e| (n.as_str(), e)))
    }

    /// Every entry, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Result<()>)> {
        self.checks.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// How many entries the report has.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether the report has no entries.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

impl IntoIterator for HealthReport {
    type Item = (String, Result<()>);
    type IntoIter = btree_map::IntoIter<String, Result<()>>;
    fn into_iter(self) -> Self::IntoIter {
        self.checks.into_iter()
    }
}

impl<N: Into<String>> FromIterator<(N, Result<()>)> for HealthReport {
    fn from_iter<I: IntoIterator<Item = (N, Result<()>)>>(iter: I) -> HealthReport {
        let mut report = HealthReport::new();
        report.extend(iter);
        report
    }
}

impl<N: Into<String>> Extend<(N, Result<()>)> for HealthReport {
    fn extend<I: IntoIterator<Item = (N, Result<()>)>>(&mut self, iter: I) {
        for (name, status) in iter {
            self.insert(name, status);
        }
    }
}

/// A shared component reports as the component itself.
impl<T: HealthReporter + ?Sized> HealthReporter for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn ready(&self) -> Result<()> {
        (**self).ready()
    }
    fn health_report(&self) -> HealthReport {
        (**self).health_report()
    }
}

/// A shared service starts and closes as the service itself, so that `Arc<MyService>` (kept to
/// be used by others) and `Arc<dyn Service>` can be given wherever a service is taken.
impl<T: Service + ?Sized> Service for Arc<T> {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        (**self).start(ctx)
    }
    fn close(&self) -> Result<()> {
        (**self).close()
    }
}

/// `service` as the shared trait object the crate keeps: an `Arc<dyn Service>` as it is (not
/// wrapped in a second `Arc`), anything else in a new `Arc`.
pub(crate) fn share<S: Service + 'static>(service: S) -> Arc<dyn Service> {
    let mut slot = Some(service);
    // A comparison of type ids, decided at compile time for each `S`.
    if let Some(shared) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Arc<dyn Service>>>() {
        if let Some(shared) = shared.take() {
            return shared;
        }
    }
    Arc::new(slot.expect("not taken: `S` is not `Arc<dyn Service>`"))
}

/// `services` as the shared trait objects the crate keeps (see [`share`]).
pub(crate) fn shared<S: Service + 'static>(
    services: impl IntoIterator<Item = S>,
) -> Vec<Arc<dyn Service>> {
    services.into_iter().map(share).collect()
}

/// What a start that waits for readiness ([`start_until_ready`]) came to.
#[derive(Debug)]
pub(crate) struct StartOutcome {
    /// Whether `start` returned `Ok` (the service then needs closing, ready or not).
    pub(crate) started: bool,
    pub(crate) result: Result<()>,
}

/// Starts `service`, then waits until it is ready, the context's deadline passes, or the start
/// is cancelled; `ready()` is polled with a backoff from 100 µs to 50 ms.
///
/// A start whose deadline passes fails with an error of kind
/// [`TimedOut`](crate::ErrorKind::TimedOut) that carries the last readiness error.
pub(crate) fn start_until_ready(service: &dyn Service, ctx: &StartContext) -> StartOutcome {
    let name = service.name();
    if let Err(e) = ctx.check(name).and_then(|()| start_guarded(service, ctx)) {
        return StartOutcome {
            started: false,
            result: Err(e),
        };
    }
    let mut backoff = Duration::from_micros(100);
    loop {
        let last = match ready_guarded(service) {
            Ok(()) => {
                return StartOutcome {
                    started: true,
                    result: Ok(()),
                }
            }
            Err(e) => e,
        };
        if ctx.wait_timeout(backoff) {
            return StartOutcome {
                started: true,
                result: Err(ctx.gave_up(name, last)),
            };
        }
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// Calls `service.start(ctx)`, turning a panic into an error and naming the service and phase in
/// any error.
pub(crate) fn start_guarded(service: &dyn Service, ctx: &StartContext) -> Result<()> {
    let outcome = catch_unwind(AssertUnwindSafe(|| service.start(ctx)));
    flatten_call(service.name(), Phase::Start, outcome)
}

/// Calls `service.close()`, turning a panic into an error and naming the service and phase in
/// any error.
pub(crate) fn close_guarded(service: &dyn Service) -> Result<()> {
    let outcome = catch_unwind(AssertUnwindSafe(|| service.close()));
    flatten_call(service.name(), Phase::Close, outcome)
}

/// Calls `service.ready()`, turning a panic into an error and naming the service and phase in
/// any error.
pub(crate) fn ready_guarded(service: &dyn HealthReporter) -> Result<()> {
    let outcome = catch_unwind(AssertUnwindSafe(|| service.ready()));
    flatten_call(service.name(), Phase::Ready, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl HealthReporter for Nothing {
        fn name(&self) -> &str {
            "nothing"
        }
        fn ready(&self) -> Result<()> {
            Ok(())
        }
    }
    impl Service for Nothing {
        fn start(&self, _: &StartContext) -> Result<()> {
            Ok(())
        }
        fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_shared_service_is_not_wrapped_again() {
        let shared: Arc<dyn Service> = Arc::new(Nothing);
        let kept = share(shared.clone());
        assert!(Arc::ptr_eq(&shared, &kept));
        let owned = share(Nothing);
        assert_eq!(owned.name(), "nothing");
    }

    #[test]
    fn duplicate_names_join_errors() {
        let mut r = HealthReport::single("x", Err(Error::msg("a")));
        r.insert("x", Ok(()));
        r.insert("x", Err(Error::msg("b")));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.get("x").unwrap().as_ref().unwrap_err().to_string(),
            "a; b"
        );
    }

    #[test]
    fn collects_and_reports_in_name_order() {
        let r: HealthReport = [("b", Ok(())), ("a", Err(Error::msg("down")))]
            .into_iter()
            .collect();
        let names: Vec<_> = r.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!r.is_healthy());
        assert!(HealthReport::new().is_healthy());
    }

    struct Probe;
    impl HealthReporter for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn ready(&self) -> Result<()> {
            Err(Error::msg("warming up"))
        }
    }

    #[test]
    fn default_health_report_uses_ready() {
        let r = Probe.health_report();
        assert_eq!(r.len(), 1);
        assert!(r.get("probe").unwrap().is_err());
    }
}

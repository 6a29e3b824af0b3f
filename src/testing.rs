//! A test harness for tests that need several services up at once: [`Harness`] starts them,
//! waits until every one is ready, watches their health while the test runs, and closes them
//! at the end of the scope, also when the test panics.
//!
//! ```
//! use std::time::Duration;
//! use lifecycle::testing::Harness;
//! use lifecycle::Worker;
//!
//! let queue = Worker::new("queue", |stop| { stop.wait(); Ok(()) });
//! let consumer = Worker::new("consumer", |stop| {
//!     while !stop.wait_timeout(Duration::from_millis(5)) { /* consume */ }
//!     Ok(())
//! });
//! let harness = Harness::start([queue, consumer])?; // both ready and healthy
//! // ... the test body ...
//! harness.check()?; // nothing turned unhealthy so far
//! harness.close()?; // also on drop, which panics if anything failed
//! # Ok::<(), lifecycle::Error>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::checker::{HealthChecker, HealthEvent, Snapshot, Status};
use crate::error::{Error, Phase, Result};
use crate::multi::check_names;
use crate::service::{close_guarded, shared, start_until_ready, Service, StartOutcome};
use crate::stop::{StartContext, StopSignal};
use crate::thread::{call_within, later, Called, Thread};

/// Services started for a test: ready and healthy when [`start`](Harness::start) returns,
/// watched while the test runs, closed in reverse by [`close`](Harness::close) or on drop.
///
/// What fails the test (the error of `close`, or a panic when the harness is dropped):
/// - a service that turns unready or unhealthy while it runs (its health is polled every
///   10 ms by a [`HealthChecker`] of the harness's own, from the moment every service is
///   healthy until the close begins);
/// - a start (until ready) or a close slower than the [`slow_after`](HarnessBuilder::slow_after)
///   bound;
/// - a close that fails, panics, or does not return within the
///   [`close_timeout`](HarnessBuilder::close_timeout) (its thread is then left running, and
///   named in the error).
///
/// [`start`](Harness::start) itself fails, after closing what it started, when a name is
/// invalid or taken twice, or when a service does not start, does not become ready within the
/// [`ready_timeout`](HarnessBuilder::ready_timeout) (the error names it and its last readiness
/// error), or is not healthy once all are ready.
///
/// Nothing leaks: every service the harness started is closed, every thread of the harness is
/// joined, and its checker is closed before the services are, so their closing is not taken for
/// a failure.
pub struct Harness {
    checker: Arc<HealthChecker>,
    events: Receiver<HealthEvent>,
    /// In start order; emptied by the close.
    services: Vec<Arc<dyn Service>>,
    options: HarnessBuilder,
    /// What has failed so far, in order, and whether the close has run.
    failures: Mutex<(Vec<Error>, bool)>,
    /// Set once every service is healthy: a change from then on is a failure.
    watching: AtomicBool,
}

/// Settings of a [`Harness`]; every one has a default.
#[derive(Debug, Clone)]
#[must_use]
pub struct HarnessBuilder {
    ready_timeout: Duration,
    slow_after: Duration,
    close_timeout: Duration,
    poll_interval: Duration,
}

impl Default for HarnessBuilder {
    fn default() -> HarnessBuilder {
        HarnessBuilder {
            ready_timeout: Duration::from_secs(10),
            slow_after: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
        }
    }
}

impl HarnessBuilder {
    /// How long each service may take to start and become ready (default 10 s). A start that
    /// ignores its cancellation is waited for at most the close timeout more, then abandoned.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// A start (until ready) or a close that takes longer than this is reported as a failure
    /// (default 5 s): a test suite whose services slow down notices.
    pub fn slow_after(mut self, bound: Duration) -> Self {
        self.slow_after = bound;
        self
    }

    /// How long each service's close may take before it is abandoned (default 10 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How often the harness polls the services' health (default 10 ms; at least 1 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Starts `services` in order, each once the previous one is ready, then waits until every
    /// one is healthy too; see [`Harness`].
    ///
    /// # Errors
    ///
    /// The first failure, joined with any error closing the services started before it; see
    /// [`Harness`]. A service that does not start, is not ready in time, or is not healthy
    /// once all are ready is named in it.
    pub fn start<I, S>(self, services: I) -> Result<Harness>
    where
        I: IntoIterator<Item = S>,
        S: Service + 'static,
    {
        let services = shared(services);
        check_names([], services.iter().map(|s| s.name()))?;
        let checker = Arc::new(
            HealthChecker::builder("test", "test")
                .interval(self.poll_interval)
                // A loaded machine must not turn a poll into a failure.
                .timeout(self.ready_timeout)
                .build(),
        );
        let mut harness = Harness {
            events: checker.subscribe(),
            checker,
            services: Vec::with_capacity(services.len()),
            options: self,
            failures: Mutex::new((Vec::new(), false)),
            watching: AtomicBool::new(false),
        };
        for service in services {
            harness.start_one(service)?;
        }
        harness.watch()?;
        Ok(harness)
    }
}

impl Harness {
    /// Starts `services` with the default settings; see [`Harness`] and
    /// [`HarnessBuilder::start`].
    ///
    /// # Errors
    ///
    /// As [`HarnessBuilder::start`].
    pub fn start<I, S>(services: I) -> Result<Harness>
    where
        I: IntoIterator<Item = S>,
        S: Service + 'static,
    {
        Harness::builder().start(services)
    }

    /// The settings, to change the defaults.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }

    /// The checker that watches the services: read its [`snapshot`](HealthChecker::snapshot),
    /// or wait for its next poll of every service with
    /// [`wait_for_poll`](HealthChecker::wait_for_poll).
    pub fn checker(&self) -> &HealthChecker {
        &self.checker
    }

    /// Waits for the next completed poll of every service, then says whether anything has
    /// failed so far.
    ///
    /// # Errors
    ///
    /// Every failure so far (see [`Harness`]), joined; or the poll's own error.
    pub fn check(&self) -> Result<()> {
        self.checker.wait_for_poll(self.poll_bound())?;
        self.record_events();
        Error::join(self.failures.lock().0.iter().cloned()).map_or(Ok(()), Err)
    }

    /// Closes every service, in reverse order of start, each within the close timeout, after
    /// the harness's checker; returns every failure of the harness's life.
    ///
    /// # Errors
    ///
    /// Every failure (see [`Harness`]), joined, in the order they happened.
    pub fn close(mut self) -> Result<()> {
        self.close_all()
    }

    fn close_all(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.failures.lock().1, true) {
            return Ok(());
        }
        // The checker first: the services' closing is not a failure.
        self.record_events();
        if let Err(e) = self.checker.close() {
            self.fail(e);
        }
        while let Some(service) = self.services.pop() {
            self.close_one(service);
        }
        let failures = std::mem::take(&mut self.failures.lock().0);
        Error::join(failures).map_or(Ok(()), Err)
    }

    fn fail(&self, e: Error) {
        crate::relay::error!("test harness: {e}");
        self.failures.lock().0.push(e);
    }

    fn slow(&self, name: &str, phase: Phase, took: Duration) {
        let bound = self.options.slow_after;
        if took > bound {
            let e = Error::msg(format!("took {took:?}, more than the bound of {bound:?}"));
            self.fail(e.in_service(name, phase));
        }
    }

    /// Starts one service until it is ready, on a thread of its own so that a start that
    /// ignores its cancellation cannot hang the test; closes everything on failure.
    fn start_one(&mut self, service: Arc<dyn Service>) -> Result<()> {
        let name = service.name().to_owned();
        let ctx = StartContext::new(StopSignal::new(), Some(self.options.ready_timeout));
        let began = Instant::now();
        let starting = Arc::clone(&service);
        let thread = Thread::spawn(format!("start {name}"), move || {
            start_until_ready(&*starting, &ctx)
        })
        .map_err(|e| Error::from(e).in_service(&name, Phase::Start))?;
        let deadline = later(
            later(began, self.options.ready_timeout),
            self.options.close_timeout,
        );
        let outcome = match thread.join_until(deadline) {
            Ok(Some(outcome)) => outcome,
            Ok(None) => StartOutcome {
                started: false,
                result: Err(Error::msg("its thread ended without a result")),
            },
            Err(thread) => {
                let after = deadline.saturating_duration_since(began);
                let note = format!("thread {:?} is left running", thread.name());
                drop(thread.abandon());
                StartOutcome {
                    started: false,
                    result: Err(Error::timed_out_noting(&name, Phase::Start, after, note)),
                }
            }
        };
        if outcome.started {
            self.services.push(service);
        }
        match outcome.result {
            Ok(()) => {
                self.slow(&name, Phase::Start, began.elapsed());
                Ok(())
            }
            Err(e) => Err(self.roll_back(e.in_service(&name, Phase::Start))),
        }
    }

    /// Closes what was started, returning `reason` joined with whatever else failed.
    fn roll_back(&mut self, reason: Error) -> Error {
        let failures = self.close_all().err();
        Error::join([reason].into_iter().chain(failures)).expect("one error at least")
    }

    /// Registers every service with the checker, starts it, and waits until every one is
    /// healthy; failures from then on are recorded.
    fn watch(&mut self) -> Result<()> {
        let registered = self.services.iter().try_for_each(|s| {
            let name = s.name().to_owned();
            self.checker
                .register(Arc::clone(s))
                .map(drop)
                .map_err(|e| e.in_service(&name, Phase::Start))
        });
        let watching = registered
            .and_then(|()| self.checker.start(&StartContext::background()))
            .and_then(|()| self.wait_healthy());
        match watching {
            Ok(()) => Ok(()),
            Err(e) => Err(self.roll_back(e)),
        }
    }

    /// How long the next completed poll of every service may take: a call in progress when the
    /// wait begins, then a whole new poll, each within the checker's timeout.
    fn poll_bound(&self) -> Duration {
        let timeout = self.options.ready_timeout;
        timeout
            .saturating_mul(2)
            .saturating_add(self.options.poll_interval)
    }

    /// Waits until every service is ready and healthy, at most the ready timeout; then a change
    /// is a failure. A service still unready or unhealthy then is the error.
    fn wait_healthy(&self) -> Result<()> {
        let deadline = later(Instant::now(), self.options.ready_timeout);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let snapshot = match self.checker.wait_for_poll(remaining) {
                Ok(snapshot) => snapshot,
                // What the services said last is the answer, not the wait's timeout.
                Err(e) if e.is_timeout() => self.checker.snapshot(),
                Err(e) => return Err(e),
            };
            let verdict = healthy(&snapshot);
            if verdict.is_ok() {
                // From here on, a change is a failure: drop what was seen on the way.
                while self.events.try_recv().is_ok() {}
                self.watching.store(true, Ordering::SeqCst);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return verdict;
            }
        }
    }

    /// Records every failing change of status seen since the last call, once watching.
    fn record_events(&self) {
        let watching = self.watching.load(Ordering::SeqCst);
        for event in self.events.try_iter().filter(|_| watching) {
            if event.new_status() == Status::Failing {
                let e = Error::msg(format!("turned unhealthy while the test ran: {event}"));
                self.fail(e.in_service(event.check(), event.probe().phase()));
            }
        }
    }

    fn close_one(&self, service: Arc<dyn Service>) {
        let name = service.name().to_owned();
        let began = Instant::now();
        let bound = self.options.close_timeout;
        match call_within(&name, Phase::Close, bound, move || close_guarded(&*service)) {
            Called::Returned(Ok(())) => self.slow(&name, Phase::Close, began.elapsed()),
            Called::Returned(Err(e)) | Called::Failed(e) => self.fail(e),
            // The thread ends by itself when the close returns; the test is failed meanwhile.
            Called::Stuck(thread, e) => {
                drop(thread);
                self.fail(e);
            }
        }
    }
}

/// `Ok` when every check of `snapshot` is ready and healthy.
fn healthy(snapshot: &Snapshot) -> Result<()> {
    let failures = [snapshot.is_ready(), snapshot.is_healthy()]
        .into_iter()
        .filter_map(|v| v.into_result().err());
    Error::join(failures).map_or(Ok(()), Err)
}

impl Drop for Harness {
    /// Closes the services if [`close`](Harness::close) was not called, and panics with every
    /// failure, unless the thread is panicking already: that fails the test.
    fn drop(&mut self) {
        if let Err(e) = self.close_all() {
            if std::thread::panicking() {
                crate::relay::error!("test harness, while the test panicked: {e}");
            } else {
                panic!("test harness: {e:#}");
            }
        }
    }
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.services.iter().map(|s| s.name()).collect();
        f.debug_struct("Harness")
            .field("services", &names)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

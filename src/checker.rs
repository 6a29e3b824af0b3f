//! [`HealthChecker`]: polls every registered [`HealthReporter`] in the background and answers
//! readiness and health questions at once, from a cache.
//!
//! # Anatomy
//!
//! - `checker.rs` (this file): the public handle.
//! - `checker/reporter.rs`: the push [`Reporter`].
//! - `checker/poller.rs`: the `"health checker"` thread's loop.
//! - `checker/options.rs`: [`HealthCheckerBuilder`] and [`CheckOptions`], with their defaults.
//! - `checker/registry.rs`: the registry of checks and every change to it, under one lock that is
//!   never held across user code.
//! - `checker/worker.rs`: the calls into user code. A poll of a check is a call `"health <name>"`
//!   on a thread of the checker's [pool](crate::pool) (threads reused, the pool growing past a
//!   call that hangs); the `"health checker"` poller only hands calls over, waits with deadlines
//!   and records results.
//! - `checker/snapshot.rs`: what readers see, an immutable [`Snapshot`] behind an `Arc` that is
//!   swapped whole after every change.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod event;
mod options;
mod poller;
mod registry;
mod reporter;
mod snapshot;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

use crate::error::{check_name, Error, ErrorKind, Phase, Result};
use crate::pool::CallPool;
use crate::service::{HealthReporter, Service};
use crate::state::{State, StateMachine};
use crate::stop::{StartContext, StopSignal};

use self::options::Config;
use self::registry::{Entry, LogLine, Orphan, Registry};
use self::snapshot::{CheckData, Published};
use self::worker::{join_until, PollResult, Worker};
use crate::thread::later;
use crate::thread::Thread;

pub use self::event::HealthEvent;
pub use self::options::{CheckOptions, HealthCheckerBuilder};
use self::options::{
    DEFAULT_CLOSE_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_INTERVAL, DEFAULT_TIMEOUT,
};
pub use self::reporter::Reporter;
pub use self::snapshot::{Check, Probe, ProbeStatus, Snapshot, Status, Verdict};

/// The checker's own name, as a [`HealthReporter`] and in errors. Also its poller thread's name.
pub(crate) const CHECKER_NAME: &str = "health checker";

fn not_registered(name: &str) -> Error {
    Error::registration(ErrorKind::NotRegistered, name)
}

fn write_log(lines: Vec<LogLine>) {
    for (level, line) in lines {
        crate::relay::log_at!(level, "{line}");
    }
}

/// What the handle, the poller thread and the push [`Reporter`]s share.
struct Shared {
    config: Config,
    version: Arc<str>,
    sha: Arc<str>,
    registry: Mutex<Registry>,
    /// Readers clone the `Arc`; writers swap it whole. Written only with `registry` held.
    published: RwLock<Arc<Published>>,
    results: Sender<PollResult>,
    wake: Sender<()>,
    next_id: AtomicU64,
}

impl Shared {
    /// Publishes what the registry now holds, then sends its pending events. Call with the
    /// registry locked; write the log it returns once the lock is released.
    fn commit(&self, reg: &mut Registry) -> Vec<LogLine> {
        let published = Arc::new(reg.published(&self.version, &self.sha));
        let old = std::mem::replace(&mut *self.published.write(), published);
        // Dropped after the write lock is released: readers wait for a pointer swap only.
        drop(old);
        reg.send_pending();
        reg.wake_watchers();
        reg.take_log()
    }

    /// Wakes the poller to look at the registry again. Never blocks.
    fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    fn push(&self, name: &str, id: Option<u64>, probe: Probe, status: Result<()>) -> Result<()> {
        let lines = {
            let mut reg = self.registry.lock();
            reg.push(name, id, probe, status)?;
            self.commit(&mut reg)
        };
        write_log(lines);
        Ok(())
    }
}

/// Watches the health of the program's services and answers Kubernetes-style probes from a
/// cache.
///
/// Itself a [`Service`]: `start` spawns its poller thread, `close` ends and joins its threads.
/// Checks can be registered and unregistered at any time, before or after the start.
///
/// # How it polls
///
/// Every [`interval`](HealthCheckerBuilder::interval), each check's `ready()` and
/// `health_report()` are called on a thread of the checker's own, named `"health <name>"` while
/// it makes the call (the threads are reused from poll to poll and check to check, and a call
/// that hangs keeps its thread while the others are served by the rest), never on the poller and
/// never with a lock held. A panic in either is caught and reported as a failure
/// of that probe ([`ErrorKind::Panicked`]). A call that does not return within the
/// [`timeout`](HealthCheckerBuilder::timeout) makes the check fail with "timed out after ..."
/// and marks it *stuck*: it is not polled again until that call returns (so a hung reporter costs
/// one thread, never more), it keeps failing at every interval meanwhile, and
/// [`Snapshot::stuck_calls`] counts it. Other checks are polled as usual.
///
/// # Reading
///
/// [`snapshot`](HealthChecker::snapshot) answers at once with the last published [`Snapshot`];
/// it never waits for a poll or for user code. [`wait_for_poll`](HealthChecker::wait_for_poll)
/// waits (with a bound) for the next poll of every check, for tests and for code that must
/// see a change. A check whose last poll is older than its
/// [staleness bound](HealthCheckerBuilder::stale_after) reads as failing, so a poller that stalls
/// (or is [paused](HealthChecker::pause) for longer than the bound) never looks healthy.
///
/// # Pushing and subscribing
///
/// A service can report a change at once, between polls, with the [`Reporter`] that
/// [`register`](HealthChecker::register) returns; [`subscribe`](HealthChecker::subscribe)rs get a
/// [`HealthEvent`] for every change of status, polled or pushed.
///
/// # Closing
///
/// [`close`](Service::close) waits at most [`close_timeout`](HealthCheckerBuilder::close_timeout)
/// for the threads to end. A worker stuck in user code cannot be interrupted: close then returns
/// an error naming each such check, and its thread ends by itself when the call returns. Close
/// never hangs. Dropping the checker closes it the same way, logging any error.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use lifecycle::health::{self, Probe, Status};
/// use lifecycle::{HealthChecker, Service, StartContext};
///
/// let checker = HealthChecker::new("1.0.0", "c0ffee");
/// let events = checker.subscribe();
/// let db = checker.register(health::from_fn("db", || Ok(())))?;
/// checker.start(&StartContext::background())?;
///
/// // Wait for a poll of every check.
/// let snapshot = checker.wait_for_poll(Duration::from_secs(5))?;
/// assert!(snapshot.is_ready().is_passing());
/// let event = events.recv_timeout(Duration::from_secs(5)).expect("first poll");
/// assert_eq!((event.check(), event.new_status()), ("db", Status::Passing));
///
/// // The service can report a change without waiting for the next poll.
/// db.report(Probe::Ready, Err("connection lost".into()))?;
/// let ready = checker.snapshot().is_ready();
/// assert!(!ready.is_passing());
/// assert_eq!(ready.failure("db").unwrap().to_string(), "db: ready failed: connection lost");
///
/// checker.close()?;
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct HealthChecker {
    shared: Arc<Shared>,
    sm: StateMachine,
    stop: StopSignal,
    results: Receiver<PollResult>,
    wake: Receiver<()>,
    poller: Mutex<Option<Thread<()>>>,
    /// The threads the checks' calls run on; `None` once closed.
    pool: Mutex<Option<Arc<CallPool>>>,
}

/// The name of the checker's call threads while idle (each carries `health NAME` in a call).
const POOL_NAME: &str = "health calls";

impl HealthChecker {
    /// A checker with the default settings, for a program of `version` built from git `sha`.
    pub fn new(version: impl Into<String>, sha: impl Into<String>) -> HealthChecker {
        HealthChecker::builder(version, sha).build()
    }

    /// A builder, to change the default settings.
    pub fn builder(version: impl Into<String>, sha: impl Into<String>) -> HealthCheckerBuilder {
        HealthCheckerBuilder {
            version: version.into(),
            sha: sha.into(),
            config: Config {
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                stale_after: None,
                close_timeout: DEFAULT_CLOSE_TIMEOUT,
                event_capacity: DEFAULT_EVENT_CAPACITY,
            },
        }
    }

    /// Registers `reporter` with the default [`CheckOptions`]; see
    /// [`register_with`](HealthChecker::register_with).
    ///
    /// # Errors
    ///
    /// As [`register_with`](HealthChecker::register_with).
    pub fn register(&self, reporter: impl HealthReporter + 'static) -> Result<Reporter> {
        self.register_with(reporter, CheckOptions::new())
    }

    /// Registers `reporter` (a service, shared or not, or a check from
    /// [`health::from_fn`](crate::health::from_fn)) as the check named by its
    /// [`name`](HealthReporter::name). If the checker is running,
    /// the check is polled at once.
    ///
    /// Returns a [`Reporter`] with which the check's service can push changes between polls.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::InvalidInput`] if the name, or the group of `options`, is empty or holds
    ///   control characters.
    /// - [`ErrorKind::DuplicateName`] if a check of that name is registered.
    /// - [`ErrorKind::AlreadyClosed`] if the checker was closed.
    pub fn register_with(
        &self,
        reporter: impl HealthReporter + 'static,
        options: CheckOptions,
    ) -> Result<Reporter> {
        let reporter: Arc<dyn HealthReporter> = Arc::new(reporter);
        check_name(reporter.name())?;
        if let Some(group) = &options.group {
            check_name(group)?;
        }
        let name: Arc<str> = reporter.name().into();
        let config = &self.shared.config;
        let timeout = options.timeout.unwrap_or(config.timeout);
        let stale_after = config
            .stale_after
            .unwrap_or_else(|| config.interval.saturating_mul(3).saturating_add(timeout));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lines = {
            let mut reg = self.shared.registry.lock();
            if reg.closed {
                return Err(Error::state(
                    ErrorKind::AlreadyClosed,
                    CHECKER_NAME,
                    Phase::Run,
                    self.sm.state(),
                ));
            }
            if reg.checks.contains_key(&name) {
                return Err(Error::registration(ErrorKind::DuplicateName, &name));
            }
            let Some(pool) = self.pool.lock().clone() else {
                return Err(Error::state(
                    ErrorKind::AlreadyClosed,
                    CHECKER_NAME,
                    Phase::Run,
                    self.sm.state(),
                ));
            };
            let results = self.shared.results.clone();
            let worker = Worker::new(pool, id, Arc::clone(&name), reporter, results);
            let data = CheckData::new(Arc::clone(&name), &options, stale_after);
            let quiet = options.quiet;
            let entry = Entry {
                id,
                data: Arc::new(data),
                threshold: options.failure_threshold.max(1),
                timeout,
                worker,
                call: None,
                next_due: Instant::now(),
                poll_again: false,
                pushed_at: [None, None],
                quiet,
            };
            reg.checks.insert(Arc::clone(&name), entry);
            self.shared.commit(&mut reg)
        };
        write_log(lines);
        crate::relay::debug!("{name}: registered for health checks");
        self.shared.wake();
        Ok(Reporter {
            shared: Arc::downgrade(&self.shared),
            id,
            name,
        })
    }

    /// Unregisters the check `name`: it is polled no more and leaves the snapshot at once.
    ///
    /// A call in progress is waited for at most the check's timeout. A call that is stuck, or
    /// does not return in that time, is not waited for: it is left to end when it returns
    /// (counted by [`Snapshot::stuck_calls`] until then).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRegistered`] if there is no check of that name.
    pub fn unregister(&self, name: &str) -> Result<()> {
        let (mut entry, lines) = {
            let mut reg = self.shared.registry.lock();
            let entry = reg
                .checks
                .remove(name)
                .ok_or_else(|| not_registered(name))?;
            if entry.is_stuck() {
                let mut worker = entry.worker;
                worker.disconnect();
                reg.orphans.push(Orphan {
                    name: Arc::clone(&entry.data.name),
                    worker,
                });
                let lines = self.shared.commit(&mut reg);
                drop(reg);
                write_log(lines);
                crate::relay::warn!(
                    "{name}: unregistered while stuck; its call is left to end when it returns"
                );
                return Ok(());
            }
            let lines = self.shared.commit(&mut reg);
            (entry, lines)
        };
        write_log(lines);
        if !entry
            .worker
            .join_until(later(Instant::now(), entry.timeout))
        {
            crate::relay::warn!(
                "{name}: unregistered during a slow call; it is left to end when it returns"
            );
            let mut reg = self.shared.registry.lock();
            // Once closed, nobody would join it: it is left to end by itself.
            if !reg.closed {
                reg.orphans.push(Orphan {
                    name: Arc::clone(&entry.data.name),
                    worker: entry.worker,
                });
            }
            let lines = self.shared.commit(&mut reg);
            drop(reg);
            write_log(lines);
        }
        crate::relay::debug!("{name}: unregistered from health checks");
        Ok(())
    }

    /// A new subscription to every change of status of every check, from now on.
    ///
    /// The channel is bounded ([`event_capacity`](HealthCheckerBuilder::event_capacity)) and the
    /// checker never waits on it: when it is full, new events are dropped for that subscriber and
    /// counted ([`Snapshot::dropped_events`]); read the [`snapshot`](HealthChecker::snapshot) to
    /// catch up. Dropping the receiver ends the subscription. The channel disconnects when the
    /// checker closes.
    ///
    /// Events are sent after the snapshot that shows the change is published.
    pub fn subscribe(&self) -> Receiver<HealthEvent> {
        let (tx, rx) = crossbeam_channel::bounded(self.shared.config.event_capacity);
        let mut reg = self.shared.registry.lock();
        if !reg.closed {
            reg.subscribers.push(tx);
        }
        rx
    }

    /// The current view of every check. Never waits for a poll or user code.
    pub fn snapshot(&self) -> Snapshot {
        let published = Arc::clone(&self.shared.published.read());
        Snapshot::new(published, self.sm.state())
    }

    /// Stops polling until [`resume`](HealthChecker::resume). Calls in progress still complete
    /// and are recorded, and active reports still work. A pause longer than the staleness bound
    /// makes every check read as failing ("stale").
    pub fn pause(&self) {
        self.set_paused(true);
    }

    /// Resumes polling after [`pause`](HealthChecker::pause), polling every check at once.
    pub fn resume(&self) {
        self.set_paused(false);
    }

    fn set_paused(&self, paused: bool) {
        let lines = {
            let mut reg = self.shared.registry.lock();
            reg.paused = paused;
            if !paused {
                let now = Instant::now();
                reg.checks.values_mut().for_each(|e| e.next_due = now);
            }
            self.shared.commit(&mut reg)
        };
        write_log(lines);
        self.shared.wake();
    }

    /// Polls every check that has no call in progress now, instead of at its next interval.
    /// Returns at once; results arrive as the calls return. Does nothing while paused or before
    /// the start.
    pub fn poll_now(&self) {
        {
            let mut reg = self.shared.registry.lock();
            let now = Instant::now();
            for e in reg.checks.values_mut() {
                e.next_due = now;
                // A call in progress began before this: its result would not do.
                e.poll_again = e.call.is_some();
            }
        }
        self.shared.wake();
    }

    /// Polls every check now (as [`poll_now`](HealthChecker::poll_now)) and waits until each one
    /// has a result from a poll that began after this call, or a timeout recorded since; returns
    /// the snapshot that shows them all. A check registered meanwhile is waited for too.
    ///
    /// For tests, and for code that must see a change it just made: the snapshot is no older
    /// than the call, and the [events](HealthChecker::subscribe) of the changes it shows have
    /// been sent when it returns.
    ///
    /// # Errors
    ///
    /// - [`ErrorKind::TimedOut`], naming the checks not polled yet, when `timeout` passes first.
    ///   A check's call already running when the wait begins must return (or time out) first,
    ///   and then a new poll: twice the check's poll timeout, and the interval of a paused
    ///   wake-up at most, always suffice for a running checker.
    /// - [`ErrorKind::NotStarted`] if the checker is not running, and [`ErrorKind::InvalidState`]
    ///   if it is paused: no poll would come.
    pub fn wait_for_poll(&self, timeout: Duration) -> Result<Snapshot> {
        let asked = Instant::now();
        let deadline = later(asked, timeout);
        let (tx, published) = crossbeam_channel::bounded(1);
        self.shared.registry.lock().watchers.push(tx);
        self.poll_now();
        loop {
            let snapshot = self.snapshot();
            if snapshot.checker_state() != State::Started {
                let state = snapshot.checker_state();
                return Err(Error::state(
                    ErrorKind::NotStarted,
                    CHECKER_NAME,
                    Phase::Run,
                    state,
                ));
            }
            if snapshot.is_paused() {
                return Err(Error::invalid_state(Phase::Run, "polling is paused")
                    .in_service(CHECKER_NAME, Phase::Run));
            }
            let waiting: Vec<&str> = snapshot
                .checks()
                .filter(|c| c.polled_since().is_none_or(|polled| polled < asked))
                .map(|c| c.name())
                .collect();
            if waiting.is_empty() {
                // A publication and the sending of its events happen under the registry's
                // lock: once it is free, the events of what this snapshot shows are sent.
                drop(self.shared.registry.lock());
                return Ok(snapshot);
            }
            match published.recv_deadline(deadline) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let e = Error::msg(format!("no poll yet of {}", waiting.join(", ")));
                    return Err(Error::timed_out_after(CHECKER_NAME, Phase::Run, timeout, e));
                }
                // The checker is closing: it dropped its watchers.
                Err(RecvTimeoutError::Disconnected) => {
                    let state = self.sm.state();
                    return Err(Error::state(
                        ErrorKind::NotStarted,
                        CHECKER_NAME,
                        Phase::Run,
                        state,
                    ));
                }
            }
        }
    }

    /// Ends the poller and every worker, waiting at most the close timeout in all. Idempotent.
    fn shutdown(&self) -> Result<()> {
        let deadline = later(Instant::now(), self.shared.config.close_timeout);
        let (entries, orphans, lines) = {
            let mut reg = self.shared.registry.lock();
            if reg.closed {
                return Ok(());
            }
            reg.closed = true;
            reg.subscribers.clear();
            reg.watchers.clear();
            let entries = std::mem::take(&mut reg.checks);
            let orphans = std::mem::take(&mut reg.orphans);
            (entries, orphans, self.shared.commit(&mut reg))
        };
        write_log(lines);
        self.stop.stop();
        let mut errors = Vec::new();
        let mut poller = self.poller.lock().take();
        if !join_until(&mut poller, deadline) {
            errors.push(Error::msg("poller thread did not end in time"));
        }
        // Idle threads end as the pool goes (with the last worker); a thread in a call ends
        // when its call returns.
        drop(self.pool.lock().take());
        let mut workers: Vec<(Arc<str>, Worker)> = entries
            .into_values()
            .map(|e| (e.data.name.clone(), e.worker))
            .chain(orphans.into_iter().map(|o| (o.name, o.worker)))
            .collect();
        workers.iter_mut().for_each(|(_, w)| w.disconnect());
        for (name, mut worker) in workers {
            if !worker.join_until(deadline) {
                let phase = worker.phase();
                crate::relay::warn!(
                    "{name}: {phase}() still running at close; thread \"health {name}\" is left to end when it returns"
                );
                let e = Error::msg(format!(
                    "still running at close; thread \"health {name}\" is left to end when the call returns"
                ));
                errors.push(e.in_service(&name, phase));
            }
        }
        Error::join(errors).map_or(Ok(()), Err)
    }
}

impl HealthReporter for HealthChecker {
    /// `"health checker"`.
    fn name(&self) -> &str {
        CHECKER_NAME
    }

    /// `Ok` while the checker is started.
    fn ready(&self) -> Result<()> {
        self.sm
            .ready()
            .map_err(|e| e.in_service(CHECKER_NAME, Phase::Ready))
    }
}

impl Service for HealthChecker {
    /// Spawns the poller thread (`"health checker"`), which polls every check at once and then
    /// every interval.
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm
            .start_once(|| {
                ctx.check(CHECKER_NAME)?;
                let shared = Arc::clone(&self.shared);
                let (results, wake, stop) =
                    (self.results.clone(), self.wake.clone(), self.stop.clone());
                let poller = Thread::spawn(CHECKER_NAME.to_owned(), move || {
                    poller::poll(&shared, &results, &wake, &stop);
                })?;
                *self.poller.lock() = Some(poller);
                Ok(())
            })
            .map_err(|e| e.in_service(CHECKER_NAME, Phase::Start))
    }

    /// Stops polling and ends every thread, waiting at most the close timeout.
    ///
    /// # Errors
    ///
    /// Besides the [`StateMachine`] errors (not started, already closed), one error per worker
    /// still stuck in a call when the bound passed, naming its check and the call; those threads
    /// are left to end by themselves when their calls return.
    ///
    /// Closing a checker that was never started is an error ([`ErrorKind::NotStarted`]), but it
    /// still ends the registered checks' workers: the checker cannot be used afterwards.
    fn close(&self) -> Result<()> {
        let closed = self
            .sm
            .close_once(|| Ok(self.shutdown()?))
            .map_err(|e| e.in_service(CHECKER_NAME, Phase::Close));
        if self.sm.state() == State::Unstarted {
            if let Err(e) = self.shutdown() {
                crate::relay::warn!("{CHECKER_NAME}: closing before a start: {e}");
            }
        }
        closed
    }
}

impl Drop for HealthChecker {
    /// Closes the checker if it was not closed, logging any error (bounded like `close`).
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            crate::relay::warn!("{CHECKER_NAME}: closing on drop: {e}");
        }
    }
}

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker")
            .field("version", &self.shared.version)
            .field("sha", &self.shared.sha)
            .field("state", &self.sm.state())
            .field("config", &self.shared.config)
            .finish()
    }
}

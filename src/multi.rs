//! Starting services in order with rollback ([`MultiStart`]), and closing many at once
//! ([`close_all`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{check_name, Error, ErrorKind, Phase, Result};
use crate::service::{close_guarded, shared, start_guarded, Service};
use crate::stop::StartContext;
use crate::thread::thread_name;

/// Starts services in order and closes them in reverse; if one fails to start, closes the ones
/// already started and reports every error.
///
/// The services it started are closed, in reverse order, by [`close`](MultiStart::close),
/// [`close_because`](MultiStart::close_because), or when the `MultiStart` is dropped: a test that
/// panics halfway leaves nothing running. Every method takes `&self`, so a parent service can
/// own its sub-services in a `MultiStart` field without a lock of its own.
///
/// A close waits for each service's `close` to return, without a bound of its own: services
/// bound their own closes, and the [`Runner`](crate::Runner) bounds each with its close
/// timeout.
///
/// ```
/// use lifecycle::{HealthReporter, MultiStart, StartContext, Worker};
///
/// let pool = std::sync::Arc::new(Worker::new("pool", |stop| { stop.wait(); Ok(()) }));
/// let services = MultiStart::new();
/// services.start(&StartContext::background(), [pool.clone()])?;
/// assert!(pool.ready().is_ok());
/// services.close()?;
/// assert!(pool.ready().is_err());
/// # Ok::<(), lifecycle::Error>(())
/// ```
#[derive(Default)]
pub struct MultiStart {
    /// Held only to push or pop, never across a start or a close.
    started: Mutex<Vec<Arc<dyn Service>>>,
    /// The services of the batches being started, by batch, whose names are taken meanwhile:
    /// two calls at once cannot start two services of one name.
    starting: Mutex<Vec<(u64, Arc<dyn Service>)>>,
    batches: AtomicU64,
}

impl MultiStart {
    /// An empty `MultiStart`.
    pub fn new() -> MultiStart {
        MultiStart::default()
    }

    /// Starts `services` in order and returns the `MultiStart` that holds them: a guard that
    /// closes them all, in reverse, when it is dropped, also when a test panics halfway. (The
    /// [`testing`](crate::testing) module's harness also waits for readiness and watches
    /// health.)
    ///
    /// # Errors
    ///
    /// As [`start`](MultiStart::start): if one fails, the started ones are closed again first.
    pub fn start_all<I, S>(services: I) -> Result<MultiStart>
    where
        I: IntoIterator<Item = S>,
        S: Service + 'static,
    {
        let started = MultiStart::new();
        started.start(&StartContext::background(), services)?;
        Ok(started)
    }

    /// Starts `services` one after another, each only after the previous one's start returned.
    ///
    /// Services are taken as they are or shared (`Arc<MyService>`, `Arc<dyn Service>`). Their
    /// names are checked first: an empty name, one with control characters, or one that this
    /// `MultiStart` already holds (or that comes twice) refuses the whole call before anything
    /// starts, as the [`Runner`](crate::Runner) does; services started by earlier calls stay
    /// started.
    ///
    /// Before each start it checks `ctx`: once `ctx` is cancelled no further service starts.
    /// If a service fails to start (an error, a panic, or a cancelled context), every service this
    /// `MultiStart` has started, in this call or an earlier one, is closed in reverse order, and
    /// the services after the failing one are never touched. The failing service itself is not
    /// closed: a start that fails cleans up after itself.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) or
    /// [`ErrorKind::DuplicateName`](crate::ErrorKind::DuplicateName) for a name refused as above.
    /// Otherwise the start failure, joined with every error from the rollback's closes, in the
    /// order they happened; each names its service and phase.
    pub fn start<I, S>(&self, ctx: &StartContext, services: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Service + 'static,
    {
        let services = shared(services);
        let batch = self.batches.fetch_add(1, Ordering::Relaxed);
        {
            let (started, mut starting) = (self.started.lock(), self.starting.lock());
            let reserved = starting.iter().map(|(_, s)| s);
            let held = started.iter().chain(reserved).map(|s| s.name());
            check_names(held, services.iter().map(|s| s.name()))?;
            starting.extend(services.iter().map(|s| (batch, Arc::clone(s))));
        }
        let result = self.start_reserved(ctx, &services);
        self.starting.lock().retain(|(b, _)| *b != batch);
        result
    }

    /// Starts a batch whose names are reserved in `starting`.
    fn start_reserved(&self, ctx: &StartContext, services: &[Arc<dyn Service>]) -> Result<()> {
        // The clock is read only when the debug log would show the duration: it costs about as
        // much as starting a trivial service (see BENCHMARKS.md).
        let timed = crate::relay::enabled(log::Level::Debug);
        for service in services {
            let service = Arc::clone(service);
            let name = service.name();
            let began = timed.then(Instant::now);
            let outcome = ctx.check(name).and_then(|()| start_guarded(&*service, ctx));
            match outcome {
                Ok(()) => {
                    if let Some(began) = began {
                        crate::relay::debug!("{name}: started in {:?}", began.elapsed());
                    }
                    self.started.lock().push(service);
                }
                Err(failure) => {
                    crate::relay::debug!("{name}: failed to start: {failure}; rolling back");
                    return Err(self.close_because(failure));
                }
            }
        }
        Ok(())
    }

    /// Closes every service started so far, in reverse order of start, each exactly once.
    /// A close that fails or panics does not stop the others from closing.
    ///
    /// # Errors
    ///
    /// Every close error, joined, in the order of closing.
    pub fn close(&self) -> Result<()> {
        let mut errors = Vec::new();
        let timed = crate::relay::enabled(log::Level::Debug);
        loop {
            // Popped one at a time: the lock is never held across a close.
            let Some(service) = self.started.lock().pop() else {
                break;
            };
            let began = timed.then(Instant::now);
            match close_guarded(&*service) {
                Ok(()) => {
                    if let Some(began) = began {
                        crate::relay::debug!("{}: closed in {:?}", service.name(), began.elapsed());
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Error::join(errors).map_or(Ok(()), Err)
    }

    /// Like [`close`](MultiStart::close), for when closing because of `reason`: returns `reason`
    /// joined with any close errors.
    pub fn close_because(&self, reason: Error) -> Error {
        match self.close() {
            Ok(()) => reason,
            Err(close) => Error::join([reason, close]).expect("two errors"),
        }
    }

    /// The names of the services started and not yet closed, in start order.
    pub fn names(&self) -> Vec<String> {
        self.started
            .lock()
            .iter()
            .map(|s| s.name().to_owned())
            .collect()
    }

    /// Takes the started services out, in start order; this `MultiStart` no longer closes them.
    ///
    /// For handing them to another owner, such as [`close_all`].
    pub fn release(&self) -> Vec<Arc<dyn Service>> {
        std::mem::take(&mut *self.started.lock())
    }
}

/// Refuses a batch of names, before anything starts, if one is invalid, already `held`, or
/// given twice.
pub(crate) fn check_names<'a>(
    held: impl IntoIterator<Item = &'a str>,
    batch: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let batch = batch.into_iter();
    let mut seen: HashSet<&str> = HashSet::with_capacity(batch.size_hint().0);
    seen.extend(held);
    for name in batch {
        check_name(name)?;
        if !seen.insert(name) {
            return Err(Error::registration(ErrorKind::DuplicateName, name));
        }
    }
    Ok(())
}

impl Drop for MultiStart {
    /// Closes whatever is still started, in reverse order, logging (at warn level) any error.
    /// Never panics.
    fn drop(&mut self) {
        if self.started.get_mut().is_empty() {
            return;
        }
        if let Err(e) = self.close() {
            crate::relay::warn!("closing services on drop: {e}");
        }
    }
}

impl fmt::Debug for MultiStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiStart")
            .field("started", &self.names())
            .finish()
    }
}

/// Closes every service concurrently, each on a named thread of its own, and waits for all of
/// them.
///
/// A close that fails or panics does not stop the others. Every thread is joined before this
/// returns, so this waits for the slowest close, without a bound of its own; if a thread cannot
/// be spawned, that service is closed on the calling thread instead.
///
/// # Errors
///
/// Every close error, joined, in the order of `services`.
///
/// ```
/// use lifecycle::{close_all, MultiStart, Worker};
///
/// let shard = |name| Worker::new(name, |stop| { stop.wait(); Ok(()) });
/// let ms = MultiStart::start_all([shard("shard 1"), shard("shard 2")])?;
/// // Shards that do not depend on each other can close in parallel.
/// close_all(ms.release())?;
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub fn close_all<I, S>(services: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<dyn Service> + Send,
{
    let services: Vec<S> = services.into_iter().collect();
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let pending: Vec<_> = services
            .iter()
            .map(|s| {
                let service: &dyn Service = s.as_ref();
                std::thread::Builder::new()
                    .name(thread_name(format!("close {}", service.name())))
                    .spawn_scoped(scope, move || close_guarded(service))
                    .map_err(|_| service)
            })
            .collect();
        pending
            .into_iter()
            .zip(&services)
            .map(|(p, s)| match p {
                // close_guarded catches the close's own panics; this covers the rest.
                Ok(handle) => handle.join().unwrap_or_else(|payload| {
                    Err(Error::panicked(s.as_ref().name(), Phase::Close, &*payload))
                }),
                Err(service) => close_guarded(service),
            })
            .collect()
    });
    Error::join(results.into_iter().filter_map(Result::err)).map_or(Ok(()), Err)
}

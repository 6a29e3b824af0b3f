//! Starting services in order with rollback ([`MultiStart`]), and closing many at once
//! ([`close_all`]).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Phase, Result};
use crate::service::{close_guarded, start_guarded, Service};
use crate::stop::StartContext;

/// Starts services in order and closes them in reverse; if one fails to start, closes the ones
/// already started and reports every error.
///
/// The services it started are closed, in reverse order, by [`close`](MultiStart::close),
/// [`close_because`](MultiStart::close_because), or when the `MultiStart` is dropped: a test that
/// panics halfway leaves nothing running.
///
/// ```
/// use std::sync::Arc;
/// use lifecycle::{HealthReporter, MultiStart, Result, Service, StartContext, StateMachine};
///
/// struct Pool { sm: StateMachine }
/// impl HealthReporter for Pool {
///     fn name(&self) -> &str { "pool" }
///     fn ready(&self) -> Result<()> { self.sm.ready() }
/// }
/// impl Service for Pool {
///     fn start(&self, _: &StartContext) -> Result<()> { self.sm.start_once("pool", || Ok(())) }
///     fn close(&self) -> Result<()> { self.sm.stop_once("pool", || Ok(())) }
/// }
///
/// let pool = Arc::new(Pool { sm: StateMachine::new() });
/// let mut ms = MultiStart::new();
/// ms.start(&StartContext::background(), [pool.clone() as Arc<dyn Service>])?;
/// assert!(pool.ready().is_ok());
/// ms.close()?;
/// assert!(pool.ready().is_err());
/// # Ok::<(), lifecycle::Error>(())
/// ```
#[derive(Default)]
pub struct MultiStart {
    started: Vec<Arc<dyn Service>>,
}

impl MultiStart {
    /// An empty `MultiStart`.
    pub fn new() -> MultiStart {
        MultiStart::default()
    }

    /// Starts `services` in order and returns the `MultiStart` that holds them: a guard that
    /// closes them all, in reverse, when it is dropped, also when a test panics halfway.
    ///
    /// This is the helper for tests that need several services up at once.
    ///
    /// # Errors
    ///
    /// As [`start`](MultiStart::start): if one fails, the started ones are closed again first.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lifecycle::{MultiStart, Service};
    /// # use lifecycle::{HealthReporter, Result, StartContext, StateMachine};
    /// # #[derive(Default)] struct Db(StateMachine);
    /// # impl HealthReporter for Db { fn name(&self) -> &str { "db" } fn ready(&self) -> Result<()> { self.0.ready() } }
    /// # impl Service for Db {
    /// #     fn start(&self, _: &StartContext) -> Result<()> { self.0.start_once("db", || Ok(())) }
    /// #     fn close(&self) -> Result<()> { self.0.stop_once("db", || Ok(())) }
    /// # }
    ///
    /// let db = Arc::new(Db::default());
    /// {
    ///     let _services = MultiStart::start_all([db.clone() as Arc<dyn Service>])?;
    ///     assert!(db.ready().is_ok());
    ///     // ... the test body; a panic here still closes everything ...
    /// }
    /// assert!(db.ready().is_err()); // closed when the guard dropped
    /// # Ok::<(), lifecycle::Error>(())
    /// ```
    pub fn start_all<I>(services: I) -> Result<MultiStart>
    where
        I: IntoIterator<Item = Arc<dyn Service>>,
    {
        let mut started = MultiStart::new();
        started.start(&StartContext::background(), services)?;
        Ok(started)
    }

    /// Starts `services` one after another, each only after the previous one's start returned.
    ///
    /// Before each start it checks `ctx`: once `ctx` is cancelled no further service starts.
    /// If a service fails to start (an error, a panic, or a cancelled context), every service this
    /// `MultiStart` has started, in this call or an earlier one, is closed in reverse order, and
    /// the services after the failing one are never touched. The failing service itself is not
    /// closed: a start that fails cleans up after itself.
    ///
    /// # Errors
    ///
    /// The start failure, joined with every error from the rollback's closes, in the order they
    /// happened; each names its service and phase.
    pub fn start<I>(&mut self, ctx: &StartContext, services: I) -> Result<()>
    where
        I: IntoIterator<Item = Arc<dyn Service>>,
    {
        // The clock is read only when the debug log would show the duration: it costs about as
        // much as starting a trivial service (see BENCHMARKS.md).
        let timed = log::log_enabled!(log::Level::Debug);
        for service in services {
            let name = service.name();
            let began = timed.then(Instant::now);
            let outcome = ctx.check(name).and_then(|()| start_guarded(&*service, ctx));
            match outcome {
                Ok(()) => {
                    if let Some(began) = began {
                        log::debug!("{name}: started in {:?}", began.elapsed());
                    }
                    self.started.push(service);
                }
                Err(failure) => {
                    log::debug!("{name}: failed to start: {failure}; rolling back");
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
    pub fn close(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        let timed = log::log_enabled!(log::Level::Debug);
        while let Some(service) = self.started.pop() {
            let began = timed.then(Instant::now);
            match close_guarded(&*service) {
                Ok(()) => {
                    if let Some(began) = began {
                        log::debug!("{}: closed in {:?}", service.name(), began.elapsed());
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Error::join(errors).map_or(Ok(()), Err)
    }

    /// Like [`close`](MultiStart::close), for when closing because of `reason`: returns `reason`
    /// joined with any close errors.
    pub fn close_because(&mut self, reason: Error) -> Error {
        match self.close() {
            Ok(()) => reason,
            Err(close) => Error::join([reason, close]).expect("two errors"),
        }
    }

    /// The services started and not yet closed, in start order.
    pub fn started(&self) -> &[Arc<dyn Service>] {
        &self.started
    }

    /// Takes the started services out, in start order; this `MultiStart` no longer closes them.
    ///
    /// For handing them to another owner, such as [`close_all`].
    pub fn release(&mut self) -> Vec<Arc<dyn Service>> {
        std::mem::take(&mut self.started)
    }
}

impl Drop for MultiStart {
    /// Closes whatever is still started, in reverse order, logging (at warn level) any error.
    /// Never panics.
    fn drop(&mut self) {
        if self.started.is_empty() {
            return;
        }
        if let Err(e) = self.close() {
            log::warn!("closing services on drop: {e}");
        }
    }
}

impl fmt::Debug for MultiStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiStart")
            .field(
                "started",
                &self.started.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Closes every service concurrently, each on a named thread of its own, and waits for all of
/// them (the seed's `CloseAll` / `MultiCloser`).
///
/// A close that fails or panics does not stop the others. Every thread is joined before this
/// returns; if a thread cannot be spawned, that service is closed on the calling thread instead.
///
/// # Errors
///
/// Every close error, joined, in the order of `services`.
///
/// ```
/// use std::sync::Arc;
/// use lifecycle::{close_all, MultiStart, Service, StartContext};
/// # use lifecycle::{HealthReporter, Result, StateMachine};
/// # struct Db(StateMachine);
/// # impl HealthReporter for Db { fn name(&self) -> &str { "db" } fn ready(&self) -> Result<()> { self.0.ready() } }
/// # impl Service for Db {
/// #     fn start(&self, _: &StartContext) -> Result<()> { self.0.start_once("db", || Ok(())) }
/// #     fn close(&self) -> Result<()> { self.0.stop_once("db", || Ok(())) }
/// # }
/// # let (a, b) = (Arc::new(Db(StateMachine::new())), Arc::new(Db(StateMachine::new())));
///
/// let mut ms = MultiStart::new();
/// ms.start(&StartContext::background(), [a as Arc<dyn Service>, b])?;
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
                    .name(format!("close {}", service.name()))
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

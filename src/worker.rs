//! [`Worker`]: a service made of closures, whose thread the library spawns, names, stops and
//! joins.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{flatten_call, BoxError, Error, Phase, Result};
use crate::runner::RunHandle;
use crate::service::{HealthReporter, Service};
use crate::state::StateMachine;
use crate::stop::{StartContext, StopSignal};
use crate::thread::{later, Thread};

type Setup<T> = Box<dyn FnOnce(&StartContext) -> std::result::Result<T, BoxError> + Send>;
type Run<T> = Box<dyn FnOnce(&T, &StopSignal) -> std::result::Result<(), BoxError> + Send>;
type OnClose<T> = Box<dyn FnOnce(&T) + Send>;
type ReadyWhen<T> = Box<dyn Fn(&T) -> Result<()> + Send + Sync>;

/// A service made of closures: its thread runs your closure with a [`StopSignal`] until the
/// signal fires; the library spawns the thread (named after the service), stops it, joins it,
/// and turns a panic into an error that keeps the panic's message.
///
/// - [`Worker::new`]: a loop until stopped.
/// - [`Worker::with_setup`]: bind, then serve. The setup closure runs in the service's start (a
///   failure there is a start failure: the runner rolls back) and returns a value, a bound
///   listener or a pool, that the run closure then uses until it is stopped, and that is
///   dropped once the thread has been joined.
///
/// The worker is ready as soon as its thread runs, or, with [`ready_when`](Worker::ready_when),
/// once that hook also says so. Its close fires the stop signal, calls the
/// [`on_close`](Worker::on_close) hook if there is one (to wake a run closure that blocks
/// outside the signal), and waits for the run closure to return; a [`Runner`](crate::Runner)
/// bounds that wait with the service's close timeout.
///
/// # When the run closure returns early
///
/// A run closure that returns `Ok` before it is stopped has finished its work: the worker stays
/// ready and its close returns `Ok`. One that returns an error or panics before it is stopped
/// has failed: the worker is no longer ready nor healthy (with that error), and under a
/// [`Runner`](crate::Runner) the program shuts down with the error in the run phase of its
/// [`RunReport`](crate::RunReport), as with [`RunHandle::fatal`] (a worker given to
/// [`Runner::restartable`](crate::Runner::restartable) is restarted instead, as its options
/// say; one restarted *always* is restarted after a clean return too). Elsewhere (under a
/// [`MultiStart`](crate::MultiStart)) the worker's close returns the error. An error the run
/// closure returns once stopped is the close's error.
///
/// ```
/// use std::time::Duration;
/// use lifecycle::{MultiStart, Worker};
///
/// let heartbeat = Worker::new("heartbeat", |stop| {
///     while !stop.wait_timeout(Duration::from_millis(10)) {
///         // beat
///     }
///     Ok(())
/// });
/// let services = MultiStart::start_all([heartbeat])?;
/// services.close()?; // fires the stop signal and joins the thread
/// # Ok::<(), lifecycle::Error>(())
/// ```
///
/// Bind, then serve, with a hook that wakes the blocking accept on close:
///
/// ```
/// use std::net::{TcpListener, TcpStream};
/// use lifecycle::{MultiStart, Worker};
///
/// let server = Worker::with_setup(
///     "echo",
///     |_ctx| Ok(TcpListener::bind("127.0.0.1:0")?),
///     |listener, stop| {
///         for conn in listener.incoming() {
///             if stop.is_stopped() {
///                 break;
///             }
///             let mut conn = conn?;
///             std::io::copy(&mut conn.try_clone()?, &mut conn)?;
///         }
///         Ok(())
///     },
/// )
/// .on_close(|listener| {
///     // accept() does not watch the stop signal: one connection wakes it.
///     if let Ok(addr) = listener.local_addr() {
///         let _ = TcpStream::connect(addr);
///     }
/// });
/// let services = MultiStart::start_all([server])?;
/// services.close()?;
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub struct Worker<T = ()> {
    name: String,
    sm: StateMachine,
    stop: StopSignal,
    setup: Mutex<Option<Setup<T>>>,
    run: Mutex<Option<Run<T>>>,
    on_close: Mutex<Option<OnClose<T>>>,
    ready_when: Option<ReadyWhen<T>>,
    /// The setup's value and the thread, from the start until the close.
    running: Mutex<Option<(Arc<T>, Thread<Ended>)>>,
    /// The run closure's error when it failed before it was stopped.
    failed: Arc<OnceLock<Error>>,
}

/// How the run closure ended: its result, and whether a failure was handed to a runner.
struct Ended {
    result: Result<()>,
    reported: bool,
}

impl Worker<()> {
    /// A worker called `name` whose thread runs `run` until the stop signal fires; `run` must
    /// return promptly once it has (wait on the signal with
    /// [`wait_timeout`](StopSignal::wait_timeout), or `select!` on its
    /// [`receiver`](StopSignal::receiver)).
    pub fn new<F>(name: impl Into<String>, run: F) -> Worker<()>
    where
        F: FnOnce(&StopSignal) -> std::result::Result<(), BoxError> + Send + 'static,
    {
        Worker::with_setup(name, |_ctx| Ok(()), move |_, stop| run(stop))
    }
}

impl<T: Send + Sync + 'static> Worker<T> {
    /// A worker called `name` whose start runs `setup` (on the starting thread, with the start's
    /// context: honour its cancellation), and whose thread then runs `run` with the value `setup`
    /// returned, until the stop signal fires. The value is dropped after the thread has been
    /// joined, at close, or at once if the start fails after `setup`.
    pub fn with_setup<S, F>(name: impl Into<String>, setup: S, run: F) -> Worker<T>
    where
        S: FnOnce(&StartContext) -> std::result::Result<T, BoxError> + Send + 'static,
        F: FnOnce(&T, &StopSignal) -> std::result::Result<(), BoxError> + Send + 'static,
    {
        Worker {
            name: name.into(),
            sm: StateMachine::new(),
            stop: StopSignal::new(),
            setup: Mutex::new(Some(Box::new(setup))),
            run: Mutex::new(Some(Box::new(run))),
            on_close: Mutex::new(None),
            ready_when: None,
            running: Mutex::new(None),
            failed: Arc::new(OnceLock::new()),
        }
    }

    /// A readiness hook: the worker is ready only once its thread runs and `ready` returns
    /// `Ok`, for a worker that sets up in its thread (connects, warms a cache) before it can take
    /// work. It is called with the setup's value (`&()` for [`Worker::new`]) by the runner
    /// while it waits for the worker to be ready, and by the health checker at every poll
    /// (twice: for readiness and for health): keep it cheap (read a flag). A call in progress
    /// holds the value, so a close that meets one leaves the value to be dropped when it
    /// returns.
    #[must_use]
    pub fn ready_when(mut self, ready: impl Fn(&T) -> Result<()> + Send + Sync + 'static) -> Self {
        self.ready_when = Some(Box::new(ready));
        self
    }

    /// A hook the close calls after firing the stop signal and before waiting for the thread,
    /// with the setup's value: for a run closure that blocks where the signal cannot wake it
    /// (a blocking `accept`, tiny_http's `recv`: call its `unblock`). It must not block.
    #[must_use]
    pub fn on_close(self, hook: impl FnOnce(&T) + Send + 'static) -> Self {
        *self.on_close.lock() = Some(Box::new(hook));
        self
    }

    fn spawn(&self, ctx: &StartContext) -> std::result::Result<(), BoxError> {
        let setup = self
            .setup
            .lock()
            .take()
            .ok_or("the worker has no setup left")?;
        let run = self
            .run
            .lock()
            .take()
            .ok_or("the worker has no run closure left")?;
        let value = Arc::new(setup(ctx)?);
        let thread = {
            let (name, value, stop) = (self.name.clone(), value.clone(), self.stop.clone());
            let (failed, handle) = (self.failed.clone(), ctx.run_handle().cloned());
            Thread::spawn(self.name.clone(), move || {
                run_closure(&name, run, &value, &stop, &failed, handle)
            })?
        };
        *self.running.lock() = Some((value, thread));
        Ok(())
    }
}

/// Runs the worker's closure on its thread, and records how it ended.
fn run_closure<T>(
    name: &str,
    run: Run<T>,
    value: &T,
    stop: &StopSignal,
    failed: &OnceLock<Error>,
    handle: Option<RunHandle>,
) -> Ended {
    let outcome = catch_unwind(AssertUnwindSafe(|| run(value, stop).map_err(Error::other)));
    let phase = if stop.is_stopped() {
        Phase::Close
    } else {
        Phase::Run
    };
    let result = flatten_call(name, phase, outcome);
    match (&result, phase) {
        (Ok(()), Phase::Run) => {
            crate::relay::info!("{name}: finished");
            // A restartable service restarted always is restarted even then.
            if let Some(handle) = handle {
                handle.finished();
            }
        }
        (Err(e), Phase::Run) => {
            crate::relay::error!("{e}");
            let _ = failed.set(e.clone());
            if let Some(handle) = handle {
                handle.fatal(e.clone());
                return Ended {
                    result,
                    reported: true,
                };
            }
        }
        _ => {}
    }
    Ended {
        result,
        reported: false,
    }
}

impl<T: Send + Sync + 'static> HealthReporter for Worker<T> {
    fn name(&self) -> &str {
        &self.name
    }

    /// `Ok` once started, while the run closure has not failed, and while the
    /// [`ready_when`](Worker::ready_when) hook, if any, says so.
    fn ready(&self) -> Result<()> {
        self.sm
            .ready()
            .map_err(|e| e.in_service(&self.name, Phase::Ready))?;
        if let Some(e) = self.failed.get() {
            return Err(e.clone());
        }
        let Some(ready) = &self.ready_when else {
            return Ok(());
        };
        let value = self.running.lock().as_ref().map(|(value, _)| value.clone());
        match value {
            Some(value) => ready(&value),
            None => self.sm.ready(),
        }
    }
}

impl<T: Send + Sync + 'static> Service for Worker<T> {
    /// Runs the setup, then spawns the thread (named after the service) that runs the run
    /// closure.
    fn start(&self, ctx: &StartContext) -> Result<()> {
        self.sm
            .start_once(|| self.spawn(ctx))
            .map_err(|e| e.in_service(&self.name, Phase::Start))
    }

    /// Fires the stop signal, calls the [`on_close`](Worker::on_close) hook, waits for the run
    /// closure to return, then drops the setup's value.
    ///
    /// # Errors
    ///
    /// The error (or panic) of the run closure once stopped, or of one that failed earlier
    /// without a runner to report it to; the [`StateMachine`] errors (closing a worker that
    /// was never started, or twice).
    fn close(&self) -> Result<()> {
        self.sm
            .close_once(|| {
                self.stop.stop();
                let Some((value, thread)) = self.running.lock().take() else {
                    return Ok(());
                };
                let hook = self.on_close.lock().take();
                if let Some(hook) = hook {
                    hook(&value);
                }
                // The close's own bound is its caller's (the runner's close timeout).
                let ended = thread.join();
                drop(value);
                match ended {
                    Some(Ended {
                        result: Err(e),
                        reported: false,
                    }) => Err(e.into()),
                    _ => Ok(()),
                }
            })
            .map_err(|e| e.in_service(&self.name, Phase::Close))
    }
}

impl<T> Drop for Worker<T> {
    /// A worker dropped while started (never closed) is stopped as a close would: its stop
    /// signal fires, its close hook runs, and its thread is joined if it ends within 10 s (the
    /// runner's default close timeout); one that does not is left running, with a warning
    /// naming it. A closed worker has nothing left to do here.
    fn drop(&mut self) {
        let Some((value, thread)) = self.running.get_mut().take() else {
            return;
        };
        self.stop.stop();
        if let Some(hook) = self.on_close.get_mut().take() {
            // A drop never panics: a panicking hook is only logged.
            if catch_unwind(AssertUnwindSafe(|| hook(&value))).is_err() {
                crate::relay::warn!(
                    "{}: its close hook panicked while it was dropped",
                    self.name
                );
            }
        }
        let bound = crate::runner::DEFAULT_CLOSE_TIMEOUT;
        if let Err(thread) = thread.join_until(later(Instant::now(), bound)) {
            crate::relay::warn!(
                "{}: dropped while started, and its thread {:?} did not end within {bound:?}; \
                 leaving it",
                self.name,
                thread.name()
            );
            drop(thread.abandon());
        }
    }
}

impl<T> fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("state", &self.sm.state())
            .field("failed", &self.failed.get())
            .finish_non_exhaustive()
    }
}

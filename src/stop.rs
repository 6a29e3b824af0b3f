//! Cancellation: the [`StopSignal`] a worker waits on, and the [`StartContext`] a start runs in.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Phase, Result};
use crate::runner::RunHandle;

/// A cloneable, one-shot signal that tells work to stop.
///
/// Every clone observes the same signal. [`stop`](StopSignal::stop) fires it for all of them, at
/// once and for good; calling it again does nothing. A worker thread waits on it with
/// [`wait_timeout`](StopSignal::wait_timeout), checks it with
/// [`is_stopped`](StopSignal::is_stopped), or selects on its [`receiver`](StopSignal::receiver)
/// together with its own channels.
///
/// The receiver never yields a message: it becomes *disconnected* when the signal fires, which
/// wakes every `recv` and `select!` on it, present and future.
///
/// # In a worker
///
/// A [`Worker`](crate::Worker) hands its closure the signal that its close fires, then joins the
/// thread. A loop that waits on channels of its own selects on the signal's receiver too:
///
/// ```
/// use std::time::Duration;
/// use crossbeam_channel::{select, tick};
/// use lifecycle::{MultiStart, Worker};
///
/// let ticker = Worker::new("ticker", |stop| {
///     let ticks = tick(Duration::from_millis(10));
///     loop {
///         select! {
///             recv(ticks) -> _ => { /* do a unit of work */ }
///             recv(stop.receiver()) -> _ => return Ok(()),
///         }
///     }
/// });
/// let services = MultiStart::start_all([ticker])?;
/// services.close()?; // fires the signal and joins the thread
/// # Ok::<(), lifecycle::Error>(())
/// ```
///
/// A hand-written [`Service`](crate::Service) does the same: `start` spawns a named thread
/// with a clone of its signal, `close` fires the signal and joins the thread, so nothing is
/// ever detached.
#[derive(Clone)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

struct StopInner {
    stopped: AtomicBool,
    // Dropped (taken) to fire the signal: that disconnects every receiver.
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

impl StopSignal {
    /// A new signal that has not fired.
    pub fn new() -> StopSignal {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        StopSignal {
            inner: Arc::new(StopInner {
                stopped: AtomicBool::new(false),
                sender: Mutex::new(Some(sender)),
                receiver,
            }),
        }
    }

    /// Fires the signal for every clone. Idempotent: returns `true` only for the call that fired
    /// it.
    pub fn stop(&self) -> bool {
        let sender = self.inner.sender.lock().take();
        match sender {
            Some(sender) => {
                self.inner.stopped.store(true, Ordering::Release);
                drop(sender);
                true
            }
            None => false,
        }
    }

    /// Whether the signal has fired. Never blocks.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Waits until the signal fires or `timeout` passes, whichever is first; returns whether it
    /// fired.
    ///
    /// This is the sleep of a worker loop: it returns at once when a stop is requested.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        match self.inner.receiver.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) => unreachable!("nothing is ever sent on a stop signal"),
        }
    }

    /// Waits until the signal fires or `deadline` passes; returns whether it fired.
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        self.wait_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// Blocks until the signal fires.
    ///
    /// This wait is bounded only by whoever holds a clone and calls [`stop`](StopSignal::stop);
    /// prefer [`wait_timeout`](StopSignal::wait_timeout) where that is not certain.
    pub fn wait(&self) {
        let _ = self.inner.receiver.recv();
    }

    /// A receiver that becomes disconnected when the signal fires, for `crossbeam_channel::select!`.
    ///
    /// It never yields a message; in `select!`, the `recv(stop.receiver()) -> _` arm runs once the
    /// signal has fired.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.inner.receiver
    }
}

impl Default for StopSignal {
    fn default() -> StopSignal {
        StopSignal::new()
    }
}

impl fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// The context a [`Service::start`](crate::Service::start) runs in: it is cancelled when a
/// shutdown is requested (its [`StopSignal`] fires) or when its deadline passes.
///
/// A start must return promptly once its context is cancelled. It receives the context by
/// reference and cannot keep it (the type is not `Clone`); a worker that must outlive the start
/// takes its own [`StopSignal`] instead.
///
/// ```
/// use std::time::Duration;
/// use lifecycle::{ErrorKind, StartContext, StopSignal};
///
/// let shutdown = StopSignal::new();
/// let ctx = StartContext::new(shutdown.clone(), Some(Duration::from_secs(30)));
/// assert!(ctx.check("db").is_ok());
///
/// shutdown.stop();
/// assert!(ctx.is_cancelled());
/// assert_eq!(ctx.check("db").unwrap_err().kind(), ErrorKind::Cancelled);
/// ```
pub struct StartContext {
    stop: StopSignal,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    handle: Option<RunHandle>,
}

impl StartContext {
    /// A context cancelled when `stop` fires or, if `timeout` is given, when that much time has
    /// passed from now.
    pub fn new(stop: StopSignal, timeout: Option<Duration>) -> StartContext {
        StartContext {
            stop,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            timeout,
            handle: None,
        }
    }

    /// This context, for a service that a [`Runner`](crate::Runner) starts with `handle`.
    pub(crate) fn with_handle(mut self, handle: RunHandle) -> StartContext {
        self.handle = Some(handle);
        self
    }

    /// The handle of the [`Runner`](crate::Runner) that starts the service, if one does: a
    /// service whose work fails after its start reports it with [`RunHandle::fatal`], which
    /// shuts the program down. `None` under [`MultiStart`](crate::MultiStart) and in tests.
    pub fn run_handle(&self) -> Option<&RunHandle> {
        self.handle.as_ref()
    }

    /// A context that is never cancelled: for tests and for programs without a shutdown signal.
    pub fn background() -> StartContext {
        StartContext::new(StopSignal::new(), None)
    }

    /// The instant after which the start counts as timed out, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline (`None` without a deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether a shutdown was requested or the deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.stop.is_stopped() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// `Ok` while the context is live; otherwise the error a start should return: of kind
    /// [`Cancelled`](crate::ErrorKind::Cancelled) after a shutdown request, or
    /// [`TimedOut`](crate::ErrorKind::TimedOut) after the deadline, naming `service`.
    ///
    /// # Errors
    ///
    /// When the context is cancelled, as above.
    pub fn check(&self, service: &str) -> Result<()> {
        if self.stop.is_stopped() {
            return Err(Error::cancelled(service, Phase::Start));
        }
        match (self.deadline, self.timeout) {
            (Some(d), Some(t)) if Instant::now() >= d => {
                Err(Error::timed_out(service, Phase::Start, t))
            }
            _ => Ok(()),
        }
    }

    /// The error of a start that gave up waiting for readiness because the context was
    /// cancelled: a timeout, with the last readiness error, or a cancellation.
    pub(crate) fn gave_up(&self, service: &str, last: Error) -> Error {
        match self.check(service) {
            Err(e) if e.is_timeout() => {
                let after = self.timeout.unwrap_or_default();
                Error::timed_out_after(service, Phase::Start, after, last)
            }
            Err(e) => e,
            Ok(()) => Error::cancelled(service, Phase::Start),
        }
    }

    /// Waits until the context is cancelled or `timeout` passes, whichever is first; returns
    /// whether it is cancelled.
    ///
    /// Use it for a retry delay inside a start: it never sleeps past a shutdown request or the
    /// deadline.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until_deadline = self.remaining().unwrap_or(Duration::MAX);
        if self.stop.wait_timeout(timeout.min(until_deadline)) {
            return true;
        }
        self.is_cancelled()
    }

    /// A receiver that becomes disconnected when a shutdown is requested, for `select!`.
    ///
    /// It does not fire at the deadline: select on
    /// `crossbeam_channel::at(deadline)` as well where the deadline matters.
    pub fn receiver(&self) -> &Receiver<()> {
        self.stop.receiver()
    }
}

impl fmt::Debug for StartContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartContext")
            .field("stopped", &self.stop.is_stopped())
            .field("remaining", &self.remaining())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crossbeam_channel::select;

    #[test]
    fn stop_is_idempotent_and_seen_by_clones() {
        let s = StopSignal::new();
        let c = s.clone();
        assert!(!c.is_stopped());
        assert!(!c.wait_timeout(Duration::ZERO));
        assert!(s.stop());
        assert!(!s.stop());
        assert!(c.is_stopped());
        assert!(c.wait_timeout(Duration::from_secs(3600)));
        c.wait();
    }

    #[test]
    fn receiver_wakes_select_in_other_thread() {
        let s = StopSignal::new();
        let (tx, rx) = crossbeam_channel::bounded::<u32>(0);
        std::thread::scope(|scope| {
            let s2 = s.clone();
            let h = scope.spawn(move || {
                let mut got = 0;
                loop {
                    select! {
                        recv(rx) -> v => got += v.unwrap(),
                        recv(s2.receiver()) -> _ => return got,
                    }
                }
            });
            tx.send(2).unwrap();
            tx.send(3).unwrap();
            s.stop();
            assert_eq!(h.join().unwrap(), 5);
        });
    }

    #[test]
    fn start_context_deadline_and_stop() {
        let ctx = StartContext::new(StopSignal::new(), Some(Duration::ZERO));
        assert!(ctx.is_cancelled());
        assert_eq!(ctx.check("x").unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(ctx.wait_timeout(Duration::from_secs(3600)));

        let bg = StartContext::background();
        assert!(!bg.is_cancelled());
        assert!(bg.remaining().is_none());
        assert!(!bg.wait_timeout(Duration::from_millis(1)));
    }
}

//! [`Thread`]: a named, owned thread whose end can be awaited with a deadline, and that is
//! abandoned, by name, when it does not end in time.
//!
//! `std` offers no `join_timeout`. Here the thread sends what its function returned on a
//! channel of capacity one and then drops the sending side, so the owner can wait for the
//! value with a deadline, `select!` on it, and join the thread knowing the join will not wait
//! for user code. Every call into user code that the crate must be able to give up on runs on
//! one, or on a thread of a [`CallPool`](crate::pool::CallPool) (the runner's starts and
//! closes, the checker's polls): the runner's cleanups, the checker's poller, the endpoint's
//! scrape thread, the metrics producers, the test harness's starts and closes.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, Phase};

/// `now + d`, saturating about a century ahead instead of overflowing: a deadline from any
/// `Duration` a user gives, `Duration::MAX` included.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// What became of a call run by [`call_within`].
pub(crate) enum Called<T> {
    /// It returned this in time.
    Returned(T),
    /// It could not run, or its thread ended without a value (a panic escaped the function).
    Failed(Error),
    /// It did not return in time: the error says so and names the thread, which is left running
    /// and handed back, to be joined if it ends later.
    Stuck(Abandoned, Error),
}

/// Runs `f`, the `phase` of `service` (a close, a cleanup), on a thread called
/// `"{phase} {service}"`, and waits for it at most `bound`. Every error names the service and
/// the phase; a call that did not return in time is of kind
/// [`TimedOut`](crate::ErrorKind::TimedOut).
pub(crate) fn call_within<T: Send + 'static>(
    service: &str,
    phase: Phase,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Called<T> {
    let deadline = later(Instant::now(), bound);
    let thread = match Thread::spawn(format!("{phase} {service}"), f) {
        Ok(thread) => thread,
        Err(e) => return Called::Failed(Error::from(e).in_service(service, phase)),
    };
    match thread.join_until(deadline) {
        Ok(Some(value)) => Called::Returned(value),
        Ok(None) => {
            let e = Error::msg("its thread ended without a result");
            Called::Failed(e.in_service(service, phase))
        }
        Err(thread) => {
            let note = format!("thread {:?} is left running", thread.name());
            let e = Error::timed_out_noting(service, phase, bound, note);
            Called::Stuck(thread.abandon(), e)
        }
    }
}

/// A thread name from `name`: a NUL byte, which `std` refuses in a name, becomes `?`.
pub(crate) fn thread_name(name: String) -> String {
    if name.contains('\0') {
        name.replace('\0', "?")
    } else {
        name
    }
}

/// A named thread running one function, owned: it is joined once it has ended, or handed over
/// by [`abandon`](Thread::abandon) when its owner gives up waiting.
pub(crate) struct Thread<T> {
    name: String,
    handle: JoinHandle<()>,
    result: Receiver<T>,
}

impl<T: Send + 'static> Thread<T> {
    /// Runs `f` on a new thread called `name`.
    ///
    /// Wrap user code in `catch_unwind` inside `f`: a panic only loses the value, which the
    /// owner then sees as a thread that ended without one.
    ///
    /// # Errors
    ///
    /// When the thread cannot be spawned.
    pub(crate) fn spawn(name: String, f: impl FnOnce() -> T + Send + 'static) -> io::Result<Self> {
        let name = thread_name(name);
        let (tx, result) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Sent after `f` and everything it captured are gone; the sender goes last.
                let _ = tx.send(f());
            })?;
        Ok(Thread {
            name,
            handle,
            result,
        })
    }
}

impl<T> Thread<T> {
    /// The thread's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The channel the value arrives on, for `select!`; it disconnects when the thread ends.
    /// Once a value has been received from it, [`join`](Thread::join) the thread.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn receiver(&self) -> &Receiver<T> {
        &self.result
    }

    /// Joins the thread if it ends before `deadline`, returning its value if it gave one (a
    /// thread whose function panicked gives none); gives the thread back otherwise.
    pub(crate) fn join_until(self, deadline: Instant) -> Result<Option<T>, Thread<T>> {
        match self.result.recv_deadline(deadline) {
            Ok(value) => {
                self.join();
                Ok(Some(value))
            }
            // The sender is gone: the thread is past its function, so the join does not wait
            // for user code.
            Err(RecvTimeoutError::Disconnected) => Ok(self.join()),
            Err(RecvTimeoutError::Timeout) => Err(self),
        }
    }

    /// Joins the thread, waiting for it without a bound of its own, and returns its value if it
    /// gave one that was not received yet. A panic that escaped the thread's function is
    /// logged.
    ///
    /// Joining first and taking the value after costs one wait, where receiving it and then
    /// joining costs two (BENCHMARKS.md, the closure worker's close).
    pub(crate) fn join(self) -> Option<T> {
        if self.handle.join().is_err() {
            crate::relay::warn!("thread {:?} panicked", self.name);
        }
        // Sent before the thread's function returned, so it is there now if it ever was.
        self.result.try_recv().ok()
    }

    /// Gives up waiting: the thread is still running user code that did not return in time.
    pub(crate) fn abandon(self) -> Abandoned {
        Abandoned {
            name: self.name,
            held: Held::Thread(self.handle),
        }
    }
}

impl<T> fmt::Debug for Thread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread").field("name", &self.name).finish()
    }
}

/// A thread whose owner gave up waiting for it, kept so that it can still be joined (and named
/// in reports) if it ends later.
///
/// For a call of a [`CallPool`](crate::pool::CallPool), the thread is the pool's: it is
/// "joined" once the call has ended, and the pool joins the thread itself.
#[derive(Debug)]
pub(crate) struct Abandoned {
    pub(crate) name: String,
    held: Held,
}

#[derive(Debug)]
enum Held {
    Thread(JoinHandle<()>),
    /// Set when the pool's call has ended.
    Call(Arc<AtomicBool>),
}

impl Abandoned {
    /// The call `name` of a pool, which sets `ended` once it has ended.
    pub(crate) fn call(name: String, ended: Arc<AtomicBool>) -> Abandoned {
        Abandoned {
            name,
            held: Held::Call(ended),
        }
    }

    /// Joins the thread if it has ended since it was abandoned; gives it back if not.
    pub(crate) fn try_join(self) -> Result<(), Abandoned> {
        match self.held {
            Held::Thread(handle) if handle.is_finished() => {
                let _ = handle.join();
                Ok(())
            }
            Held::Call(ended) if ended.load(Ordering::Acquire) => Ok(()),
            held => Err(Abandoned {
                name: self.name,
                held,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_arrives_and_the_thread_is_joined() {
        let t = Thread::spawn("thread test".into(), || 7).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(t.join_until(far).ok(), Some(Some(7)));
    }

    #[test]
    fn a_hung_thread_is_given_back_then_joined_once_it_ends() {
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let t = Thread::spawn("thread hang".into(), move || {
            let _ = release_rx.recv();
            5
        })
        .unwrap();
        let t = t.join_until(Instant::now()).unwrap_err();
        assert_eq!(t.name(), "thread hang");
        release_tx.send(()).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(t.join_until(far).ok(), Some(Some(5)));
    }

    #[test]
    fn an_abandoned_thread_is_joined_once_it_has_ended() {
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let t = Thread::spawn("thread abandoned".into(), move || {
            let _ = release_rx.recv();
        })
        .unwrap();
        // The receiver is kept to learn when the thread has sent its value.
        let result = t.receiver().clone();
        let mut abandoned = t.abandon();
        assert_eq!(abandoned.name, "thread abandoned");
        release_tx.send(()).unwrap();
        result.recv_timeout(Duration::from_secs(30)).unwrap();
        // Past its value the thread only returns: joining it then waits for no user code.
        let watchdog = Instant::now() + Duration::from_secs(30);
        loop {
            match abandoned.try_join() {
                Ok(()) => break,
                Err(back) => {
                    assert!(Instant::now() < watchdog, "the thread never ended");
                    abandoned = back;
                    std::thread::yield_now();
                }
            }
        }
    }

    #[test]
    fn a_thread_that_panics_ends_without_a_value() {
        let t = Thread::<()>::spawn("thread panic".into(), || panic!("boom")).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert!(matches!(t.join_until(far), Ok(None)));
    }
}

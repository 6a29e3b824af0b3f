//! A call into user code on a named thread of its own, so that the caller can wait for it with
//! a bound and give up on it if it hangs.

use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// A call running on its own thread. The thread is owned: it is joined once its result has been
/// taken, and [`Pending::abandon`] hands it over when the caller gives up waiting.
pub(crate) struct Pending<T> {
    result: Receiver<T>,
    thread: JoinHandle<()>,
}

/// A call whose caller gave up waiting: its thread is still running user code that did not
/// return in time.
#[derive(Debug)]
pub(crate) struct Abandoned {
    pub(crate) thread_name: String,
    pub(crate) thread: JoinHandle<()>,
}

impl<T: Send + 'static> Pending<T> {
    /// Runs `f` on a new thread named `thread_name`.
    ///
    /// `f` must not panic (wrap user code with `catch_unwind` inside it): a panic would only lose
    /// the result, which the caller then sees as a call that never returned.
    pub(crate) fn spawn(
        thread_name: String,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Pending<T>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let _ = tx.send(f());
            })?;
        Ok(Pending { result: rx, thread })
    }

    /// The channel the result arrives on, for `select!`. Once a result has been received from it,
    /// call [`Pending::finish`].
    pub(crate) fn receiver(&self) -> &Receiver<T> {
        &self.result
    }

    /// Joins the thread after its result was received through [`Pending::receiver`].
    pub(crate) fn finish(self) {
        let _ = self.thread.join();
    }

    /// Waits for the result until `deadline`, joining the thread when it arrives; gives the call
    /// back if the deadline passes first.
    pub(crate) fn wait_until(self, deadline: Instant) -> Result<T, Pending<T>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.result.recv_timeout(timeout) {
            Ok(value) => {
                let _ = self.thread.join();
                Ok(value)
            }
            Err(RecvTimeoutError::Timeout) => Err(self),
            // The thread ended without a result (it panicked outside the guarded call): the caller
            // abandons it like a hung call, and the thread, already finished, is joined then.
            Err(RecvTimeoutError::Disconnected) => Err(self),
        }
    }

    /// Gives up on the call, keeping its thread's handle so that it can still be joined if it
    /// ends later.
    pub(crate) fn abandon(self) -> Abandoned {
        Abandoned {
            thread_name: self.thread.thread().name().unwrap_or("?").to_owned(),
            thread: self.thread,
        }
    }
}

impl Abandoned {
    /// Joins the thread if it has ended since it was abandoned; returns whether it had.
    pub(crate) fn try_join(self) -> Result<(), Abandoned> {
        if self.thread.is_finished() {
            let _ = self.thread.join();
            Ok(())
        } else {
            Err(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn result_arrives_and_thread_is_joined() {
        let p = Pending::spawn("call test".into(), || 7).unwrap();
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(p.wait_until(far).ok(), Some(7));
    }

    #[test]
    fn a_hung_call_is_given_back_then_abandoned_and_joined_later() {
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let p = Pending::spawn("call hang".into(), move || {
            let _ = release_rx.recv();
        })
        .unwrap();
        let p = p.wait_until(Instant::now()).unwrap_err();
        let abandoned = p.abandon();
        assert_eq!(abandoned.thread_name, "call hang");
        release_tx.send(()).unwrap();
        let mut a = abandoned;
        // The thread ends soon after being released; poll until it has (bounded by the watchdog).
        let watchdog = Instant::now() + Duration::from_secs(10);
        loop {
            match a.try_join() {
                Ok(()) => break,
                Err(back) if Instant::now() < watchdog => {
                    a = back;
                    std::thread::yield_now();
                }
                Err(_) => panic!("released call did not end"),
            }
        }
    }
}

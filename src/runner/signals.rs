//! Process-wide signal routing: SIGINT and SIGTERM, delivered to the runner that runs now.
//!
//! # What each signal does
//!
//! | signal | while a runner holds the route | with no route held |
//! | --- | --- | --- |
//! | SIGINT, SIGTERM (first) | a graceful shutdown | its default: the process ends |
//! | SIGINT, SIGTERM (second) | exit at once with [`SECOND_SIGNAL_EXIT_CODE`] | its default |
//! | SIGINT or SIGTERM inherited ignored | ignored: never handled | ignored |
//! | SIGHUP, SIGQUIT, others | untouched: their inherited dispositions | untouched |
//!
//! A signal the process inherited as ignored stays ignored: a background job of a
//! non-interactive shell starts with SIGINT ignored, and `nohup` ignores SIGHUP. SIGHUP is not
//! handled at all (by default it ends the process without a shutdown; under `nohup` it is
//! ignored); SIGQUIT keeps its default (a core dump), which is what an operator sends it for.
//!
//! # How
//!
//! The dispositions are read and the handlers installed (with `signal-hook`) the first time a
//! runner claims the route, and stay for the life of the process: a handler that `signal-hook`
//! removes leaves the signal ignored, so it is never removed. Its permanent action runs the
//! signal's default when no route is held, as if there were no handler.
//!
//! Two identical signals that arrive before the route thread takes the first can be merged into
//! one by `signal-hook` (as the kernel merges pending standard signals): a double Ctrl-C faster
//! than the thread wakes may count once.
//!
//! A route is held by one runner at a time. While held, a thread of the route's,
//! `lifecycle signals`, takes the signals from `signal-hook`'s self-pipe and routes them: the
//! first becomes an event on a channel; the second exits the process at once. That path never
//! waits on a lock user code holds or on the log sink: its line goes through the
//! [`relay`](crate::relay), which it flushes for at most [`EXIT_FLUSH`], and it exits with
//! `_exit`, which runs no exit handlers (a standard output stuck on a full pipe would block
//! their flush). Releasing the route ends and joins the thread.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use libc::c_int;
use parking_lot::Mutex;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::error::Error;
use crate::thread::later;

const SECOND_SIGNAL_EXIT_CODE: i32 = super::Runner::SECOND_SIGNAL_EXIT_CODE;
/// The signals a runner handles, unless the process inherited them ignored.
const HANDLED: [c_int; 2] = [SIGINT, SIGTERM];
/// How long the second-signal exit waits for its log line to be written.
pub(crate) const EXIT_FLUSH: Duration = Duration::from_millis(100);
/// The route thread's name.
const THREAD_NAME: &str = "lifecycle signals";

struct Route {
    id: u64,
    events: Sender<c_int>,
    received: u32,
}

struct Router {
    next_id: u64,
    route: Option<Route>,
}

static ROUTER: Mutex<Router> = Mutex::new(Router {
    next_id: 1,
    route: None,
});

/// Whether a route is held: read by the permanent action, inside the signal handler.
static ROUTE_HELD: AtomicBool = AtomicBool::new(false);

/// The signals handled in this process (those not inherited ignored), decided once.
static INSTALLED: OnceLock<Result<Vec<c_int>, String>> = OnceLock::new();

/// A signal's name, for log lines.
pub(crate) fn signal_name(signal: c_int) -> &'static str {
    signal_hook::low_level::signal_name(signal).unwrap_or("a signal")
}

/// Whether the process inherited `signal` as ignored.
fn inherited_ignored(signal: c_int) -> io::Result<bool> {
    // SAFETY: sigaction with a null new action only reads the current one into `old`, which is
    // a valid, zeroed `sigaction` owned by this frame.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(old.sa_sigaction == libc::SIG_IGN)
    }
}

/// Reads the dispositions and installs the permanent actions: the signals to handle.
fn install() -> Result<Vec<c_int>, String> {
    let mut handled = Vec::new();
    for signal in HANDLED {
        let name = signal_name(signal);
        let ignored = inherited_ignored(signal)
            .map_err(|e| format!("cannot read the disposition of {name}: {e}"))?;
        if ignored {
            crate::relay::info!("{name} was inherited ignored: it stays ignored");
            continue;
        }
        // SAFETY: the action is async-signal-safe: an atomic load, and `signal-hook`'s
        // emulation of the default action, documented as async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || {
                if !ROUTE_HELD.load(Ordering::SeqCst) {
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                }
            })
        }
        .map_err(|e| format!("cannot install the handler of {name}: {e}"))?;
        handled.push(signal);
    }
    Ok(handled)
}

/// Routes one signal taken by the route thread of route `id`.
fn on_signal(id: u64, signal: c_int) {
    let mut router = ROUTER.lock();
    let Some(route) = router.route.as_mut().filter(|r| r.id == id) else {
        return;
    };
    route.received += 1;
    if route.received == 1 && route.events.try_send(signal).is_ok() {
        return;
    }
    drop(router);
    crate::relay::error!(
        "{}: a second termination signal: exiting at once with code {SECOND_SIGNAL_EXIT_CODE}",
        signal_name(signal)
    );
    crate::relay::flush(later(Instant::now(), EXIT_FLUSH));
    // SAFETY: `_exit` ends the process at once; it is always safe to call.
    unsafe { libc::_exit(SECOND_SIGNAL_EXIT_CODE) }
}

/// The right to receive the process's termination signals; released on drop.
pub(crate) struct SignalRoute {
    id: u64,
    events: Receiver<c_int>,
    /// Closes the route thread's signal iterator; `None` when no signal is handled.
    handle: Option<Handle>,
    thread: Option<JoinHandle<()>>,
}

impl SignalRoute {
    /// Installs the process's handlers if they are not installed yet, and claims the route.
    ///
    /// # Errors
    ///
    /// If another runner holds the route, or if the handlers or the route's thread cannot be
    /// set up.
    pub(crate) fn claim() -> Result<SignalRoute, Error> {
        let handled = match INSTALLED.get_or_init(install) {
            Ok(handled) => handled.clone(),
            Err(e) => return Err(Error::msg(e.clone())),
        };
        let mut router = ROUTER.lock();
        if router.route.is_some() {
            return Err(Error::msg(
                "another runner is handling signals in this process; \
                 run one at a time, or turn signal handling off for this one",
            ));
        }
        let id = router.next_id;
        router.next_id += 1;
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (handle, thread) = if handled.is_empty() {
            (None, None)
        } else {
            let mut signals = Signals::new(&handled)
                .map_err(|e| Error::msg(format!("cannot receive signals: {e}")))?;
            let handle = signals.handle();
            let thread = std::thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn(move || {
                    for signal in signals.forever() {
                        on_signal(id, signal);
                    }
                })
                .map_err(|e| Error::msg(format!("cannot start the signal thread: {e}")))?;
            (Some(handle), Some(thread))
        };
        router.route = Some(Route {
            id,
            events: tx,
            received: 0,
        });
        ROUTE_HELD.store(true, Ordering::SeqCst);
        Ok(SignalRoute {
            id,
            events: rx,
            handle,
            thread,
        })
    }

    /// A receiver that yields the first signal when it arrives.
    pub(crate) fn events(&self) -> &Receiver<c_int> {
        &self.events
    }
}

impl Drop for SignalRoute {
    fn drop(&mut self) {
        {
            let mut router = ROUTER.lock();
            if router.route.as_ref().is_some_and(|r| r.id == self.id) {
                router.route = None;
                ROUTE_HELD.store(false, Ordering::SeqCst);
            }
        }
        if let Some(handle) = self.handle.take() {
            handle.close();
        }
        if let Some(thread) = self.thread.take() {
            // The thread ends as soon as its iterator is closed: it waits on nothing else.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SignalRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalRoute").field("id", &self.id).finish()
    }
}

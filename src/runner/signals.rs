//! Process-wide signal routing: SIGINT and SIGTERM, delivered to the runner that runs now.
//!
//! # What each signal does
//!
//! | signal | while a runner holds the route | with no route held |
//! | --- | --- | --- |
//! | SIGINT, SIGTERM (first) | a graceful shutdown | its default: the process ends |
//! | SIGINT, SIGTERM (second) | exit at once with [`SECOND_SIGNAL_EXIT_CODE`] | its default |
//! | SIGINT or SIGTERM inherited ignored | ignored: never handled | ignored |
//! | SIGHUP, with upgrades on | in the run phase, an upgrade; else refused, with a log line | its default: the process ends |
//! | SIGHUP, with upgrades off | its default: the process ends | its default |
//! | SIGHUP inherited ignored | ignored: never handled | ignored |
//! | SIGQUIT, others | untouched: their inherited dispositions | untouched |
//!
//! A signal the process inherited as ignored stays ignored: a background job of a
//! non-interactive shell starts with SIGINT ignored, and `nohup` ignores SIGHUP. SIGHUP is
//! handled only once a runner with upgrades on ([`Runner::upgrade_on_sighup`](super::Runner))
//! claims the route, and then only while such a runner holds it: otherwise it does what it
//! would without a handler (by default it ends the process without a shutdown). SIGQUIT keeps
//! its default (a core dump), which is what an operator sends it for.
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
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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
    /// Where SIGHUP asks for an upgrade, with upgrades on.
    upgrades: Option<Sender<()>>,
    /// Whether the runner takes upgrades now (its run phase).
    upgrades_open: bool,
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
/// Whether the route held takes SIGHUP (its runner has upgrades on): read by SIGHUP's
/// permanent action.
static ROUTE_UPGRADES: AtomicBool = AtomicBool::new(false);

/// Whether SIGHUP is handled in this process (`false`: inherited ignored), decided the first
/// time a runner with upgrades on claims the route.
static HUP_INSTALLED: OnceLock<Result<bool, String>> = OnceLock::new();

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

/// Reads SIGHUP's disposition and, unless it was inherited ignored, installs its permanent
/// action, which does what the disposition did unless a route with upgrades on is held.
fn install_hup() -> Result<bool, String> {
    let name = signal_name(SIGHUP);
    let ignored = inherited_ignored(SIGHUP)
        .map_err(|e| format!("cannot read the disposition of {name}: {e}"))?;
    if ignored {
        crate::relay::info!(
            "{name} was inherited ignored: it stays ignored; upgrade through RunHandle::upgrade"
        );
        return Ok(false);
    }
    // SAFETY: as in `install`: atomic loads and `signal-hook`'s async-signal-safe emulation of
    // the default action.
    unsafe {
        signal_hook::low_level::register(SIGHUP, || {
            if !(ROUTE_HELD.load(Ordering::SeqCst) && ROUTE_UPGRADES.load(Ordering::SeqCst)) {
                let _ = signal_hook::low_level::emulate_default_handler(SIGHUP);
            }
        })
    }
    .map_err(|e| format!("cannot install the handler of {name}: {e}"))?;
    Ok(true)
}

/// Routes a SIGHUP taken by the route thread of route `id`: an upgrade asked for in the run
/// phase, refused with a log line otherwise. Never waits: the channel holds one request, and a
/// second while it is pending is the same request.
fn on_hangup(id: u64) {
    let router = ROUTER.lock();
    let Some(route) = router.route.as_ref().filter(|r| r.id == id) else {
        return;
    };
    let name = signal_name(SIGHUP);
    match (&route.upgrades, route.upgrades_open) {
        (Some(upgrades), true) => {
            if upgrades.try_send(()).is_err() {
                crate::relay::info!("{name}: an upgrade is already asked for");
            }
        }
        _ => crate::relay::warn!(
            "{name}: upgrade refused: the program is starting or shutting down (an upgrade \
             begins only in the run phase)"
        ),
    }
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
    /// SIGHUP's upgrade requests (never, with upgrades off or SIGHUP inherited ignored).
    upgrades: Receiver<()>,
    /// Closes the route thread's signal iterator; `None` when no signal is handled.
    handle: Option<Handle>,
    thread: Option<JoinHandle<()>>,
}

impl SignalRoute {
    /// Installs the process's handlers if they are not installed yet, and claims the route;
    /// with `upgrades`, SIGHUP's too, and the route takes it.
    ///
    /// # Errors
    ///
    /// If another runner holds the route, or if the handlers or the route's thread cannot be
    /// set up.
    pub(crate) fn claim(upgrades: bool) -> Result<SignalRoute, Error> {
        let mut handled = match INSTALLED.get_or_init(install) {
            Ok(handled) => handled.clone(),
            Err(e) => return Err(Error::msg(e.clone())),
        };
        let hup = upgrades
            && match HUP_INSTALLED.get_or_init(install_hup) {
                Ok(installed) => *installed,
                Err(e) => return Err(Error::msg(e.clone())),
            };
        if hup {
            handled.push(SIGHUP);
        }
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
        let (upgrades_tx, upgrades) = match hup {
            true => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                (Some(tx), rx)
            }
            false => (None, crossbeam_channel::never()),
        };
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
                        match signal {
                            SIGHUP => on_hangup(id),
                            _ => on_signal(id, signal),
                        }
                    }
                })
                .map_err(|e| Error::msg(format!("cannot start the signal thread: {e}")))?;
            (Some(handle), Some(thread))
        };
        router.route = Some(Route {
            id,
            events: tx,
            received: 0,
            upgrades: upgrades_tx,
            upgrades_open: false,
        });
        ROUTE_UPGRADES.store(hup, Ordering::SeqCst);
        ROUTE_HELD.store(true, Ordering::SeqCst);
        Ok(SignalRoute {
            id,
            events: rx,
            upgrades,
            handle,
            thread,
        })
    }

    /// A receiver that yields the first signal when it arrives.
    pub(crate) fn events(&self) -> &Receiver<c_int> {
        &self.events
    }

    /// A receiver that yields SIGHUP's upgrade requests, taken only while
    /// [`open_upgrades`](SignalRoute::open_upgrades) says so.
    pub(crate) fn upgrades(&self) -> &Receiver<()> {
        &self.upgrades
    }

    /// Whether SIGHUP asks for an upgrade now (the run phase), or is refused with a log line.
    pub(crate) fn open_upgrades(&self, open: bool) {
        let mut router = ROUTER.lock();
        if let Some(route) = router.route.as_mut().filter(|r| r.id == self.id) {
            route.upgrades_open = open;
        }
    }
}

impl Drop for SignalRoute {
    fn drop(&mut self) {
        {
            let mut router = ROUTER.lock();
            if router.route.as_ref().is_some_and(|r| r.id == self.id) {
                router.route = None;
                ROUTE_HELD.store(false, Ordering::SeqCst);
                ROUTE_UPGRADES.store(false, Ordering::SeqCst);
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

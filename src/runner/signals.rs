//! Process-wide signal routing: one `ctrlc` handler for the whole process, delivering SIGINT,
//! SIGTERM (and SIGHUP, which `ctrlc`'s `termination` feature also catches) to the runner that is
//! running now.
//!
//! `ctrlc` allows one handler per process, and it cannot be removed. So the handler is installed
//! the first time a runner asks for signals, and from then on it routes each signal:
//!
//! - to the runner that holds the route (a [`SignalRoute`]), as an event on a channel: the first
//!   signal asks for a graceful shutdown;
//! - the second signal a route receives exits the process at once with
//!   [`SECOND_SIGNAL_EXIT_CODE`], as operators expect from a second Ctrl-C;
//! - with no route held (between runs, or after the last one), a signal exits the process with
//!   the same code, which is what the signal would have done without a handler.
//!
//! Only one route is held at a time: a second runner asking for signals while one holds the route
//! gets an error, not a panic.
//!
//! The handler is installed with `ctrlc::set_handler`, which replaces the signals' current
//! dispositions, including an inherited "ignore" (a background job of a non-interactive shell
//! starts with SIGINT ignored). It fails only if the program already installed a `ctrlc` handler
//! of its own.

use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::Error;

const SECOND_SIGNAL_EXIT_CODE: i32 = super::Runner::SECOND_SIGNAL_EXIT_CODE;

struct Route {
    id: u64,
    events: Sender<()>,
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

static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn on_signal() {
    let mut router = ROUTER.lock();
    if let Some(route) = router.route.as_mut() {
        route.received += 1;
        if route.received == 1 && route.events.send(()).is_ok() {
            return;
        }
        log::error!(
            "second termination signal: exiting at once with code {SECOND_SIGNAL_EXIT_CODE}"
        );
    }
    drop(router);
    std::process::exit(SECOND_SIGNAL_EXIT_CODE);
}

/// The right to receive the process's termination signals; released on drop.
pub(crate) struct SignalRoute {
    id: u64,
    events: Receiver<()>,
}

impl SignalRoute {
    /// Installs the process's handler if it is not installed yet, and claims the route.
    ///
    /// # Errors
    ///
    /// If another runner holds the route, or if the handler cannot be installed (for example
    /// because the program installed a `ctrlc` handler of its own).
    pub(crate) fn claim() -> Result<SignalRoute, Error> {
        let installed = INSTALLED.get_or_init(|| {
            ctrlc::set_handler(on_signal)
                .map_err(|e| format!("cannot install the signal handler: {e}"))
        });
        if let Err(e) = installed {
            return Err(Error::msg(e.clone()));
        }
        let mut router = ROUTER.lock();
        if router.route.is_some() {
            return Err(Error::msg(
                "another runner is handling signals in this process; \
                 run one at a time, or disable signal handling for this one",
            ));
        }
        let id = router.next_id;
        router.next_id += 1;
        let (tx, rx) = crossbeam_channel::bounded(1);
        router.route = Some(Route {
            id,
            events: tx,
            received: 0,
        });
        Ok(SignalRoute { id, events: rx })
    }

    /// A receiver that yields once when the first signal arrives.
    pub(crate) fn events(&self) -> &Receiver<()> {
        &self.events
    }
}

impl Drop for SignalRoute {
    fn drop(&mut self) {
        let mut router = ROUTER.lock();
        if router.route.as_ref().is_some_and(|r| r.id == self.id) {
            router.route = None;
        }
    }
}

impl std::fmt::Debug for SignalRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalRoute").field("id", &self.id).finish()
    }
}

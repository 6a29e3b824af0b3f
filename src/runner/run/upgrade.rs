//! A run's upgrades (see [Upgrades](crate::Runner#upgrades)): in the run phase, one at a time,
//! the program's executable started again with the listening sockets, on a thread of the run's
//! (`lifecycle upgrade`) that waits, bounded, for the new process to say it is ready; the
//! runner thread only selects on its outcome. Ready, it ends the run phase with
//! [`ShutdownCause::Upgraded`], and the shutdown hands over (`handover`); a failure is logged
//! and counted, and the run goes on. In a process that an upgrade started, the run phase's
//! beginning is what tells the old process (`tell_parent`).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::relay;
use crate::stop::StopSignal;
use crate::thread::{later, Thread};
use crate::upgrade::{self, Command, Inherit, Readiness};

use super::super::ShutdownCause;
use super::Run;

/// How long a new process that is given up on has, after SIGTERM, before SIGKILL: time to roll
/// back its start (its services may have accepted connections, which their closes finish).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// The most the shutdown waits for an upgrade in progress to end (its new process killed and
/// reaped) beyond the kill grace; past it the thread is abandoned.
const JOIN_SLACK: Duration = Duration::from_secs(1);

/// What an upgrade's thread came to.
pub(super) enum Outcome {
    /// The new process, by id, is ready: it serves from now on.
    Ready(u32),
    /// It did not become ready (the error says why); it was killed and reaped.
    Failed(Error),
}

/// An upgrade in progress.
pub(super) struct Upgrading {
    thread: Thread<Outcome>,
    /// Cancels it: the new process is killed.
    cancel: StopSignal,
}

impl Upgrading {
    /// The receiver of its outcome, for the runner thread's `select`.
    pub(super) fn outcome(&self) -> &crossbeam_channel::Receiver<Outcome> {
        self.thread.receiver()
    }
}

/// What an upgrade hands to the new process: the listening sockets, each a descriptor of its
/// own, by name.
fn listeners(run: &Run) -> Result<Vec<(String, OwnedFd)>, Error> {
    let mut all = crate::systemd::named::live();
    if let Some(endpoint) = run.health.as_ref().and_then(|h| h.endpoint()) {
        match (endpoint.socket_name(), endpoint.listener_fd()) {
            (Some(name), Some(fd)) => {
                // SAFETY: the endpoint's listener is open while it serves, and the runner
                // thread, which alone closes or hands it over, is here.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let fd = fd.try_clone_to_owned().map_err(|e| {
                    Error::msg(format!(
                        "cannot hand over the health endpoint's socket: {e}"
                    ))
                })?;
                all.retain(|(n, _)| n != name);
                all.push((name.to_owned(), fd));
            }
            (None, Some(_)) => {
                return Err(Error::msg(
                    "the health endpoint binds its address whatever it is passed \
                     (EndpointOptions::socket_activation(None)): the new process could not \
                     take its socket; give it a name",
                ))
            }
            _ => {}
        }
    }
    Ok(all)
}

/// The upgrade's thread: starts the new process and waits, until `timeout` or `cancel`, for it
/// to say it is ready; kills it otherwise.
fn upgrade(listeners: Vec<(String, OwnedFd)>, timeout: Duration, cancel: StopSignal) -> Outcome {
    let failed = |why: String| Outcome::Failed(Error::msg(format!("upgrade failed: {why}")));
    let program = match upgrade::current_program() {
        Ok(program) => program,
        Err(e) => return failed(format!("cannot find the program's executable: {e}")),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from(program));
    let command = Command {
        program,
        arg0,
        args: args.collect(),
        env: std::env::vars_os().collect(),
        listeners: (listeners.iter())
            .map(|(name, fd)| Inherit {
                name,
                fd: fd.as_fd(),
            })
            .collect(),
    };
    let began = Instant::now();
    let mut child = match upgrade::spawn(command) {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start {}: {e}", program.display())),
    };
    drop(listeners);
    let pid = child.pid();
    relay::info!("upgrade: started pid {pid}; waiting for it to be ready (within {timeout:?})");
    let why = match child.wait_ready(later(began, timeout), &cancel) {
        Readiness::Ready => {
            child.release();
            return Outcome::Ready(pid);
        }
        Readiness::Exited(status) => {
            return failed(format!("pid {pid} {status} before it was ready"))
        }
        Readiness::TimedOut => format!("pid {pid} was not ready within {timeout:?}"),
        Readiness::Stopped => format!("pid {pid} was given up on: the program is shutting down"),
    };
    match child.kill(KILL_GRACE) {
        Ok(status) => failed(format!("{why}; killed ({status})")),
        Err(e) => failed(format!("{why}; cannot kill it: {e}")),
    }
}

impl Run {
    /// An upgrade asked for in the run phase (`by` SIGHUP or the handle): begins it, unless one
    /// is in progress.
    pub(super) fn begin_upgrade(&mut self, by: &str) {
        if self.upgrading.is_some() {
            relay::warn!("{by}: upgrade refused: an upgrade is in progress (one at a time)");
            return;
        }
        relay::info!("{by}: upgrading: starting the program again with its listening sockets");
        let listeners = match listeners(self) {
            Ok(listeners) => listeners,
            Err(e) => {
                relay::error!("upgrade failed: {e}");
                self.table.count_upgrade(false);
                return;
            }
        };
        let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
        relay::debug!("upgrade: handing over {}", names.join(", "));
        let timeout = self.runner.upgrade.timeout;
        let cancel = StopSignal::new();
        let stop = cancel.clone();
        match Thread::spawn("lifecycle upgrade".to_owned(), move || {
            upgrade(listeners, timeout, stop)
        }) {
            Ok(thread) => self.upgrading = Some(Upgrading { thread, cancel }),
            Err(e) => {
                relay::error!("upgrade failed: cannot start its thread: {e}");
                self.table.count_upgrade(false);
            }
        }
    }

    /// The outcome of the upgrade in progress: the cause that ends the run phase, if it does.
    pub(super) fn upgrade_ended(&mut self, outcome: Option<Outcome>) -> Option<ShutdownCause> {
        let upgrading = self.upgrading.take()?;
        // Its value was sent (or it panicked): the thread is past its function.
        upgrading.thread.join();
        match outcome {
            Some(Outcome::Ready(pid)) => {
                relay::info!("upgrade: pid {pid} is ready: handing over to it");
                self.table.count_upgrade(true);
                Some(ShutdownCause::Upgraded { pid })
            }
            Some(Outcome::Failed(e)) => {
                relay::error!("{e}; this process goes on serving");
                self.table.count_upgrade(false);
                None
            }
            None => {
                relay::error!("upgrade failed: its thread panicked; this process goes on serving");
                self.table.count_upgrade(false);
                None
            }
        }
    }

    /// Gives up on an upgrade still in progress as the run phase ends for another cause: its
    /// new process is killed (SIGTERM, then SIGKILL), on the upgrade's thread, while the
    /// shutdown goes on; [`join_upgrade`](Run::join_upgrade) waits for that at its end.
    pub(super) fn cancel_upgrade(&mut self) {
        if let Some(upgrading) = &self.upgrading {
            relay::info!("upgrade: given up on: the program is shutting down");
            upgrading.cancel.stop();
        }
    }

    /// At the end of the shutdown: joins the thread of an upgrade given up on, until `deadline`
    /// at most (and no longer than the kill grace and a second); past it the thread is
    /// abandoned, and its new process is killed when it gets there.
    pub(super) fn join_upgrade(&mut self, deadline: Instant) {
        let Some(upgrading) = self.upgrading.take() else {
            return;
        };
        let bound = later(Instant::now(), KILL_GRACE + JOIN_SLACK).min(deadline);
        match upgrading.thread.join_until(bound) {
            Ok(Some(Outcome::Failed(e))) => relay::info!("{e}"),
            Ok(Some(Outcome::Ready(pid))) => {
                // Ready as the shutdown began for another cause: the program is to end, so the
                // new process is asked to shut down too (gracefully: it may serve already).
                relay::warn!(
                    "upgrade: pid {pid} became ready as this process began shutting down: \
                     sending it SIGTERM"
                );
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill(2) only sends a signal; `pid` is a child of this process
                    // that was never reaped, so its id names no other process.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            Ok(None) => relay::warn!("upgrade: its thread panicked"),
            Err(thread) => {
                let name = thread.name().to_owned();
                self.abandoned.push(thread.abandon());
                relay::warn!("upgrade: {name:?} did not end within its bound; leaving it");
            }
        }
        self.table.count_upgrade(false);
    }

    /// The shutdown of a run that handed over to the new process `pid`: systemd is told that
    /// `pid` is the service's main process (and nothing more after that: this process is no
    /// longer the one it watches), the watchdog's pings stop (the new process sends its own),
    /// and the health endpoint stops accepting and drains its connections, answered with
    /// `Connection: close`, for at most half the shutdown timeout (the drain's share), before
    /// the services close as in any shutdown.
    pub(super) fn hand_over(&mut self, pid: u32, deadline: Instant) {
        let status = format!("upgraded: pid {pid} serves; this process drains and exits");
        self.notes.handed_over(pid, status);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.stop();
        }
        let Some(h) = &self.health else {
            return;
        };
        let bound = later(Instant::now(), self.runner.shutdown_timeout / 2).min(deadline);
        if h.hand_over(bound) {
            relay::info!("upgrade: the health endpoint's connections are drained");
        } else {
            relay::info!("upgrade: the health endpoint's connections left open are closed");
        }
    }

    /// Before anything starts: the program's executable is found now (later, the file at its
    /// path may have been replaced, which is the point of an upgrade, or the working directory
    /// changed), and in a process that an upgrade started, the health endpoint will start with
    /// accepting paused.
    pub(super) fn prepare_upgrades(&mut self) {
        if let Err(e) = upgrade::current_program() {
            if self.runner.upgrade.on_sighup {
                relay::warn!("upgrades will fail: cannot find the program's executable: {e}");
            }
        }
        if let (Some(parent), Some(h)) = (upgrade::parent(), &self.health) {
            relay::info!(
                "started by an upgrade of pid {}: the health endpoint accepts once every \
                 service is ready",
                parent.pid()
            );
            h.pause_accepting();
        }
    }

    /// In a process that an upgrade started, once its run phase begins: its health endpoint
    /// begins accepting from the sockets it took, then the old process is told that this one
    /// is ready (it stops accepting and drains).
    pub(super) fn tell_parent(&mut self) {
        let Some(parent) = upgrade::parent() else {
            return;
        };
        if let Some(h) = &self.health {
            h.start_accepting();
        }
        match parent.tell_ready() {
            Ok(()) => relay::info!(
                "upgrade: told pid {} that this process serves",
                parent.pid()
            ),
            Err(e) => relay::warn!(
                "upgrade: cannot tell pid {} that this process serves ({e}); serving anyway",
                parent.pid()
            ),
        }
    }
}

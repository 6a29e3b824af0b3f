//! [`RunHandle`]: what services and other threads hold to ask a runner to shut down.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Sender};
use parking_lot::Mutex;

use crate::error::Error;
use crate::stop::StopSignal;

#[cfg(doc)]
use super::Runner;

pub(super) enum Request {
    Shutdown,
    /// [`RunHandle::upgrade`].
    Upgrade,
    Fatal(Error),
    /// Instance `generation` of restartable service `index` failed (its handle's
    /// [`RunHandle::fatal`]).
    Failed {
        index: usize,
        generation: u64,
        error: Error,
    },
    /// Instance `generation` of restartable service `index` finished its work without an error
    /// before it was told to stop (a [`Worker`](crate::Worker)'s closure returned `Ok`).
    Finished {
        index: usize,
        generation: u64,
    },
}

/// The instance a handle was given to: a restartable service's, by index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scope {
    pub(super) index: usize,
    pub(super) generation: u64,
}

/// A cloneable handle to a [`Runner`]: asks it to shut down, or reports a fatal error that stops
/// the whole program. Get one from [`Runner::handle`], or in a service's start from
/// [`StartContext::run_handle`](crate::StartContext::run_handle).
///
/// The handle a restartable service gets in its [`StartContext`](crate::StartContext) is its
/// instance's (see [`Runner::restartable`]): its [`fatal`](RunHandle::fatal) says that this
/// instance failed, and the runner restarts it as its options say, instead of shutting the
/// program down.
///
/// Calls after the run has ended do nothing.
#[derive(Clone)]
pub struct RunHandle {
    pub(super) requests: Sender<Request>,
    pub(super) shutting_down: StopSignal,
    // Fired (used as a one-shot latch) when every service is ready and the run phase begins.
    pub(super) running: StopSignal,
    pub(super) health_addr: Arc<Mutex<Option<SocketAddr>>>,
    /// The instance this handle was given to, for a restartable service's.
    pub(super) scope: Option<Scope>,
}

impl RunHandle {
    /// Asks the runner to shut down gracefully, as a signal would. Idempotent.
    pub fn shutdown(&self) {
        self.shutting_down.stop();
        let _ = self.requests.send(Request::Shutdown);
    }

    /// Asks the runner to upgrade the program in place, as SIGHUP does with
    /// [`Runner::upgrade_on_sighup`]: in the run phase, it starts the program's executable
    /// again with the listening sockets handed over, and once the new process is ready, drains
    /// and ends the run with [`ShutdownCause::Upgraded`](crate::ShutdownCause::Upgraded) (see
    /// [Upgrades](Runner#upgrades)). Works whether or not SIGHUP upgrades. Refused, with a log
    /// line, during the start, the shutdown, or another upgrade; a failed upgrade is logged and
    /// counted, and the program goes on.
    pub fn upgrade(&self) {
        let _ = self.requests.send(Request::Upgrade);
    }

    /// Reports a fatal error: the runner shuts down and the run fails with this error (in the run
    /// phase). Name the service with [`Error::in_service`] so the report says who failed. A
    /// [`Worker`](crate::Worker) whose closure fails does this itself.
    ///
    /// From the handle of a restartable service's instance (the one in its
    /// [`StartContext`](crate::StartContext), see [`Runner::restartable`]) it reports that this
    /// instance failed: the runner closes it and starts a fresh one after a backoff, within the
    /// restart budget, as the service's options say, and the program goes on (with the policy
    /// *never*, it shuts down as above). From an instance replaced since, it does nothing.
    pub fn fatal(&self, error: Error) {
        match self.scope {
            Some(Scope { index, generation }) => {
                let _ = (self.requests).send(Request::Failed {
                    index,
                    generation,
                    error,
                });
            }
            None => {
                self.shutting_down.stop();
                let _ = self.requests.send(Request::Fatal(error));
            }
        }
    }

    /// This handle, given to instance `generation` of restartable service `index`.
    pub(super) fn scoped(&self, index: usize, generation: u64) -> RunHandle {
        RunHandle {
            scope: Some(Scope { index, generation }),
            ..self.clone()
        }
    }

    /// Reports that the instance this handle was given to finished its work without an error
    /// before it was told to stop; nothing for a handle that is not an instance's.
    pub(crate) fn finished(&self) {
        if let Some(Scope { index, generation }) = self.scope {
            let _ = (self.requests).send(Request::Finished { index, generation });
        }
    }

    /// Whether a shutdown has been asked for through any handle, or has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_stopped()
    }

    /// The address the health endpoint listens on, once it has started (useful with port 0).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        *self.health_addr.lock()
    }

    /// Whether the run phase has begun: every service started and became ready. It stays `true`
    /// from then on, through the shutdown.
    pub fn has_run(&self) -> bool {
        self.running.is_stopped()
    }

    /// Waits until the run phase begins (every service ready), a shutdown begins first, or
    /// `timeout` passes; returns whether the run phase has begun. For tests and for code that
    /// must wait for the whole program to be up (the [`testing`](crate::testing) harness does
    /// this without a runner).
    ///
    /// Returns `false` at once when a shutdown was asked for or began before the run phase (a
    /// start failed, or a signal arrived during start): the run phase will not begin then.
    ///
    /// With health on, the run phase begins once the checker has polled every check with every
    /// service started (waiting at most 2 s for a check that is slow to answer), so when this
    /// returns `true` the endpoint's `/readyz` passes. Under systemd, `READY=1` has been sent
    /// by then (see [systemd](Runner#systemd)).
    pub fn wait_running(&self, timeout: Duration) -> bool {
        select! {
            recv(self.running.receiver()) -> _ => {}
            recv(self.shutting_down.receiver()) -> _ => {}
            default(timeout) => {}
        }
        self.running.is_stopped()
    }
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

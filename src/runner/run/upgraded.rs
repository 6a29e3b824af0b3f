//! The new process's side of an upgrade (see [Upgrades](crate::Runner#upgrades)): its health
//! endpoint starts with accepting paused, and once its run phase has begun and its readiness
//! passes, the endpoint accepts, the old process is told, and systemd hears from this one (not
//! before: the old one is the service's main process until then, and a `STOPPING=1` of a new
//! process that fails would stop the whole unit).

use std::time::{Duration, Instant};

use crate::relay;
use crate::thread::later;
use crate::upgrade;

use super::Run;

/// How often the run phase looks again whether readiness passes, until it tells the old
/// process.
pub(super) const TELL_TICK: Duration = Duration::from_millis(50);

impl Run {
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

    /// As the run phase begins, in a process that an upgrade started: from now on the run
    /// phase looks, every [`TELL_TICK`], whether readiness passes, and tells the old process
    /// when it does ([`try_tell`](Run::try_tell)), until the upgrade timeout.
    pub(super) fn begin_telling(&mut self) {
        if upgrade::parent().is_some() {
            self.telling = Some(later(Instant::now(), self.runner.upgrade.timeout));
            self.try_tell();
        }
    }

    /// When the run phase must look again, while it has not told the old process yet.
    pub(super) fn tell_due(&self) -> Option<Instant> {
        self.telling.map(|_| later(Instant::now(), TELL_TICK))
    }

    /// Tells the old process that this one serves, once readiness passes (every check ready,
    /// as `/readyz` judges): the endpoint begins accepting from the socket it took, the old
    /// process is told (it stops accepting and drains), systemd hears `READY=1`, and the PID
    /// file is written. Past the upgrade timeout it gives up: the old process, not told, kills
    /// this one.
    pub(super) fn try_tell(&mut self) {
        let (Some(until), Some(parent)) = (self.telling, upgrade::parent()) else {
            return;
        };
        // A termination signal or a shutdown request waits: this process is given up on (the
        // old one's SIGTERM) or is to end; the run phase takes it next, and the old one is
        // never told.
        if !self.signals.is_empty() || self.runner.handle.is_shutting_down() {
            return;
        }
        if let Some(h) = &self.health {
            let ready = h.checker().snapshot().is_ready();
            if !ready.is_passing() {
                if Instant::now() >= until {
                    self.telling = None;
                    relay::error!(
                        "upgrade: not ready within the upgrade timeout ({:?}): pid {} is not \
                         told, and ends this process",
                        self.runner.upgrade.timeout,
                        parent.pid()
                    );
                }
                return;
            }
            h.start_accepting();
        }
        self.telling = None;
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
        self.notes.told_parent();
        self.notes.ready();
        self.say_upgrades_open();
        if let Some(path) = &self.runner.upgrade.pid_file {
            if let Err(e) = super::super::pid_file::write(path) {
                relay::error!("{e}");
            }
        }
    }
}

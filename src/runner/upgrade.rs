//! The runner's upgrade settings: whether SIGHUP upgrades the program in place, the bound on
//! the new process's start, and the PID file (see [Upgrades](Runner#upgrades)).

use std::path::PathBuf;
use std::time::Duration;

use super::Runner;

/// How long a new process started by an upgrade may take to be ready, unless set otherwise
/// (tableflip's default).
pub(crate) const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a runner's upgrades are set to.
#[derive(Debug, Clone)]
pub(super) struct UpgradeSettings {
    /// Whether SIGHUP asks for an upgrade.
    pub(super) on_sighup: bool,
    /// The bound on the new process's start, until it says it is ready.
    pub(super) timeout: Duration,
    /// Where the process writes its id once it serves.
    pub(super) pid_file: Option<PathBuf>,
}

impl Default for UpgradeSettings {
    fn default() -> UpgradeSettings {
        UpgradeSettings {
            on_sighup: false,
            timeout: DEFAULT_UPGRADE_TIMEOUT,
            pid_file: None,
        }
    }
}

impl Runner {
    /// Whether SIGHUP upgrades the program in place (default `false`; Linux only): in the run
    /// phase, the runner starts the program's executable again, hands it the listening sockets
    /// and, once it is ready, drains and exits 0 (see [Upgrades](Runner#upgrades)).
    /// [`RunHandle::upgrade`](crate::RunHandle::upgrade) asks for the same without a signal.
    ///
    /// Off by default because SIGHUP also means "the terminal hung up": a program run from a
    /// shell that turns this on starts itself again, without a terminal, when its terminal
    /// closes. A SIGHUP the process inherited as ignored (`nohup`) stays ignored; with upgrades
    /// off, SIGHUP keeps its disposition (by default, it ends the process).
    pub fn upgrade_on_sighup(mut self, on: bool) -> Runner {
        self.upgrade.on_sighup = on;
        self
    }

    /// How long the new process of an upgrade may take to be ready (default 60 s): past it,
    /// it is killed and the program goes on serving. Any `Duration` is accepted.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Runner {
        self.upgrade.timeout = timeout;
        self
    }

    /// Writes the process's id to `path` once the run phase begins (replaced atomically: a
    /// reader sees the old id or the new one, never part of either), and removes it at the end
    /// of the run, unless the run ended by an upgrade, whose new process has written its own.
    /// For `ExecReload=kill -HUP $(cat PATH)` where `$MAINPID` is not at hand (systemd itself
    /// follows the new process through `MAINPID=`). The file is written in `path`'s directory
    /// (a temporary file there, then renamed), which must exist.
    ///
    /// A PID file that cannot be written fails the start: the supervisor that reads it would
    /// signal the wrong process.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Runner {
        self.upgrade.pid_file = Some(path.into());
        self
    }
}

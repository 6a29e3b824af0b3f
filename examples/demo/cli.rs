//! The demo's command line: its flags, `--help`, and `--print-config`, the settings the flags
//! give, which `tests/deploy_files.rs` checks the deployment files against.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{CHECK_INTERVAL, CHECK_TIMEOUT, SERVICES, WORKER};

/// A fault to inject into a service's start or close.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Fault {
    FailStart,
    SlowStart,
    HangClose,
    /// [`Fault::FailStart`] in a process started by an upgrade only.
    FailStartUpgraded,
    /// [`Fault::SlowStart`] in a process started by an upgrade only.
    SlowStartUpgraded,
}

impl Fault {
    /// Whether the fault applies in this process: one for a process started by an upgrade
    /// applies only there.
    pub fn applies(self) -> bool {
        match self {
            Fault::FailStartUpgraded | Fault::SlowStartUpgraded => {
                lifecycle::systemd::upgraded_from().is_some()
            }
            _ => true,
        }
    }
}

pub const USAGE: &str =
    "usage: demo [--health-addr ADDR] [--api-addr ADDR] [--termination-delay SECS] \
                     [--shutdown-timeout SECS] [--close-timeout SECS] [--start-timeout SECS] \
                     [--upgrade-timeout SECS] [--pid-file PATH] \
                     [--fail NAME] [--slow-start NAME] [--hang-close NAME] [--crash NAME] \
                     [--crash-loop NAME] [--fail-upgraded NAME] [--slow-start-upgraded NAME] \
                     [--print-config] [--help]";

/// What `--help` prints after [`USAGE`]; README's table of flags says the same.
pub const HELP: &str = "\
Runs a connection pool, a worker and an HTTP API, in that order, until SIGINT or SIGTERM;
then closes them in reverse. A second signal during the shutdown exits at once (code 130).
On SIGHUP, upgrades: starts itself again with its listening sockets, and once the new process
is ready, closes and exits 0 (the new process serves on).

  --health-addr ADDR        where probes get /livez, /readyz, /healthz, /metrics [default: 127.0.0.1:8001]
  --api-addr ADDR           where the API listens (GET /jobs, and the health routes) [default: 127.0.0.1:8080]
  --termination-delay SECS  how long to keep serving, not ready, after SIGTERM [default: 0]
  --shutdown-timeout SECS   the bound on the whole shutdown [default: 25]
  --close-timeout SECS      the bound on each service's close [default: 10]
  --start-timeout SECS      the bound on each service's start, until it is ready [default: 60]
  --upgrade-timeout SECS    the bound on an upgrade's new process, until it is ready [default: 60]
  --pid-file PATH           where to write the process id (an upgrade's new process rewrites it)
  --fail NAME               NAME's start fails: rollback, exit code 1
  --slow-start NAME         NAME's start waits until it is cancelled (send SIGTERM meanwhile)
  --hang-close NAME         NAME's close never returns: abandoned at its close timeout
  --crash NAME              NAME fails every 8 s while it runs: restarted, the program stays up (NAME: worker)
  --crash-loop NAME         NAME fails at once on every start: the restart budget runs out, exit code 75 (NAME: worker)
  --fail-upgraded NAME      NAME's start fails in a process started by an upgrade only: the old one serves on
  --slow-start-upgraded NAME  NAME's start waits until cancelled, in a process started by an upgrade only
  --print-config            prints the settings the other flags give, one per line, and exits
  -h, --help                prints this

ADDR is HOST:PORT; a host name (localhost:8001) is resolved, its first address used.
SECS is a number of seconds, fractions allowed (0.5). NAME is pool, worker or api.
Exit codes: 0 after a graceful shutdown, 1 if anything failed, 75 when the restart budget
ran out, 130 on a second signal, 2 for a usage error. RUST_LOG sets the log filter (default
info).
";

/// The settings of a run.
pub struct Args {
    pub health_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub termination_delay: Duration,
    pub shutdown_timeout: Duration,
    pub close_timeout: Duration,
    pub start_timeout: Duration,
    /// The bound on an upgrade's new process, until it is ready.
    pub upgrade_timeout: Duration,
    /// Where the runner writes the process id, if anywhere.
    pub pid_file: Option<PathBuf>,
    pub faults: Vec<(String, Fault)>,
    /// How the restartable worker fails while it runs, if it does.
    pub crash: Option<Crash>,
}

/// How the worker fails while it runs (`--crash`, `--crash-loop`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Crash {
    /// Each instance after [`CRASH_EVERY`] of running.
    Periodic,
    /// At once, every time it starts.
    Loop,
}

/// How long each worker runs under `--crash` before it fails: less often than the default
/// restart budget allows (10 in 60 s), so the program stays up.
pub const CRASH_EVERY: Duration = Duration::from_secs(8);

impl Args {
    /// What `--print-config` prints: `NAME VALUE` lines, durations in seconds. The deployment
    /// files' test reads them, so that their numbers follow the demo's, never a copy of them.
    pub fn config(&self) -> String {
        let secs = |d: Duration| d.as_secs_f64();
        format!(
            "health-addr {}\napi-addr {}\ntermination-delay {}\nshutdown-timeout {}\n\
             close-timeout {}\nstart-timeout {}\nservices {}\ncheck-interval {}\n\
             check-timeout {}\nupgrade-timeout {}\npid-file {}\n",
            self.health_addr,
            self.api_addr,
            secs(self.termination_delay),
            secs(self.shutdown_timeout),
            secs(self.close_timeout),
            secs(self.start_timeout),
            // Each needs the one before it: they start one after the other, in this order.
            SERVICES.join(","),
            secs(CHECK_INTERVAL),
            secs(CHECK_TIMEOUT),
            secs(self.upgrade_timeout),
            // A path never printed as `none` unless it is one.
            self.pid_file
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
        )
    }
}

/// What the command line asks for.
pub enum Command {
    Run(Args),
    PrintConfig(Args),
    Help,
}

/// Parses the flags (`--flag VALUE` or `--flag=VALUE`).
///
/// # Errors
///
/// A message naming the flag and the value at fault.
pub fn parse_args(mut it: impl Iterator<Item = String>) -> std::result::Result<Command, String> {
    let mut args = Args {
        health_addr: resolve("--health-addr", "127.0.0.1:8001")?,
        api_addr: resolve("--api-addr", "127.0.0.1:8080")?,
        termination_delay: Duration::ZERO,
        // The runner's defaults.
        shutdown_timeout: Duration::from_secs(25),
        close_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(60),
        upgrade_timeout: Duration::from_secs(60),
        pid_file: None,
        faults: Vec::new(),
        crash: None,
    };
    let mut print_config = false;
    while let Some(arg) = it.next() {
        let (flag, mut inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        let mut value = || -> std::result::Result<String, String> {
            inline
                .take()
                .or_else(|| it.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--print-config" => print_config = true,
            "--health-addr" => args.health_addr = resolve(&flag, &value()?)?,
            "--api-addr" => args.api_addr = resolve(&flag, &value()?)?,
            "--termination-delay" => args.termination_delay = secs(&flag, &value()?)?,
            "--shutdown-timeout" => args.shutdown_timeout = secs(&flag, &value()?)?,
            "--close-timeout" => args.close_timeout = secs(&flag, &value()?)?,
            "--start-timeout" => args.start_timeout = secs(&flag, &value()?)?,
            "--upgrade-timeout" => args.upgrade_timeout = secs(&flag, &value()?)?,
            "--pid-file" => args.pid_file = Some(value()?.into()),
            "--fail" => args
                .faults
                .push((service(&flag, value()?)?, Fault::FailStart)),
            "--slow-start" => args
                .faults
                .push((service(&flag, value()?)?, Fault::SlowStart)),
            "--hang-close" => args
                .faults
                .push((service(&flag, value()?)?, Fault::HangClose)),
            "--fail-upgraded" => args
                .faults
                .push((service(&flag, value()?)?, Fault::FailStartUpgraded)),
            "--slow-start-upgraded" => args
                .faults
                .push((service(&flag, value()?)?, Fault::SlowStartUpgraded)),
            "--crash" => args.crash = Some(restartable(&flag, value()?, Crash::Periodic)?),
            "--crash-loop" => args.crash = Some(restartable(&flag, value()?, Crash::Loop)?),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(match print_config {
        true => Command::PrintConfig(args),
        false => Command::Run(args),
    })
}

/// `HOST:PORT`, resolved; the first address.
fn resolve(flag: &str, v: &str) -> std::result::Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| format!("{flag} {v:?}: {e}"))?
        .next()
        .ok_or(format!("{flag} {v:?}: resolves to no address"))
}

/// A number of seconds that a [`Duration`] can hold.
fn secs(flag: &str, v: &str) -> std::result::Result<Duration, String> {
    let n: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{flag} {v:?}: not a number of seconds"))?;
    Duration::try_from_secs_f64(n).map_err(|e| format!("{flag} {v:?}: {e}"))
}

/// The name of the demo's restartable service (the worker), for `crash`.
fn restartable(flag: &str, name: String, crash: Crash) -> std::result::Result<Crash, String> {
    match service(flag, name)?.as_str() {
        WORKER => Ok(crash),
        other => Err(format!(
            "{flag} {other:?}: only the worker is restartable (Runner::restartable)"
        )),
    }
}

/// One of the services' names.
fn service(flag: &str, name: String) -> std::result::Result<String, String> {
    match SERVICES.contains(&name.as_str()) {
        true => Ok(name),
        false => Err(format!(
            "{flag} {name:?}: no such service (the services are {})",
            SERVICES.join(", ")
        )),
    }
}

//! The parent's side of an upgrade: start the new process with the listening sockets and a
//! readiness pipe, wait until it is ready, or kill and reap it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libc::{c_char, c_int};

use self::fork::{child, dup_above, fallback_close_to, pipe, PidSlot, Plan};
use super::link::{FD_VAR, PARENT_VAR};
use crate::stop::StopSignal;

mod fork;

/// The variables `spawn` removes from the environment it is given (it sets its own).
const REMOVED: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    FD_VAR,
    PARENT_VAR,
];
/// The longest `wait_ready` waits on the pipe before it looks at its stop signal again.
const TICK: Duration = Duration::from_millis(50);
/// How long a child that closed the pipe is given to exit before it is killed.
const EOF_GRACE: Duration = Duration::from_secs(1);
/// How long a reap waits after SIGKILL (the process is gone at once, unless the kernel holds
/// it in an uninterruptible wait).
const KILLED_REAP: Duration = Duration::from_secs(5);

/// A listening socket to hand to the new process, under its socket-activation name.
#[derive(Debug)]
pub(crate) struct Inherit<'a> {
    /// Its name in `LISTEN_FDNAMES`.
    pub(crate) name: &'a str,
    /// The socket; the new process gets a copy of it.
    pub(crate) fd: BorrowedFd<'a>,
}

/// The path of this process's executable, read once: on Linux, the link `/proc/self/exe`,
/// without the ` (deleted)` that Linux adds once the file was replaced, so that the new file
/// at the same path is the one started (elsewhere, [`std::env::current_exe`]).
///
/// Call it early (the runner calls it when it starts), so that a later change of the working
/// directory or of the file does not matter.
pub(crate) fn current_program() -> io::Result<&'static Path> {
    static PROGRAM: OnceLock<Result<PathBuf, (io::ErrorKind, String)>> = OnceLock::new();
    let read = || {
        #[cfg(target_os = "linux")]
        let path = std::fs::read_link("/proc/self/exe").map(|p| strip_deleted(&p));
        #[cfg(not(target_os = "linux"))]
        let path = std::env::current_exe();
        path.map_err(|e| {
            (
                e.kind(),
                format!("the path of this program cannot be read: {e}"),
            )
        })
    };
    match PROGRAM.get_or_init(read) {
        Ok(path) => Ok(path),
        Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
    }
}

/// `path` without the ` (deleted)` Linux adds to `/proc/self/exe` when the file was replaced.
fn strip_deleted(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let kept = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    PathBuf::from(OsStr::from_bytes(kept))
}

/// What to start.
#[derive(Debug)]
pub(crate) struct Command<'a> {
    /// The executable (see [`current_program`]).
    pub(crate) program: &'a Path,
    /// `argv[1..]`.
    pub(crate) args: Vec<OsString>,
    /// `argv[0]`, as this process was given it.
    pub(crate) arg0: OsString,
    /// The environment, as the runner read it; `spawn` replaces the variables of socket
    /// activation, of the watchdog's pid and of the upgrade with its own.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The sockets, passed at descriptors 3, 4, ... in this order.
    pub(crate) listeners: Vec<Inherit<'a>>,
}

/// Starts the new process (fork and execve): the listeners at descriptors 3, 4, ...,
/// `LISTEN_PID` (its own id), `LISTEN_FDS`, `LISTEN_FDNAMES`, the write end of the readiness
/// pipe at `3 + n` named by `LIFECYCLE_UPGRADE_FD`, `LIFECYCLE_UPGRADE_PARENT` (this process's
/// id), and `WATCHDOG_PID` (its own id) only if the environment has `WATCHDOG_USEC`. No other
/// descriptor above 2 is open in it, and its signal mask is empty. A child whose execve fails
/// exits with status 127 without writing.
///
/// # Errors
///
/// `InvalidInput` for a NUL byte in the program, an argument or the environment, or a `:` in
/// a name; the errors of pipe2, fcntl and fork.
pub(crate) fn spawn(command: Command<'_>) -> io::Result<Spawned> {
    let n = command.listeners.len();
    let pipe_fd = c_int::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(3))
        .filter(|fd| *fd < c_int::MAX - 1)
        .ok_or_else(|| invalid("too many listeners".to_owned()))?;
    let mut names = Vec::with_capacity(n);
    for listener in &command.listeners {
        if listener.name.contains(':') {
            let name = listener.name;
            return Err(invalid(format!("the socket name {name:?} contains `:`")));
        }
        names.push(listener.name);
    }
    let program = c_string(command.program.as_os_str().as_bytes().to_vec())?;
    let mut args = vec![c_string(command.arg0.as_bytes().to_vec())?];
    for arg in &command.args {
        args.push(c_string(arg.as_bytes().to_vec())?);
    }
    let watchdog = command.env.iter().any(|(k, _)| k == "WATCHDOG_USEC");
    let mut env = Vec::with_capacity(command.env.len() + 4);
    for (key, value) in &command.env {
        if !REMOVED.iter().any(|r| key == *r) {
            env.push(c_string([key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
    }
    let parent = std::process::id();
    env.push(c_string(format!("LISTEN_FDS={n}").into_bytes())?);
    env.push(c_string(
        format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes(),
    )?);
    env.push(c_string(format!("{FD_VAR}={pipe_fd}").into_bytes())?);
    env.push(c_string(format!("{PARENT_VAR}={parent}").into_bytes())?);
    let mut pid_slots = vec![PidSlot::new("LISTEN_PID=")];
    if watchdog {
        pid_slots.push(PidSlot::new("WATCHDOG_PID="));
    }

    let (read, write) = pipe()?;
    // Every source, copied above the targets, so that no move overwrites a source.
    let high = pipe_fd + 1;
    let mut sources = Vec::with_capacity(n + 1);
    for fd in command.listeners.iter().map(|l| l.fd.as_raw_fd()) {
        sources.push(dup_above(fd, high)?);
    }
    sources.push(dup_above(write.as_raw_fd(), high)?);
    let moves: Vec<(c_int, c_int)> = (sources.iter().map(AsRawFd::as_raw_fd)).zip(3..).collect();

    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
    // The slots' buffers stay where they are (never moved, nor their boxes) until after fork.
    let slots: Vec<(*mut u8, usize)> = (pid_slots.iter_mut())
        .map(|s| (s.buffer.as_mut_ptr(), s.prefix))
        .collect();
    envp.extend(
        slots
            .iter()
            .map(|(ptr, _)| ptr.cast_const().cast::<c_char>()),
    );
    envp.push(std::ptr::null());
    let plan = Plan {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        slots: &slots,
        moves: &moves,
        close_from: high,
        fallback_close_to: fallback_close_to(),
    };

    // SAFETY: fork(2) takes nothing; the child runs only `child`, which calls only
    // async-signal-safe functions and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child just forked: `plan` points into memory the fork copied, built
        // above and not freed until after this returns in the parent.
        unsafe { child(&plan) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop((sources, write));
    // `plan`, argv, envp and the strings they point to are freed only after this, on return.
    Ok(Spawned {
        pid,
        pipe: read,
        child: Child::Running,
        ready: false,
        released: false,
    })
}

/// An `InvalidInput` error.
fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("upgrade: {message}"))
}

/// `bytes` as a C string, or `InvalidInput` if it holds a NUL byte.
fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| invalid(format!("a NUL byte in {:?}", e.into_vec())))
}

/// The new process, until it is ready, exited, killed or released.
#[derive(Debug)]
pub(crate) struct Spawned {
    pid: libc::pid_t,
    /// The read end of the readiness pipe (close-on-exec).
    pipe: OwnedFd,
    child: Child,
    ready: bool,
    released: bool,
}

/// Whether the child was reaped.
#[derive(Debug, Clone, Copy)]
enum Child {
    Running,
    Reaped(ExitStatus),
    /// Not a child of this process any more (waitpid said ECHILD: reaped by someone else).
    Lost,
}

/// How the wait for the new process's readiness ended.
#[derive(Debug)]
pub(crate) enum Readiness {
    /// It wrote its byte: it is ready.
    Ready,
    /// It exited (or closed the pipe and was killed), and was reaped: its status. A status
    /// that cannot be read (the child was reaped by someone else) is reported as exit code 255.
    Exited(ExitStatus),
    /// The deadline passed; the child runs on until [`Spawned::kill`].
    TimedOut,
    /// The stop signal fired; the child runs on until [`Spawned::kill`].
    Stopped,
}

impl Spawned {
    /// The new process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits until the child writes its byte (`Ready`), the pipe reaches EOF (the child exited
    /// or closed it: reaped, `Exited` with its status; if it closed the pipe but is still alive
    /// after 1 s, it is killed as [`kill`](Self::kill) does), `deadline` passes (`TimedOut`,
    /// the child not killed), or `stop` fires (`Stopped`). Looks at `stop` at least every
    /// 50 ms.
    pub(crate) fn wait_ready(&mut self, deadline: Instant, stop: &StopSignal) -> Readiness {
        loop {
            if self.ready {
                return Readiness::Ready;
            }
            if let Child::Reaped(status) = self.child {
                return Readiness::Exited(status);
            }
            if stop.is_stopped() {
                return Readiness::Stopped;
            }
            let now = Instant::now();
            if now >= deadline {
                return Readiness::TimedOut;
            }
            let wait = TICK.min(deadline - now);
            let ms = wait.as_micros().div_ceil(1000) as c_int;
            let mut poll = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) reads and writes one pollfd, which `poll` is.
            match unsafe { libc::poll(&mut poll, 1, ms) } {
                0 => continue,
                n if n < 0 => {
                    if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        std::thread::sleep(wait); // bounded by the deadline all the same
                    }
                    continue;
                }
                _ => {}
            }
            let mut byte = 0u8;
            // SAFETY: reads at most one byte into `byte`; poll said it would not block.
            match unsafe { libc::read(self.pipe.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) } {
                1 => self.ready = true,
                0 => return Readiness::Exited(self.closed()),
                _ => match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                    _ => return Readiness::Exited(self.closed()),
                },
            }
        }
    }

    /// The pipe reached EOF: the child's status once it exits, or once it is killed if it
    /// still runs after `EOF_GRACE`.
    fn closed(&mut self) -> ExitStatus {
        let unknown = ExitStatus::from_raw(255 << 8);
        let result = match self.reap_within(EOF_GRACE) {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                crate::relay::warn!(
                    "upgrade: the new process {} closed its readiness pipe and did not exit: \
                     killing it",
                    self.pid
                );
                self.kill(EOF_GRACE)
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| {
            crate::relay::warn!(
                "upgrade: the exit status of the new process {} cannot be read: {e}",
                self.pid
            );
            unknown
        })
    }

    /// Sends SIGTERM, then SIGKILL if the child has not exited within `grace`, then reaps it:
    /// its exit status. Idempotent: a reaped child returns its status again.
    ///
    /// # Errors
    ///
    /// The error of waitpid (`ECHILD` when someone else reaped the child: it is then not
    /// signalled), and `TimedOut` if it is not gone 5 s after SIGKILL.
    pub(crate) fn kill(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_reap()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.reap_within(grace)? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        self.reap_within(KILLED_REAP)?.ok_or_else(|| {
            let message = format!("upgrade: the new process {} outlived SIGKILL", self.pid);
            io::Error::new(io::ErrorKind::TimedOut, message)
        })
    }

    /// After `Ready`: the child lives on (it serves now); it is neither killed nor reaped.
    pub(crate) fn release(mut self) {
        self.released = true;
    }

    /// Sends `signal` to the child, which is not reaped (so its pid is not anyone else's).
    fn signal(&self, signal: c_int) -> io::Result<()> {
        // SAFETY: kill(2) takes no pointers.
        match unsafe { libc::kill(self.pid, signal) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Reaps the child if it has exited, without waiting.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child {
            Child::Reaped(status) => return Ok(Some(status)),
            Child::Lost => return Err(io::Error::from_raw_os_error(libc::ECHILD)),
            Child::Running => {}
        }
        let mut status: c_int = 0;
        loop {
            // SAFETY: waitpid(2) writes the status into `status`.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => return Ok(None),
                pid if pid == self.pid => {
                    let status = ExitStatus::from_raw(status);
                    self.child = Child::Reaped(status);
                    return Ok(Some(status));
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::ECHILD) => self.child = Child::Lost,
                        _ => {}
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Reaps the child once it exits, waiting at most `limit`.
    fn reap_within(&mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    /// Not released and not reaped: SIGKILL, and reap (bounded).
    fn drop(&mut self) {
        if self.released || !matches!(self.child, Child::Running) {
            return;
        }
        if !matches!(self.try_reap(), Ok(None)) {
            return; // reaped now, or not this process's child any more: not signalled
        }
        let reaped = self
            .signal(libc::SIGKILL)
            .and_then(|()| self.reap_within(KILLED_REAP));
        if !matches!(reaped, Ok(Some(_))) {
            crate::relay::warn!(
                "upgrade: the new process {} was not reaped: {reaped:?}",
                self.pid
            );
        }
    }
}

// The tests read /proc.
#[cfg(all(test, target_os = "linux"))]
mod tests;

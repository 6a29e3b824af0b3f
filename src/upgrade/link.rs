//! The child's side of an upgrade: the process that started this one, and the pipe on which
//! this process tells it that it is ready.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The variable that numbers the readiness pipe's write end in the new process.
pub(super) const FD_VAR: &str = "LIFECYCLE_UPGRADE_FD";
/// The variable that holds the id of the process that started the new one.
pub(super) const PARENT_VAR: &str = "LIFECYCLE_UPGRADE_PARENT";
/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: u32 = 3;

/// The process that started this one by an upgrade, read once from the environment.
///
/// Present only when `LIFECYCLE_UPGRADE_FD` and `LIFECYCLE_UPGRADE_PARENT` are set,
/// `LISTEN_PID` is this process's id (so that a grandchild that inherited the environment
/// ignores them, as `sd_listen_fds` does), `LIFECYCLE_UPGRADE_FD` is `3 + LISTEN_FDS` (the
/// descriptor after the sockets), and that descriptor is a pipe. The descriptor is then marked
/// close-on-exec. Values that do not hold together are logged at warn level and give `None`.
/// The environment is never modified (`remove_var` is unsound while other threads run).
pub(crate) fn parent() -> Option<&'static Parent> {
    static PARENT: OnceLock<Option<Parent>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let var = std::env::var_os;
            let parsed = parse(
                var(FD_VAR).as_deref(),
                var(PARENT_VAR).as_deref(),
                var("LISTEN_PID").as_deref(),
                var("LISTEN_FDS").as_deref(),
                std::process::id(),
            );
            let link = match parsed {
                Ok(link) => link?,
                Err(problem) => {
                    crate::relay::warn!("upgrade: {problem}; not started by an upgrade");
                    return None;
                }
            };
            // SAFETY: the process that started this one placed the pipe at `link.fd` for this
            // process to own (LISTEN_PID is this process), and nothing else in the process
            // uses the descriptor by number; this runs once (OnceLock).
            match unsafe { Parent::adopt(link.fd, link.parent) } {
                Ok(parent) => Some(parent),
                Err(problem) => {
                    crate::relay::warn!("upgrade: {problem}; not started by an upgrade");
                    None
                }
            }
        })
        .as_ref()
}

/// The process that started this one, and the pipe to tell it this one is ready.
#[derive(Debug)]
pub(crate) struct Parent {
    pid: u32,
    pipe: Mutex<Option<OwnedFd>>,
}

impl Parent {
    /// Owns the pipe `fd` to the process `pid`: checks that it is a pipe, and marks it
    /// close-on-exec. `Err` says what is wrong, and leaves `fd` alone.
    ///
    /// # Safety
    ///
    /// `fd` must be open and owned by the caller, which gives it up: nothing else may close it
    /// or use it by number.
    unsafe fn adopt(fd: RawFd, pid: u32) -> Result<Parent, String> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat(2) writes a `stat` into `stat`, which holds one.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            return Err(format!("{FD_VAR}={fd} cannot be read: {e}"));
        }
        // SAFETY: zeroed, then written by fstat: every field is initialized.
        let mode = unsafe { stat.assume_init() }.st_mode;
        if mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(format!("{FD_VAR}={fd} is not a pipe"));
        }
        // SAFETY: fcntl(2) with F_GETFD and F_SETFD takes no pointers.
        let set = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) >= 0
        };
        if !set {
            let e = io::Error::last_os_error();
            return Err(format!("{FD_VAR}={fd} cannot be marked close-on-exec: {e}"));
        }
        // SAFETY: open (fstat succeeded), and the caller gives it up to this owner.
        let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Parent {
            pid,
            pipe: Mutex::new(Some(pipe)),
        })
    }

    /// The id of the process that started this one.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Tells the parent that this process is ready: writes one byte on the pipe and closes it.
    ///
    /// Once: a later call (whatever the first one returned) does nothing and returns `Ok(())`.
    ///
    /// # Errors
    ///
    /// The error of the write: `EPIPE` (`BrokenPipe`) when the parent has gone. The write is a
    /// plain `write(2)`; it raises `SIGPIPE` then, which Rust programs ignore by default.
    pub(crate) fn tell_ready(&self) -> io::Result<()> {
        let Some(pipe) = self.pipe.lock().take() else {
            return Ok(());
        };
        loop {
            // SAFETY: writes one byte from a live one-byte buffer to a descriptor this owns.
            let n = unsafe { libc::write(pipe.as_raw_fd(), b"R".as_ptr().cast(), 1) };
            match n {
                1 => return Ok(()),
                0 => return Err(io::ErrorKind::WriteZero.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        // `pipe` drops here: closed.
    }
}

/// What the environment says of an upgrade: the pipe's descriptor and the parent's id.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    fd: RawFd,
    parent: u32,
}

/// What `LIFECYCLE_UPGRADE_FD`, `LIFECYCLE_UPGRADE_PARENT`, `LISTEN_PID` and `LISTEN_FDS` say
/// for the process `pid`: `Ok(None)` when it was not started by an upgrade (the upgrade
/// variables unset, or `LISTEN_PID` unset or another process's), `Err` with the problem when
/// they do not hold together.
fn parse(
    fd: Option<&OsStr>,
    parent: Option<&OsStr>,
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    pid: u32,
) -> Result<Option<Link>, String> {
    if fd.is_none() && parent.is_none() {
        return Ok(None);
    }
    let number = |v: &OsStr| v.to_str().and_then(|s| s.parse::<u32>().ok());
    let Some(listen_pid) = listen_pid else {
        return Ok(None);
    };
    match number(listen_pid) {
        Some(p) if p == pid => {}
        Some(_) => return Ok(None),
        None => return Err(format!("LISTEN_PID={listen_pid:?} is not a process id")),
    }
    let (fd, parent) = match (fd, parent) {
        (Some(fd), Some(parent)) => (fd, parent),
        (Some(_), None) => return Err(format!("{FD_VAR} is set but {PARENT_VAR} is not")),
        _ => return Err(format!("{PARENT_VAR} is set but {FD_VAR} is not")),
    };
    let parent = match number(parent) {
        Some(p) if p != 0 && p != pid => p,
        _ => {
            return Err(format!(
                "{PARENT_VAR}={parent:?} is not another process's id"
            ))
        }
    };
    let Some(listen_fds) = listen_fds else {
        return Err(format!("{FD_VAR} is set but LISTEN_FDS is not"));
    };
    let Some(expected) = number(listen_fds).and_then(|n| n.checked_add(FIRST_FD)) else {
        return Err(format!(
            "LISTEN_FDS={listen_fds:?} is not a number of descriptors"
        ));
    };
    match number(fd).and_then(|n| RawFd::try_from(n).ok()) {
        Some(n) if u32::try_from(n) == Ok(expected) => Ok(Some(Link { fd: n, parent })),
        _ => Err(format!(
            "{FD_VAR}={fd:?} is not descriptor {expected}, the one after the LISTEN_FDS sockets"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

    use super::{parse, Link};
    use crate::upgrade::Parent;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn parse_takes_values_that_hold_together() {
        let link = parse(os("5"), os("41"), os("42"), os("2"), 42);
        assert_eq!(link, Ok(Some(Link { fd: 5, parent: 41 })));
        let link = parse(os("3"), os("7"), os("42"), os("0"), 42);
        assert_eq!(link, Ok(Some(Link { fd: 3, parent: 7 })));
    }

    #[test]
    fn parse_ignores_what_is_not_an_upgrade_of_this_process() {
        // Not an upgrade at all.
        assert_eq!(parse(None, None, os("42"), os("1"), 42), Ok(None));
        assert_eq!(parse(None, None, None, None, 42), Ok(None));
        // A grandchild that inherited the environment: LISTEN_PID is its parent's.
        assert_eq!(parse(os("4"), os("41"), os("43"), os("1"), 42), Ok(None));
        // No LISTEN_PID at all.
        assert_eq!(parse(os("4"), os("41"), None, os("1"), 42), Ok(None));
    }

    #[test]
    fn parse_refuses_values_that_do_not_hold_together() {
        let bad = [
            (os("4"), os("41"), os("x"), os("1")), // LISTEN_PID not a number
            (os("4"), None, os("42"), os("1")),    // no parent
            (None, os("41"), os("42"), os("1")),   // no descriptor
            (os("four"), os("41"), os("42"), os("1")), // descriptor not a number
            (os("-1"), os("41"), os("42"), os("1")), // negative
            (os("5"), os("41"), os("42"), os("1")), // not after the sockets
            (os("2"), os("41"), os("42"), os("0")), // below 3
            (os("4"), os("x"), os("42"), os("1")), // parent not a number
            (os("4"), os("0"), os("42"), os("1")), // parent 0
            (os("4"), os("42"), os("42"), os("1")), // parent is this process
            (os("4"), os("41"), os("42"), None),   // no LISTEN_FDS
            (os("4"), os("41"), os("42"), os("y")), // LISTEN_FDS not a number
            (os("4"), os("41"), os("42"), os("4294967295")), // overflows
            (os("99999999999"), os("41"), os("42"), os("1")), // not a descriptor
        ];
        for (fd, parent, listen_pid, listen_fds) in bad {
            let parsed = parse(fd, parent, listen_pid, listen_fds, 42);
            assert!(
                parsed.is_err(),
                "{fd:?} {parent:?} {listen_pid:?} {listen_fds:?}"
            );
        }
    }

    /// A pipe: (read end, write end), close-on-exec.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) writes two descriptors into `fds`, which holds them.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: just opened, owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn tell_ready_writes_one_byte_once_and_closes() {
        let (read, write) = pipe();
        let fd = write.into_raw_fd();
        // SAFETY: `fd` was just given up by its owner.
        let parent = unsafe { Parent::adopt(fd, 7) }.unwrap();
        assert_eq!(parent.pid(), 7);
        // SAFETY: F_GETFD takes no pointer.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        parent.tell_ready().unwrap();
        parent.tell_ready().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut got).unwrap();
        assert_eq!(got, b"R"); // and EOF: the write end was closed
    }

    #[test]
    fn tell_ready_to_a_parent_gone_is_an_error() {
        let (read, write) = pipe();
        drop(read);
        // SAFETY: the descriptor was just given up by its owner.
        let parent = unsafe { Parent::adopt(write.into_raw_fd(), 7) }.unwrap();
        let e = parent.tell_ready().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        parent.tell_ready().unwrap();
    }

    #[test]
    fn adopt_refuses_what_is_not_a_pipe() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        // SAFETY: refused (a socket), so `fd` is not taken: `listener` still owns it.
        assert!(unsafe { Parent::adopt(fd, 7) }.is_err());
    }
}

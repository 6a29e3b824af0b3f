//! What the new process does between fork and execve, all of it prepared before fork: the
//! child of a multi-threaded process may only call async-signal-safe functions (no
//! allocation, no lock, nothing that can panic).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use libc::{c_char, c_int};

/// One past the highest signal number (Linux's `_NSIG`, real-time signals included).
const NSIG: c_int = 65;
/// The digits reserved for a pid written after fork (a `u32` has at most 10).
const PID_DIGITS: usize = 20;
/// The highest descriptor the fallback closes up to when `close_range(2)` is missing.
const MAX_FALLBACK_CLOSE: u64 = 65_536;

/// An environment entry `NAME=` followed by room for a pid, written in the child after fork.
#[derive(Debug)]
pub(super) struct PidSlot {
    /// `NAME=`, the digits, NUL.
    pub(super) buffer: Box<[u8]>,
    /// The length of `NAME=`.
    pub(super) prefix: usize,
}

impl PidSlot {
    /// `NAME=` then placeholder digits then NUL.
    pub(super) fn new(prefix: &str) -> PidSlot {
        let buffer = [prefix.as_bytes(), &[b'0'; PID_DIGITS], b"\0"].concat();
        PidSlot {
            buffer: buffer.into_boxed_slice(),
            prefix: prefix.len(),
        }
    }
}

/// What the child does after fork, all of it prepared before.
pub(super) struct Plan<'a> {
    /// The program's path.
    pub(super) program: *const c_char,
    /// The arguments, `argv[0]` first, null-terminated.
    pub(super) argv: *const *const c_char,
    /// The environment (`NAME=value`), null-terminated.
    pub(super) envp: *const *const c_char,
    /// Each pid slot's buffer and the length of its `NAME=`.
    pub(super) slots: &'a [(*mut u8, usize)],
    /// (a close-on-exec copy of each source, its target).
    pub(super) moves: &'a [(c_int, c_int)],
    /// The first descriptor closed (the one after the pipe).
    pub(super) close_from: c_int,
    /// Where closing stops if `close_range(2)` is missing (see [`fallback_close_to`]).
    pub(super) fallback_close_to: c_int,
}

/// The child after fork: writes its pid into the slots, empties its signal mask, places the
/// descriptors, closes every other from `close_from`, and execs; exits with 127 if it cannot.
///
/// # Safety
///
/// Only in the child of fork, with a `plan` whose pointers are valid and whose slots have room
/// for `PID_DIGITS` digits and a NUL after the prefix.
pub(super) unsafe fn child(plan: &Plan<'_>) -> ! {
    // SAFETY: only async-signal-safe calls below (getpid, sigaction, sigemptyset,
    // pthread_sigmask, dup2, syscall(close_range), close, execve, _exit) on memory the plan owns; no
    // allocation, no lock, nothing that can panic.
    unsafe {
        let mut digits = [0u8; 10];
        let len = decimal(libc::getpid() as u32, &mut digits);
        for &(slot, prefix) in plan.slots {
            let at = slot.add(prefix);
            std::ptr::copy_nonoverlapping(digits.as_ptr(), at, len);
            *at.add(len) = 0;
        }
        // Every signal is blocked (the parent blocked them across the fork): the parent's
        // handlers are reset to the default first (an ignored signal stays ignored, as execve
        // keeps it), so that a signal that comes before the exec never runs them here.
        for signal in 1..NSIG {
            let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
            if libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) != 0 {
                continue;
            }
            let handler = (*old.as_ptr()).sa_sigaction;
            if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                let mut default = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
                (*default.as_mut_ptr()).sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut (*default.as_mut_ptr()).sa_mask);
                libc::sigaction(signal, default.as_ptr(), std::ptr::null_mut());
            }
        }
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        for &(source, target) in plan.moves {
            while libc::dup2(source, target) < 0 {
                // No allocation: an OS error is a number in the io::Error.
                if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    libc::_exit(127);
                }
            }
        }
        close_from(plan.close_from, plan.fallback_close_to);
        libc::execve(plan.program, plan.argv, plan.envp);
        libc::_exit(127)
    }
}

/// Writes the decimal digits of `value` at the start of `out`: how many.
pub(super) fn decimal(mut value: u32, out: &mut [u8; 10]) -> usize {
    let mut reversed = [0u8; 10];
    let mut len = 0;
    while let Some(digit) = reversed.get_mut(len) {
        *digit = b'0' + (value % 10) as u8;
        len += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for (o, r) in out.iter_mut().zip(reversed[..len].iter().rev()) {
        *o = *r;
    }
    len
}

/// Closes every descriptor from `first` on (after fork: async-signal-safe only).
///
/// # Safety
///
/// Closes descriptors by number: only in a child about to exec.
unsafe fn close_from(first: c_int, fallback_to: c_int) {
    #[cfg(target_os = "linux")]
    // SAFETY: close_range(2) takes no pointers.
    if unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0) } == 0 {
        return;
    }
    for fd in first..fallback_to {
        // SAFETY: close(2) takes no pointers; a descriptor not open gives EBADF.
        unsafe { libc::close(fd) };
    }
}

/// The descriptor the close-range fallback closes up to: the soft `RLIMIT_NOFILE`, capped.
pub(super) fn fallback_close_to() -> c_int {
    let max = crate::systemd::open_files_limit();
    c_int::try_from(max.min(MAX_FALLBACK_CLOSE)).unwrap_or(1024)
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2(2) writes two descriptors into `fds`, which holds them.
    #[cfg(not(target_vendor = "apple"))]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    // SAFETY: pipe(2) writes two descriptors into `fds`, which holds them. (No pipe2 here:
    // another thread's fork may inherit the pipe before it is close-on-exec; its child closes
    // or execs, so a readiness EOF may come late, not wrong.)
    #[cfg(target_vendor = "apple")]
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(target_vendor = "apple")]
    for fd in [fds[0], fds[1]] {
        // SAFETY: fcntl(2) with F_SETFD takes no pointers.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(ends)
}

/// A close-on-exec copy of `fd` at `at_least` or above.
pub(super) fn dup_above(fd: RawFd, at_least: c_int) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(2) with F_DUPFD_CLOEXEC takes no pointers.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, at_least) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

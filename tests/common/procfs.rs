//! What `/proc/self` says about this test process (Linux): threads, memory, the fd limit.
//!
//! A thread that was joined may still be counted for a moment (the kernel wakes the joiner
//! before it releases the thread): wait for a count to go down with
//! [`eventually`](super::eventually), never assert it right after a join.

/// How many threads of this process are called `name` (as in `/proc/self/task/*/comm`).
pub fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// A field of `/proc/self/status`, such as `Threads`, or `VmHWM` (in kB).
pub fn status_field(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The number of threads of this process.
pub fn thread_count() -> usize {
    let threads = status_field("Threads");
    usize::try_from(threads).expect("a thread count fits in usize")
}

/// Raises the soft limit on open files to at least `want` (up to the hard limit); returns the
/// soft limit now in force.
pub fn raise_fd_limit(want: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: `lim` is a valid rlimit, its soft limit no more than its hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    lim.rlim_cur
}

/// Waits (under the watchdog) until this process has `n` threads, failing with `when`: for a
/// count that goes down, since a joined thread may still be counted for a moment.
#[track_caller]
pub fn wait_thread_count(n: usize, when: &str) {
    super::eventually(&format!("{when}: {n} threads"), || thread_count() == n);
}

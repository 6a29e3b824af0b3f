//! The process's resources, read from `/proc/self` at every scrape (Linux only): CPU time,
//! memory, file descriptors and threads, for the `process_*` families that the Prometheus client
//! libraries export (client_golang's process collector, Python's `ProcessCollector`, and for
//! `process_threads` the Rust `prometheus` crate's).
//!
//! Nothing is kept between scrapes: each one reads `/proc/self/stat` into a buffer on the stack,
//! counts the entries of `/proc/self/fd` through `readdir` (no allocation per descriptor), and
//! asks `getrlimit` for the limit on open files. A value that cannot be read (a `/proc` that is
//! not mounted, a field that does not parse) is left out of that scrape, silently: a scrape
//! never fails, panics or logs because of it. Elsewhere than on Linux every value is absent, so
//! the families are not exposed.

/// What one read of the process found; `None` for a value that could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ProcessStats {
    /// User and system CPU time of every thread, past and present, in seconds.
    pub(super) cpu_seconds: Option<f64>,
    /// Resident set size in bytes: resident pages times the page size.
    pub(super) resident_bytes: Option<u64>,
    /// Virtual memory size in bytes.
    pub(super) virtual_bytes: Option<u64>,
    /// Open file descriptors, the one that reads `/proc/self/fd` included (as the client
    /// libraries count them).
    pub(super) open_fds: Option<u64>,
    /// The soft limit on open files; `None` when it is unlimited.
    pub(super) max_fds: Option<u64>,
    /// The process's threads.
    pub(super) threads: Option<u64>,
}

impl ProcessStats {
    /// Reads the process's resources now (see the module docs); everything is `None` elsewhere
    /// than on Linux.
    pub(super) fn read() -> ProcessStats {
        #[cfg(target_os = "linux")]
        {
            linux::read()
        }
        #[cfg(not(target_os = "linux"))]
        {
            ProcessStats::default()
        }
    }
}

/// The fields of `/proc/self/stat` that the families need, each `None` if it did not parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Stat {
    /// Field 14, `utime`: user time in clock ticks.
    utime: Option<u64>,
    /// Field 15, `stime`: system time in clock ticks.
    stime: Option<u64>,
    /// Field 20, `num_threads`.
    threads: Option<u64>,
    /// Field 23, `vsize`: virtual memory size in bytes.
    vsize: Option<u64>,
    /// Field 24, `rss`: resident set size in pages (printed signed; never negative in practice).
    rss_pages: Option<u64>,
}

impl Stat {
    /// Parses the content of `/proc/<pid>/stat` (see `proc_pid_stat(5)`).
    ///
    /// The command name, field 2, is in parentheses and may hold anything, spaces and
    /// parentheses included: the fields are counted from after its last `)`, which the kernel
    /// writes last in that field. Fields that are missing or not numbers are `None`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn parse(stat: &[u8]) -> Stat {
        let mut out = Stat::default();
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            return out;
        };
        let after_comm = stat.get(close + 1..).unwrap_or_default();
        // Only ASCII follows the command name; anything else makes the fields unreadable.
        let Ok(after_comm) = std::str::from_utf8(after_comm) else {
            return out;
        };
        // Field 3 (the state) is the first after the name: field `n` is at index `n - 3`.
        for (i, field) in after_comm.split_ascii_whitespace().enumerate().take(22) {
            let slot = match i + 3 {
                14 => &mut out.utime,
                15 => &mut out.stime,
                20 => &mut out.threads,
                23 => &mut out.vsize,
                24 => &mut out.rss_pages,
                _ => continue,
            };
            *slot = field.parse().ok();
        }
        out
    }

    /// User and system time in seconds, with `ticks_per_second` clock ticks a second.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn cpu_seconds(&self, ticks_per_second: u64) -> Option<f64> {
        if ticks_per_second == 0 {
            return None;
        }
        let ticks = self.utime?.checked_add(self.stime?)?;
        Some(ticks as f64 / ticks_per_second as f64)
    }

    /// Resident memory in bytes, with pages of `page_size` bytes.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn resident_bytes(&self, page_size: u64) -> Option<u64> {
        self.rss_pages?.checked_mul(page_size)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io::{ErrorKind, Read};

    use super::{ProcessStats, Stat};

    /// Room for `/proc/self/stat`: 52 fields of at most 20 digits and a command name of at most
    /// 64 bytes take little more than 1 KiB.
    const STAT_BUFFER: usize = 4096;

    /// Reads every value; see the module docs.
    pub(super) fn read() -> ProcessStats {
        let mut buf = [0_u8; STAT_BUFFER];
        let stat = read_file("/proc/self/stat", &mut buf).map_or_else(Stat::default, Stat::parse);
        ProcessStats {
            cpu_seconds: sysconf(libc::_SC_CLK_TCK).and_then(|hz| stat.cpu_seconds(hz)),
            resident_bytes: sysconf(libc::_SC_PAGESIZE).and_then(|p| stat.resident_bytes(p)),
            virtual_bytes: stat.vsize,
            open_fds: open_fds(),
            max_fds: max_fds(),
            threads: stat.threads,
        }
    }

    /// A positive value of `sysconf`.
    fn sysconf(name: libc::c_int) -> Option<u64> {
        // SAFETY: sysconf has no preconditions; it only reads a configuration value.
        let value = unsafe { libc::sysconf(name) };
        u64::try_from(value).ok().filter(|&v| v > 0)
    }

    /// The whole content of `path`, read into `buf`; `None` if it cannot be read or does not fit.
    fn read_file<'b>(path: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let mut file = File::open(path).ok()?;
        let mut len = 0;
        loop {
            // A full buffer may hold part of the content only: not trusted.
            let free = buf.get_mut(len..).filter(|free| !free.is_empty())?;
            match file.read(free) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        buf.get(..len)
    }

    /// The entries of `/proc/self/fd` (the descriptor that reads it included), or `None` if
    /// the directory cannot be read to its end.
    fn open_fds() -> Option<u64> {
        // SAFETY: the path is a NUL-terminated string; opendir returns null on failure.
        let dir = unsafe { libc::opendir(c"/proc/self/fd".as_ptr()) };
        if dir.is_null() {
            return None;
        }
        let mut count = 0_u64;
        let complete = loop {
            // readdir returns null at the end and on an error, which only errno tells apart.
            // SAFETY: errno is this thread's; writing it has no other effect.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `dir` is an open directory stream, used by this thread only and closed
            // below, after its last use.
            let entry = unsafe { libc::readdir(dir) };
            if entry.is_null() {
                // SAFETY: as above.
                break unsafe { *libc::__errno_location() } == 0;
            }
            // SAFETY: a non-null entry from readdir is valid until the next call on `dir`, and
            // its name is NUL-terminated, so its first byte can be read. The entries are the
            // descriptors' numbers, and `.` and `..`.
            let first = unsafe { (*entry).d_name.as_ptr().cast::<u8>().read() };
            if first.is_ascii_digit() {
                count += 1;
            }
        };
        // SAFETY: `dir` came from opendir and is closed once; no entry of it is used after.
        unsafe { libc::closedir(dir) };
        complete.then_some(count)
    }

    /// The soft limit on open files, unless unlimited.
    fn max_fds() -> Option<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for getrlimit to fill in.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        // `rlim_t` is 32 bits wide on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        u64::try_from(limit.rlim_cur).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (`cat /proc/self/stat`), its command name replaced.
    fn line(comm: &str) -> String {
        format!(
            "1234 ({comm}) S 1 1234 1234 34816 1234 4194304 1180 0 0 0 \
             250 37 0 0 20 0 7 0 4837410 2330624000 5310 18446744073709551615 \
             94539123236864 94539123261489 140735312110768 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 \
             94539123279568 94539123281152 94539138236416 140735312117523 140735312117543 \
             140735312117543 140735312121835 0\n"
        )
    }

    fn full() -> Stat {
        Stat {
            utime: Some(250),
            stime: Some(37),
            threads: Some(7),
            vsize: Some(2_330_624_000),
            rss_pages: Some(5310),
        }
    }

    #[test]
    fn fields_are_counted_from_after_the_command_name() {
        assert_eq!(Stat::parse(line("cat").as_bytes()), full());
    }

    #[test]
    fn a_command_name_may_hold_spaces_and_parentheses() {
        for comm in ["a b) c", "a b", ") (", "x) S 1 2 3", "((", "", "a\nb"] {
            assert_eq!(Stat::parse(line(comm).as_bytes()), full(), "{comm:?}");
        }
    }

    #[test]
    fn a_command_name_need_not_be_utf8() {
        let mut bytes = b"1234 (\xff\xfe)".to_vec();
        bytes.extend_from_slice(line("").split_once(')').unwrap().1.as_bytes());
        assert_eq!(Stat::parse(&bytes), full());
    }

    #[test]
    fn derived_values() {
        let stat = full();
        assert_eq!(stat.cpu_seconds(100), Some(2.87));
        assert_eq!(stat.cpu_seconds(0), None);
        assert_eq!(stat.resident_bytes(4096), Some(5310 * 4096));
        let huge = Stat {
            utime: Some(u64::MAX),
            stime: Some(1),
            rss_pages: Some(u64::MAX),
            ..full()
        };
        assert_eq!(huge.cpu_seconds(100), None);
        assert_eq!(huge.resident_bytes(4096), None);
    }

    #[test]
    fn what_does_not_parse_is_left_out_and_nothing_panics() {
        assert_eq!(Stat::parse(b""), Stat::default());
        assert_eq!(Stat::parse(b"1234 (cat S 1 2 3"), Stat::default());
        assert_eq!(Stat::parse(b"1234 (cat)"), Stat::default());
        // Cut after field 20: what comes before is there, the rest is not.
        let cut: String = line("cat")
            .split(' ')
            .take(20)
            .collect::<Vec<_>>()
            .join(" ");
        let stat = Stat::parse(cut.as_bytes());
        assert_eq!(stat.utime, Some(250));
        assert_eq!(stat.threads, Some(7));
        assert_eq!((stat.vsize, stat.rss_pages), (None, None));
        // A field that is not a number, and a negative rss.
        let odd = line("cat")
            .replace(" 250 37 ", " x 37 ")
            .replace(" 5310 ", " -1 ");
        let stat = Stat::parse(odd.as_bytes());
        assert_eq!((stat.utime, stat.stime), (None, Some(37)));
        assert_eq!(stat.cpu_seconds(100), None);
        assert_eq!(stat.rss_pages, None);
        // Any bytes at all.
        for n in 0..=255_u8 {
            let _ = Stat::parse(&[n; 64]);
            let _ = Stat::parse(&[b')', n, b' ', n]);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_value_is_read_on_linux() {
        let stats = ProcessStats::read();
        assert!(stats.cpu_seconds.is_some_and(|s| s >= 0.0), "{stats:?}");
        assert!(stats.resident_bytes.is_some_and(|b| b > 0), "{stats:?}");
        assert!(stats.virtual_bytes.is_some_and(|b| b > 0), "{stats:?}");
        assert!(stats.open_fds.is_some_and(|n| n >= 3), "{stats:?}");
        assert!(stats.max_fds.is_some_and(|n| n > 0), "{stats:?}");
        assert!(stats.threads.is_some_and(|n| n >= 1), "{stats:?}");
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn nothing_is_read_elsewhere() {
        assert_eq!(ProcessStats::read(), ProcessStats::default());
    }
}

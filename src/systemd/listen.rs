//! Socket activation: the listening sockets systemd passed, taken by name, each once.

use std::ffi::OsStr;
use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::OnceLock;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;
/// The longest name systemd gives a socket (`FileDescriptorName=`).
const MAX_NAME: usize = 255;

/// A TCP listener: the socket named `name` that systemd passed to the process (socket
/// activation), or else one bound to `fallback`.
///
/// The socket is taken as [`take_listener`] takes it (validated, at most once per name), and
/// returned in blocking mode, as [`TcpListener::bind`] returns one (one that an upgrade handed
/// over is returned in the mode the old process left it in: the mode belongs to the socket's
/// open description, which both processes share, so changing it would change it under the old
/// process's accept loop; the same program sets it as it did); an inherited socket keeps
/// the listen backlog systemd gave it (the unit's `Backlog=`). When the process was not
/// activated, or was passed no socket of that name, or the socket of that name was taken
/// already, it binds `fallback` with [`TcpListener::bind`].
///
/// Either way the listener is the one an upgrade hands to the new process under `name` (see
/// [Upgrades](crate::Runner#upgrades)), for as long as it is open; there, this same call
/// takes it back, so the new process never binds the port the old one still holds.
///
/// # Errors
///
/// An invalid `name` or an inherited socket of the wrong kind (see [`take_listener`]), the
/// error of making the inherited socket blocking, and otherwise the errors of binding
/// `fallback`.
///
/// ```
/// // Under `systemd-socket-activate -l 127.0.0.1:8080 --fdname=api prog`, or a `.socket`
/// // unit with `FileDescriptorName=api`, the socket systemd listens on; else a bound one.
/// let listener = lifecycle::systemd::listener("api", "127.0.0.1:0")?;
/// println!("listening on {}", listener.local_addr()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn listener(name: &str, fallback: impl ToSocketAddrs) -> io::Result<TcpListener> {
    match take_listener(name)? {
        Some(listener) => {
            // A socket an upgrade handed over is shared with the old process, which may still
            // be accepting from it: its blocking mode belongs to the open description both
            // hold, so it is left as the old process (the same program) set it.
            #[cfg(target_os = "linux")]
            let shared = crate::upgrade::parent().is_some();
            #[cfg(not(target_os = "linux"))]
            let shared = false;
            if !shared {
                listener.set_nonblocking(false)?;
            }
            Ok(listener)
        }
        None => {
            let listener = TcpListener::bind(fallback)?;
            #[cfg(unix)]
            super::named::record(name, std::os::fd::AsRawFd::as_raw_fd(&listener));
            Ok(listener)
        }
    }
}

/// The listening socket named `name` that systemd passed to the process, if it did; taken at
/// most once: a second take of the same name gets `None`.
///
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are read once, the first time a socket is
/// asked for, and never changed (`remove_var` is unsound while other threads run). They count
/// only when `LISTEN_PID` is this process's id; the sockets are the descriptors from 3 on, named
/// in order by `LISTEN_FDNAMES` (`:`-separated; with `systemd-socket-activate`, one `--fdname`
/// per `-l`, in the same order). A socket systemd did not name cannot be taken by name:
/// systemd names a unit's sockets after the unit (`demo.socket`) unless it sets
/// `FileDescriptorName=`. Values that do not hold together (`LISTEN_FDS` not a number, or more
/// than a descriptor can number; more or fewer names than sockets) are logged at warn level,
/// and no socket is taken.
///
/// The socket taken must be a listening TCP socket (a stream socket of the IPv4 or IPv6
/// family, listening); it is then marked close-on-exec, so that child processes do not
/// inherit it, and returned as it is (its blocking mode is systemd's: blocking, unless the
/// unit says `NonBlocking=yes`). Sockets no one takes stay open as they were passed. Nothing
/// else in the process should use the passed descriptors by number.
///
/// Not under socket activation, or on a platform other than Unix, it returns `Ok(None)`. A
/// socket taken is handed over by an upgrade, as [`listener`]'s are, while it is open; a
/// socket the program binds itself is not (bind with [`listener`] for that).
///
/// # Errors
///
/// `InvalidInput` for a `name` no socket can have (the rule of systemd's
/// `FileDescriptorName=`: 1 to 255 printable ASCII characters, `:` excepted), for several
/// sockets of that name (which one would be served is unclear), and for a socket of that name
/// that is not a listening TCP socket (the error names its descriptor and name, and says what
/// it is instead); the error of marking it close-on-exec.
pub fn take_listener(name: &str) -> io::Result<Option<TcpListener>> {
    check_name(name)?;
    let listener = activation().take(name)?;
    #[cfg(unix)]
    if let Some(listener) = &listener {
        super::named::record(name, std::os::fd::AsRawFd::as_raw_fd(listener));
    }
    Ok(listener)
}

/// Refuses a name that no socket can have.
fn check_name(name: &str) -> io::Result<()> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME {
        "is longer than 255 bytes"
    } else if name.contains(':') {
        "contains `:`, which separates names in LISTEN_FDNAMES"
    } else if !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        "holds a character other than printable ASCII"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("socket activation: the socket name {name:?} {why}"),
    ))
}

/// What socket activation passed this process, read once.
fn activation() -> &'static Activation {
    static ACTIVATION: OnceLock<Activation> = OnceLock::new();
    ACTIVATION.get_or_init(|| {
        let var = std::env::var_os;
        let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
        let (activation, problem) = Activation::parse(
            pid.as_deref(),
            fds.as_deref(),
            names.as_deref(),
            std::process::id(),
        );
        if let Some(problem) = problem {
            crate::relay::warn!("socket activation: {problem}");
        }
        // As sd_listen_fds(3) does: the passed descriptors, taken or not, are not inherited by
        // the program's children.
        #[cfg(unix)]
        unix::close_on_exec_from_3(activation.passed);
        activation
    })
}

/// The sockets passed: how many, and those that can be taken by name.
#[derive(Debug, Default)]
struct Activation {
    passed: u32,
    named: Vec<Passed>,
}

/// A socket passed with a name.
#[derive(Debug)]
struct Passed {
    fd: i32,
    name: String,
    taken: std::sync::atomic::AtomicBool,
}

impl Activation {
    /// What `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` say for the process `pid`, and the
    /// problem with them, if any (the sockets that can be taken are then none).
    fn parse(
        for_pid: Option<&OsStr>,
        fds: Option<&OsStr>,
        names: Option<&OsStr>,
        pid: u32,
    ) -> (Activation, Option<String>) {
        let none = Activation::default();
        let Some(for_pid) = for_pid else {
            return (none, None);
        };
        match for_pid.to_str().map(str::parse::<u32>) {
            Some(Ok(p)) if p == pid => {}
            Some(Ok(_)) => return (none, None),
            _ => {
                return (
                    none,
                    Some(format!("LISTEN_PID={for_pid:?} is not a process id")),
                )
            }
        }
        let most = (i32::MAX - FIRST_FD) as u32;
        let passed = match fds.map(|n| (n, n.to_str().map(str::parse::<u32>))) {
            None => return (none, None),
            Some((_, Some(Ok(n)))) if n <= most => n,
            Some((n, _)) => {
                let problem = format!("LISTEN_FDS={n:?} is not a number of descriptors");
                return (none, Some(problem));
            }
        };
        let unnamed = Activation {
            passed,
            named: Vec::new(),
        };
        let Some(names) = names else {
            return (unnamed, None);
        };
        let Some(names) = names.to_str().map(|n| n.split(':').collect::<Vec<_>>()) else {
            return (
                unnamed,
                Some(format!("LISTEN_FDNAMES={names:?} is not UTF-8")),
            );
        };
        if passed == 0 {
            return (unnamed, None);
        }
        if names.len() != passed as usize {
            let problem = format!(
                "LISTEN_FDNAMES has {} names for {passed} sockets: none can be taken by name",
                names.len()
            );
            return (unnamed, Some(problem));
        }
        let named = (FIRST_FD..)
            .zip(names)
            .map(|(fd, name)| Passed {
                fd,
                name: name.to_owned(),
                taken: Default::default(),
            })
            .collect();
        (Activation { passed, named }, None)
    }

    /// Takes the socket named `name`: `None` if there is none, or it was taken already.
    fn take(&self, name: &str) -> io::Result<Option<TcpListener>> {
        let mut matching = self.named.iter().filter(|p| p.name == name);
        let Some(passed) = matching.next() else {
            if self.passed > 0 {
                let names: Vec<_> = self.named.iter().map(|p| p.name.as_str()).collect();
                let names = match names.is_empty() {
                    true => "none has a name".to_owned(),
                    false => format!("named {}", names.join(", ")),
                };
                crate::relay::info!(
                    "socket activation: no socket named `{name}` among the {} passed \
                     ({names})",
                    self.passed
                );
            }
            return Ok(None);
        };
        if matching.next().is_some() {
            let fds: Vec<_> = (self.named.iter())
                .filter(|p| p.name == name)
                .map(|p| p.fd)
                .collect();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket activation: {} sockets are named `{name}` (descriptors {fds:?}); \
                     one listener takes one socket, so give each its own name",
                    fds.len()
                ),
            ));
        }
        if passed.taken.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(None);
        }
        let listener = adopt(passed.fd, name).inspect_err(|_| {
            // Not taken: a second take gets the same error, not a fallback bind.
            passed
                .taken
                .store(false, std::sync::atomic::Ordering::Release);
        })?;
        if let Some(listener) = &listener {
            let addr = listener.local_addr()?;
            crate::relay::info!(
                "socket activation: took `{name}` (descriptor {}, {addr})",
                passed.fd
            );
        }
        Ok(listener)
    }
}

/// Makes the passed descriptor `fd` a listener, once it is validated.
#[cfg(unix)]
fn adopt(fd: i32, name: &str) -> io::Result<Option<TcpListener>> {
    use std::os::fd::FromRawFd;

    if let Err(what) = unix::listening_tcp(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket activation: descriptor {fd} (`{name}`) is not a listening TCP socket: \
                 {what}"
            ),
        ));
    }
    unix::close_on_exec(fd)?;
    // SAFETY: systemd passed `fd` to this process for it to own; it is open (validated just
    // now), and taken once only (the `taken` flag), so no other owner closes it.
    Ok(Some(unsafe { TcpListener::from_raw_fd(fd) }))
}

/// Elsewhere no socket is ever passed.
#[cfg(not(unix))]
fn adopt(_fd: i32, _name: &str) -> io::Result<Option<TcpListener>> {
    Ok(None)
}

#[cfg(unix)]
pub(crate) mod unix {
    use std::io;
    use std::mem::{size_of, MaybeUninit};

    use libc::{c_int, c_void, socklen_t};

    /// An integer socket option of `fd`.
    fn int_option(fd: c_int, level: c_int, option: c_int) -> io::Result<c_int> {
        let mut value: c_int = 0;
        let mut len = size_of::<c_int>() as socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `value`, which holds them.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                option,
                (&mut value as *mut c_int).cast::<c_void>(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }

    /// `Ok` if `fd` is a listening TCP socket; else what it is instead.
    pub(super) fn listening_tcp(fd: c_int) -> Result<(), String> {
        let kind = int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EBADF) => "it is not open".to_owned(),
                Some(libc::ENOTSOCK) => "it is not a socket".to_owned(),
                _ => format!("its type cannot be read: {e}"),
            }
        })?;
        if kind != libc::SOCK_STREAM {
            let kind = match kind {
                libc::SOCK_DGRAM => "a datagram socket",
                libc::SOCK_SEQPACKET => "a seqpacket socket",
                libc::SOCK_RAW => "a raw socket",
                _ => "a socket of another type",
            };
            return Err(format!("it is {kind}, not a stream socket"));
        }
        let mut addr = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: getsockname(2) writes at most `len` bytes into `addr`, which holds them.
        if unsafe { libc::getsockname(fd, addr.as_mut_ptr().cast(), &mut len) } != 0 {
            return Err(format!(
                "its address cannot be read: {}",
                io::Error::last_os_error()
            ));
        }
        // SAFETY: zeroed, then written by getsockname: every field is initialized.
        let family = c_int::from(unsafe { addr.assume_init() }.ss_family);
        match family {
            libc::AF_INET | libc::AF_INET6 => {}
            libc::AF_UNIX => return Err("it is a Unix socket, not an IP one".to_owned()),
            other => return Err(format!("it is of address family {other}, not IP")),
        }
        #[cfg(target_os = "linux")]
        match int_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) {
            Ok(libc::IPPROTO_TCP) => {}
            Ok(other) => return Err(format!("its protocol is {other}, not TCP")),
            Err(e) => return Err(format!("its protocol cannot be read: {e}")),
        }
        match int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
            Ok(0) => Err("it is not listening".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("whether it listens cannot be read: {e}")),
        }
    }

    /// Marks `fd` close-on-exec.
    /// Sets close-on-exec on the `passed` descriptors from 3, ignoring any not open; at most
    /// as many as the process may have open (`RLIMIT_NOFILE`), whatever `LISTEN_FDS` said.
    pub(super) fn close_on_exec_from_3(passed: u32) {
        let max = open_files_limit();
        let end = (3 + u64::from(passed)).min(max).min(c_int::MAX as u64);
        for fd in 3..end {
            // `end` is at most c_int::MAX.
            let _ = close_on_exec(fd as c_int);
        }
    }

    /// How many descriptors the process may have open: its soft `RLIMIT_NOFILE` (1024 if it
    /// cannot be read), so that a loop over descriptor numbers has a bound.
    pub(crate) fn open_files_limit() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) fills in `limit`, which it may write.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            // `rlim_t` is `u64` here but not on every unix.
            #[allow(clippy::useless_conversion)]
            u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX)
        } else {
            1024
        }
    }

    pub(super) fn close_on_exec(fd: c_int) -> io::Result<()> {
        // SAFETY: fcntl(2) with F_GETFD and F_SETFD takes no pointers.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{check_name, Activation};

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    fn names(a: &Activation) -> Vec<(i32, &str)> {
        a.named.iter().map(|p| (p.fd, p.name.as_str())).collect()
    }

    #[test]
    fn the_variables_count_for_this_process_only() {
        let (a, problem) = Activation::parse(os("42"), os("2"), os("health:api"), 42);
        assert_eq!((a.passed, problem), (2, None));
        assert_eq!(names(&a), [(3, "health"), (4, "api")]);
        let (a, problem) = Activation::parse(os("41"), os("2"), os("health:api"), 42);
        assert_eq!((a.passed, a.named.len(), problem), (0, 0, None));
        let (a, problem) = Activation::parse(None, os("2"), os("health:api"), 42);
        assert_eq!((a.passed, a.named.len(), problem), (0, 0, None));
    }

    #[test]
    fn values_that_do_not_hold_together_pass_nothing_by_name() {
        let huge = u64::MAX.to_string();
        for (pid, fds, names) in [
            ("me", "1", "health"),
            ("42", "-1", "health"),
            ("42", "lots", "health"),
            ("42", "2147483645", "health"),
            ("42", &huge, "health"),
            ("42", "2", "health"),
            ("42", "1", "health:api"),
        ] {
            let (a, problem) = Activation::parse(os(pid), os(fds), os(names), 42);
            assert!(a.named.is_empty(), "{pid} {fds} {names}");
            assert!(problem.is_some(), "{pid} {fds} {names}");
        }
        // Unnamed sockets cannot be taken by name; that is not a problem in itself.
        let (a, problem) = Activation::parse(os("42"), os("2147483644"), None, 42);
        assert_eq!((a.passed, a.named.len(), problem), (2147483644, 0, None));
    }

    #[test]
    fn names_follow_the_rule_of_systemd() {
        for name in ["health", "api", "demo.socket", "a b", &"x".repeat(255)] {
            check_name(name).unwrap();
        }
        for name in ["", "a:b", "nul\0", "line\n", "é", &"x".repeat(256)] {
            let e = check_name(name).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_name_is_taken_once_and_several_of_one_name_are_refused() {
        // Descriptor numbers nothing owns here: the take refuses them before it owns one.
        let (a, _) = Activation::parse(os("7"), os("3"), os("x:dup:dup"), 7);
        let e = a.take("dup").unwrap_err();
        assert!(e.to_string().contains("2 sockets are named `dup`"), "{e}");
        assert!(a.take("other").unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_is_taken_once_close_on_exec() {
        use std::os::fd::{AsRawFd, IntoRawFd};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.into_raw_fd();
        let a = Activation {
            passed: 1,
            named: vec![super::Passed {
                fd,
                name: "health".to_owned(),
                taken: Default::default(),
            }],
        };
        let taken = a.take("health").unwrap().expect("the socket");
        assert_eq!((taken.as_raw_fd(), taken.local_addr().unwrap()), (fd, addr));
        // SAFETY: fcntl(2) with F_GETFD takes no pointers; `fd` is `taken`'s.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        assert!(a.take("health").unwrap().is_none(), "taken twice");
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_of_the_wrong_kind_is_refused_at_every_take() {
        use std::os::fd::AsRawFd;

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = Activation {
            passed: 1,
            named: vec![super::Passed {
                fd: udp.as_raw_fd(),
                name: "health".to_owned(),
                taken: Default::default(),
            }],
        };
        for _ in 0..2 {
            // Not "none left", which would make its caller bind the address instead.
            let e = a.take("health").unwrap_err();
            assert!(e.to_string().contains("a datagram socket"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_a_listening_tcp_socket_passes() {
        use std::net::{TcpListener, TcpStream, UdpSocket};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::{UnixDatagram, UnixListener};

        use super::unix::listening_tcp;

        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        listening_tcp(tcp.as_raw_fd()).unwrap();
        let v6 = TcpListener::bind("[::1]:0");
        if let Ok(v6) = &v6 {
            listening_tcp(v6.as_raw_fd()).unwrap();
        }
        let stream = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dir = std::env::temp_dir().join(format!("lifecycle-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unix = UnixListener::bind(dir.join("s")).unwrap();
        let (dgram, _) = UnixDatagram::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        for (fd, says) in [
            (stream.as_raw_fd(), "not listening"),
            (udp.as_raw_fd(), "a datagram socket"),
            (unix.as_raw_fd(), "a Unix socket"),
            (dgram.as_raw_fd(), "a datagram socket"),
            (file.as_raw_fd(), "not a socket"),
            (1_000_000, "not open"),
        ] {
            let e = listening_tcp(fd).unwrap_err();
            assert!(e.contains(says), "{fd}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

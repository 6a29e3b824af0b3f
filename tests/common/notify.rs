//! A real `AF_UNIX` datagram socket for a child's `NOTIFY_SOCKET`, bound at a path or at an
//! abstract name, as systemd binds its own; what the child sends is received with timeouts.
//! [`Received`] keeps what came, in order, and [`steps`], [`pings`] and [`extensions`] sort it.
#![cfg(target_os = "linux")]

use std::io::ErrorKind;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::WATCHDOG;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory of this test's, named after `what`.
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(what));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unique name for this test process's sockets and directories.
pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("lifecycle-notify-{}-{what}-{n}", std::process::id())
}

/// A socket for `NOTIFY_SOCKET`: the variable's value, and the socket that receives.
pub struct NotifySocket {
    pub value: String,
    socket: UnixDatagram,
    _dir: Option<TempDir>,
}

impl NotifySocket {
    /// A socket bound at a path in a directory of its own.
    pub fn at_path() -> NotifySocket {
        let dir = TempDir::new("sock");
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            value: path.to_str().unwrap().to_owned(),
            socket,
            _dir: Some(dir),
        }
    }

    /// A socket bound at a name in Linux's abstract namespace, given as `@name`.
    pub fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = unique("abstract");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket {
            value: format!("@{name}"),
            socket,
            _dir: None,
        }
    }

    /// The next datagram if one arrives within `timeout`.
    pub fn next_within(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8(buf[..n].to_vec()).expect("UTF-8")),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Asks the kernel to attach the sender's credentials to every datagram sent from now on
    /// (`SO_PASSCRED`), for [`next_from_within`](NotifySocket::next_from_within). Call it
    /// before the child starts.
    pub fn pass_credentials(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) reads an int from a pointer to one, of its size.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
    }

    /// The next datagram if one arrives within `timeout`, with the id of the process that sent
    /// it (from its `SCM_CREDENTIALS`; see [`pass_credentials`](NotifySocket::pass_credentials)).
    pub fn next_from_within(&self, timeout: Duration) -> Option<(libc::pid_t, String)> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        // Room for one control message holding a `ucred`, aligned as `cmsghdr` needs.
        let mut control = [0u64; 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: recvmsg(2) writes into the buffers `msg` points to, of the sizes it says.
            let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => {
                        continue
                    }
                    _ => panic!("recvmsg: {e}"),
                }
            }
            let text = String::from_utf8(buf[..n as usize].to_vec()).expect("UTF-8");
            let mut pid = None;
            // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within
            // `msg_controllen`; a credentials message holds a `ucred`, read unaligned.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                    {
                        let cred: libc::ucred =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        pid = Some(cred.pid);
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            let pid = pid.expect("the sender's credentials (pass_credentials first)");
            return Some((pid, text));
        }
    }

    /// The next datagram, waited for under the [`WATCHDOG`](super::WATCHDOG).
    #[track_caller]
    pub fn next(&self) -> String {
        let watchdog = super::WATCHDOG;
        (self.next_within(watchdog))
            .unwrap_or_else(|| panic!("no datagram within the watchdog {watchdog:?}"))
    }

    /// Checks that no datagram is waiting.
    #[track_caller]
    pub fn assert_empty(&self) {
        let more = self.pending();
        assert!(more.is_empty(), "datagrams more: {more:?}");
    }

    /// Every datagram already waiting, without waiting.
    pub fn pending(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8(buf[..n].to_vec()).expect("UTF-8"));
        }
        self.socket.set_nonblocking(false).unwrap();
        out
    }
}

/// Everything a child sent to a [`NotifySocket`], in order, and where the test has read up to.
pub struct Received<'a> {
    pub socket: &'a NotifySocket,
    pub all: Vec<String>,
}

impl<'a> Received<'a> {
    /// Nothing received yet on `socket`.
    pub fn new(socket: &'a NotifySocket) -> Received<'a> {
        Received {
            socket,
            all: Vec::new(),
        }
    }
}

pub const PING: &str = "WATCHDOG=1";
pub const EXTEND: &str = "EXTEND_TIMEOUT_USEC=";

impl Received<'_> {
    /// Receives until a datagram equal to `wanted`; returns what came since the last call
    /// (itself included), failing the test if it has not come within the watchdog.
    #[track_caller]
    pub fn until(&mut self, wanted: &str) -> Vec<String> {
        self.until_with(|d| d == wanted, wanted)
    }

    #[track_caller]
    pub fn until_with(&mut self, found: impl Fn(&str) -> bool, what: &str) -> Vec<String> {
        let mut got = Vec::new();
        // One bound for the whole wait: pings alone must not keep it going.
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(d) = self.socket.next_within(left) else {
                panic!(
                    "no {what:?} within {WATCHDOG:?}; since the last step: {got:#?}; in all: {:#?}",
                    self.all
                );
            };
            self.all.push(d.clone());
            got.push(d.clone());
            if found(&d) {
                return got;
            }
        }
    }

    /// `n` more datagrams equal to `wanted`; returns what came meanwhile.
    #[track_caller]
    pub fn count(&mut self, wanted: &str, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..n {
            got.extend(self.until_with(|d| d.starts_with(wanted), wanted));
        }
        got
    }
}

/// The datagrams that are neither pings nor extensions: the statuses, ready and stopping.
pub fn steps(got: &[String]) -> Vec<&str> {
    (got.iter())
        .map(String::as_str)
        .filter(|d| *d != PING && !d.starts_with(EXTEND))
        .collect()
}

pub fn pings(got: &[String]) -> usize {
    got.iter().filter(|d| *d == PING).count()
}

/// The values of the extensions among `got`, in microseconds.
pub fn extensions(got: &[String]) -> Vec<u64> {
    (got.iter())
        .filter_map(|d| d.strip_prefix(EXTEND))
        .map(|v| v.parse().expect("a number of microseconds"))
        .collect()
}

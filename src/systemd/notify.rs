//! [`Notifier`]: `sd_notify(3)` without libsystemd, over a non-blocking datagram socket.

use std::ffi::OsStr;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The most systemd reads of one notification (its `NOTIFY_BUFFER_MAX`, `PIPE_BUF`): a longer
/// datagram is ignored whole, so a status is cut to fit.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// The longest a change of state (`READY=1`, `STOPPING=1`) waits for room in a full notify
/// socket's queue before it is dropped: 31 ms.
#[cfg(test)]
pub(crate) const STATE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(31);

/// The process's notifier, made from the environment the first time it is asked for.
static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Tells systemd how the program is doing, as `sd_notify(3)` does: `READY=1`, `STOPPING=1`,
/// `STATUS=...`, `EXTEND_TIMEOUT_USEC=...`, `WATCHDOG=1`, `MAINPID=...`.
///
/// There is one per process, [`Notifier::get`]. It reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
/// `WATCHDOG_PID` once, the first time it is asked for, and never changes the environment
/// (`remove_var` is unsound while other threads run). Not under systemd (no `NOTIFY_SOCKET`),
/// or on a platform other than Unix, every method does nothing and returns `false`.
///
/// # The rules
///
/// - `NOTIFY_SOCKET` is an absolute path, or `@name` for a name in Linux's abstract namespace.
///   Anything else (empty, relative, `vsock:`, a path too long for a socket address) is logged
///   at warn level and taken as not being under systemd.
/// - The watchdog is on when `WATCHDOG_USEC` is a positive number of microseconds and
///   `WATCHDOG_PID` is this process's id, or unset (as `sd_watchdog_enabled(3)` reads them).
///   Its interval, [`watchdog_interval`](Notifier::watchdog_interval), is half of it.
/// - A send never blocks: the socket is non-blocking, and a notification it cannot take at
///   once (systemd's queue is full, the socket is gone) is dropped, counted
///   ([`dropped`](Notifier::dropped)) and logged (the first at warn level, the others at debug
///   level), and never retried. Each method is therefore safe to call from a shutdown path,
///   and from the thread that handles signals.
/// - Child processes inherit `NOTIFY_SOCKET` (the environment is left alone); systemd takes
///   notifications from the main process only unless the unit says `NotifyAccess=all`. A
///   program that starts children can leave it out of theirs with
///   [`Command::env_remove`](std::process::Command::env_remove).
///
/// ```no_run
/// use lifecycle::systemd::Notifier;
///
/// let notifier = Notifier::get();
/// notifier.status("loading the model");
/// // ... start ...
/// notifier.ready();
/// if let Some(every) = notifier.watchdog_interval() {
///     // call notifier.watchdog() every `every`, while the program is alive
/// #   let _ = every;
/// }
/// // ... on SIGTERM:
/// notifier.shutting_down();
/// ```
pub struct Notifier {
    socket: Option<Socket>,
    watchdog: Option<Duration>,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl Notifier {
    /// The process's notifier: made from `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` the
    /// first time it is asked for, the same one from then on, from any thread.
    pub fn get() -> &'static Notifier {
        NOTIFIER.get_or_init(|| {
            let var = |name| std::env::var_os(name);
            let (socket, watchdog) = (var("NOTIFY_SOCKET"), var("WATCHDOG_USEC"));
            let pid = var("WATCHDOG_PID");
            Notifier::from_vars(
                socket.as_deref(),
                watchdog.as_deref(),
                pid.as_deref(),
                std::process::id(),
            )
        })
    }

    /// A notifier from the three variables' values, for the process `pid`.
    pub(crate) fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        pid: u32,
    ) -> Notifier {
        let socket = notify_socket.and_then(|value| match Socket::open(value) {
            Ok(socket) => Some(socket),
            Err(why) => {
                crate::relay::warn!("systemd: NOTIFY_SOCKET={value:?} {why}: not notifying");
                None
            }
        });
        let watchdog = match (&socket, watchdog_interval(watchdog_usec, watchdog_pid, pid)) {
            (Some(_), Ok(interval)) => interval,
            (None, _) => None,
            (Some(_), Err(why)) => {
                crate::relay::warn!("systemd: {why}: the watchdog is off");
                None
            }
        };
        Notifier {
            socket,
            watchdog,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether notifications go anywhere: the process runs under systemd with a usable
    /// `NOTIFY_SOCKET`.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1`: the program has started and serves. Returns whether it was sent (as every
    /// method here does): `false` when not under systemd, or when it was dropped.
    ///
    /// A change of state that systemd must not miss (`READY=1`, `STOPPING=1`) is tried again a
    /// few times, for at most 31 ms in all, when the socket's queue is full (it is shared by
    /// every unit); the other notifications are dropped at once.
    pub fn ready(&self) -> bool {
        self.send_patiently("READY=1")
    }

    /// `STOPPING=1`: the program is shutting down (tried again as [`ready`](Notifier::ready)
    /// is).
    pub fn shutting_down(&self) -> bool {
        self.send_patiently("STOPPING=1")
    }

    /// `STATUS=status`, the line `systemctl status` shows. Control characters (line ends
    /// included, which would start another assignment) become spaces, and a status too long
    /// for systemd to read (4 KiB with its key) is cut at a character boundary.
    pub fn status(&self, status: &str) -> bool {
        self.send(&assignment("STATUS", status))
    }

    /// `EXTEND_TIMEOUT_USEC=...`: asks systemd for `by` more than now before its start or stop
    /// timeout (`TimeoutStartSec`, `TimeoutStopSec`) runs out; send it again before that time
    /// passes to extend once more. Any `Duration` is taken: microseconds beyond `u64` are
    /// `u64::MAX`, which systemd reads as infinity.
    pub fn extend_timeout(&self, by: Duration) -> bool {
        let usec = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.send(&format!("EXTEND_TIMEOUT_USEC={usec}"))
    }

    /// `WATCHDOG=1`: the program is alive. Sent only while the watchdog is on for this process
    /// ([`watchdog_interval`](Notifier::watchdog_interval) is `Some`); otherwise nothing is
    /// sent and it returns `false`.
    pub fn watchdog(&self) -> bool {
        self.watchdog.is_some() && self.send("WATCHDOG=1")
    }

    /// `MAINPID=pid`: the process systemd should watch as the service's main process (tried
    /// again as [`ready`](Notifier::ready) is: systemd must not miss it).
    pub fn main_pid(&self, pid: u32) -> bool {
        self.send_patiently(&format!("MAINPID={pid}"))
    }

    /// How often to send [`watchdog`](Notifier::watchdog): half of `WATCHDOG_USEC` (at least
    /// a microsecond), when the watchdog is on for this process; `None` otherwise.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How many notifications have been sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// How many notifications were dropped because the socket could not take them at once.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends `line` (a change of state of the crate's own, `READY=1`, `STOPPING=1` or
    /// `MAINPID=`) and
    /// `STATUS=status` in one datagram, so that systemd takes both at once, tried again as
    /// [`ready`](Notifier::ready) is; `status` is made one line and cut to fit, as
    /// [`status`](Notifier::status) does.
    pub(crate) fn send_with_status(&self, line: &str, status: &str) -> bool {
        let status = assignment("STATUS", status);
        let fits = MAX_MESSAGE.saturating_sub(line.len() + 1);
        let mut cut = status.len().min(fits);
        while !status.is_char_boundary(cut) {
            cut -= 1;
        }
        self.send_patiently(&format!("{line}\n{}", &status[..cut]))
    }

    /// Sends `message` (one or more `KEY=value` lines) in one datagram, never blocking.
    pub(crate) fn send(&self, message: &str) -> bool {
        self.send_within(message, &[])
    }

    /// Sends `message`, trying again after 1, 2, 4, 8 and 16 ms while the socket's queue is
    /// full: a wait of 31 ms at most.
    fn send_patiently(&self, message: &str) -> bool {
        self.send_within(message, &[1, 2, 4, 8, 16])
    }

    /// Sends `message`; while the socket's queue is full, tries again after each of `pauses`
    /// (in milliseconds).
    fn send_within(&self, message: &str, pauses: &[u64]) -> bool {
        let Some(socket) = &self.socket else {
            return false;
        };
        let mut sent = socket.send(message.as_bytes());
        for &pause in pauses {
            match &sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    sent = socket.send(message.as_bytes());
                }
                _ => break,
            }
        }
        match sent {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let what = message.split('=').next().unwrap_or_default();
                if n == 1 {
                    crate::relay::warn!(
                        "systemd: notification {what} dropped: {e} (later drops are logged at \
                         debug level)"
                    );
                } else {
                    crate::relay::debug!("systemd: notification {what} dropped ({n} so far): {e}");
                }
                false
            }
        }
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.is_enabled())
            .field("watchdog_interval", &self.watchdog)
            .field("sent", &self.sent())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// `KEY=value`, the value's control characters made spaces, cut to [`MAX_MESSAGE`] bytes.
fn assignment(key: &str, value: &str) -> String {
    let mut out = String::with_capacity((key.len() + 1 + value.len()).min(MAX_MESSAGE));
    out.push_str(key);
    out.push('=');
    for c in value.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_MESSAGE {
            break;
        }
        out.push(c);
    }
    out
}

/// The watchdog's interval from `WATCHDOG_USEC` and `WATCHDOG_PID`, for the process `pid`:
/// `None` when it is off or for another process.
///
/// # Errors
///
/// Values that are not numbers, or a zero `WATCHDOG_USEC`, saying which.
fn watchdog_interval(
    usec: Option<&OsStr>,
    for_pid: Option<&OsStr>,
    pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let usec = match usec.to_str().map(|s| s.parse::<u64>()) {
        Some(Ok(n)) if n > 0 => n,
        _ => {
            return Err(format!(
                "WATCHDOG_USEC={usec:?} is not a positive number of microseconds"
            ))
        }
    };
    if let Some(for_pid) = for_pid {
        match for_pid.to_str().map(|s| s.parse::<u32>()) {
            Some(Ok(p)) if p == pid => {}
            Some(Ok(p)) => {
                crate::relay::debug!("systemd: the watchdog is for process {p}, not this one");
                return Ok(None);
            }
            _ => return Err(format!("WATCHDOG_PID={for_pid:?} is not a process id")),
        }
    }
    Ok(Some(Duration::from_micros((usec / 2).max(1))))
}

#[cfg(unix)]
use self::unix::Socket;

/// Without Unix sockets there is never a socket to send to.
#[cfg(not(unix))]
enum Socket {}

#[cfg(not(unix))]
impl Socket {
    fn open(_value: &OsStr) -> Result<Socket, String> {
        Err("is not supported on this platform".to_owned())
    }

    fn send(&self, _message: &[u8]) -> std::io::Result<()> {
        match *self {}
    }
}

#[cfg(unix)]
mod unix {
    use std::ffi::OsStr;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// An unbound, non-blocking datagram socket and the address it sends to: each send names
    /// the address, so a notify socket that systemd makes anew (after `daemon-reexec`) is
    /// still reached.
    pub(super) struct Socket {
        datagram: UnixDatagram,
        to: SocketAddr,
    }

    impl Socket {
        /// The socket `NOTIFY_SOCKET` names, `value`.
        ///
        /// # Errors
        ///
        /// Why `value` names no socket, or why the socket could not be made.
        pub(super) fn open(value: &OsStr) -> Result<Socket, String> {
            let to = address(value)?;
            let datagram = UnixDatagram::unbound().map_err(|e| format!("gives no socket: {e}"))?;
            datagram
                .set_nonblocking(true)
                .map_err(|e| format!("gives no socket: {e}"))?;
            Ok(Socket { datagram, to })
        }

        /// Sends `message` in one datagram, or fails at once.
        pub(super) fn send(&self, message: &[u8]) -> io::Result<()> {
            let n = self.datagram.send_to_addr(message, &self.to)?;
            if n != message.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "datagram cut short",
                ));
            }
            Ok(())
        }
    }

    /// The address `NOTIFY_SOCKET` names: an absolute path, or `@name`, abstract.
    fn address(value: &OsStr) -> Result<SocketAddr, String> {
        let bytes = value.as_bytes();
        match bytes.first() {
            None => Err("is empty".to_owned()),
            Some(b'@') => abstract_address(&bytes[1..]),
            Some(b'/') => {
                SocketAddr::from_pathname(value).map_err(|e| format!("is not a socket path: {e}"))
            }
            Some(_) => Err("is neither an absolute path nor an abstract `@name`".to_owned()),
        }
    }

    #[cfg(target_os = "linux")]
    fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
        use std::os::linux::net::SocketAddrExt;

        if name.is_empty() {
            return Err("is an empty abstract name".to_owned());
        }
        SocketAddr::from_abstract_name(name).map_err(|e| format!("is not an abstract name: {e}"))
    }

    #[cfg(not(target_os = "linux"))]
    fn abstract_address(_name: &[u8]) -> Result<SocketAddr, String> {
        Err("is an abstract name, which only Linux has".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::time::Duration;

    use super::{assignment, watchdog_interval, Notifier, MAX_MESSAGE};

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn not_under_systemd_nothing_is_sent() {
        let n = Notifier::from_vars(None, os("1000000"), None, 42);
        assert!(!n.is_enabled());
        assert!(!n.ready() && !n.shutting_down() && !n.watchdog() && !n.status("x"));
        assert_eq!(n.watchdog_interval(), None, "no socket, no watchdog");
        assert_eq!((n.sent(), n.dropped()), (0, 0));
    }

    #[test]
    fn a_socket_value_that_names_no_socket_is_taken_as_none() {
        let long = format!("/{}", "x".repeat(200));
        for value in ["", "relative/path", "vsock:2:1234", "@", long.as_str()] {
            let n = Notifier::from_vars(os(value), os("1000000"), None, 42);
            assert!(!n.is_enabled(), "{value:?}");
            assert_eq!(n.watchdog_interval(), None, "{value:?}");
        }
    }

    #[test]
    fn the_watchdog_follows_its_usec_and_pid() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval(os("1000000"), None, 42), Ok(half));
        assert_eq!(watchdog_interval(os("1000000"), os("42"), 42), Ok(half));
        assert_eq!(watchdog_interval(os("1000000"), os("43"), 42), Ok(None));
        assert_eq!(watchdog_interval(None, os("42"), 42), Ok(None));
        assert_eq!(
            watchdog_interval(os("1"), None, 42),
            Ok(Some(Duration::from_micros(1)))
        );
        let max = Some(Duration::from_micros(u64::MAX / 2));
        assert_eq!(
            watchdog_interval(os(&u64::MAX.to_string()), None, 1),
            Ok(max)
        );
        for usec in ["0", "-5", "1s", "", "99999999999999999999999"] {
            let e = watchdog_interval(os(usec), None, 42).unwrap_err();
            assert!(e.contains("WATCHDOG_USEC"), "{e}");
        }
        let e = watchdog_interval(os("1000"), os("me"), 42).unwrap_err();
        assert!(e.contains("WATCHDOG_PID"), "{e}");
    }

    #[test]
    fn a_status_is_one_line_that_fits() {
        assert_eq!(assignment("STATUS", "running"), "STATUS=running");
        assert_eq!(
            assignment("STATUS", "a\nREADY=1\r\0b"),
            "STATUS=a READY=1  b"
        );
        let long = assignment("STATUS", &"é".repeat(3000));
        assert!(long.len() <= MAX_MESSAGE && long.len() > MAX_MESSAGE - 2);
        assert!(long.ends_with('é'));
    }

    #[cfg(unix)]
    #[test]
    fn a_line_and_a_status_go_in_one_datagram_that_fits() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("lifecycle-notify-two-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        assert!(n.send_with_status("READY=1", "a\nb"));
        assert!(n.send_with_status("STOPPING=1", &"é".repeat(3000)));
        let mut buf = vec![0u8; 2 * MAX_MESSAGE];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=a b");
        let k = rx.recv(&mut buf).unwrap();
        assert!(k <= MAX_MESSAGE && k > MAX_MESSAGE - 2, "{k}");
        let long = std::str::from_utf8(&buf[..k]).unwrap();
        assert!(long.starts_with("STOPPING=1\nSTATUS=éé"), "{long}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_change_of_state_waits_a_little_for_a_full_queue_and_a_status_does_not() {
        use std::os::unix::net::UnixDatagram;
        use std::time::Instant;

        use super::STATE_PATIENCE;
        let dir =
            std::env::temp_dir().join(format!("lifecycle-notify-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        // Fill the receiver's queue.
        let mut filled = 0;
        while n.status("fill") {
            filled += 1;
            assert!(filled < 100_000, "the queue never filled");
        }
        let drops = n.dropped();
        assert!(!n.status("more"), "a status is dropped at once");
        // A change of state tries again for a while, then is dropped, counted, and returns.
        let began = Instant::now();
        assert!(!n.ready());
        let waited = began.elapsed();
        assert!(waited >= STATE_PATIENCE, "{waited:?}");
        assert_eq!(n.dropped(), drops + 2);
        // Room made: it goes through.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let k = rx.recv(&mut buf).unwrap();
            (rx, buf[..k].to_vec())
        });
        let (rx, first) = reader.join().unwrap();
        assert_eq!(first, b"STATUS=fill");
        assert!(n.ready(), "sent once the queue had room");
        drop(rx);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_send_that_cannot_be_taken_is_dropped_and_counted() {
        let dir = std::env::temp_dir().join(format!("lifecycle-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gone.sock");
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None, 1);
        assert!(n.is_enabled());
        // Nothing listens at the path.
        assert!(!n.ready());
        assert!(!n.status("x"));
        assert_eq!((n.sent(), n.dropped()), (0, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! A model citizen of systemd: tell it how the program is doing (`sd_notify`), and take the
//! listening sockets it opened for the program (socket activation).
//!
//! Both read the environment once, the first time they are used, and never change it
//! (`remove_var` is unsound while other threads run); not under systemd, or on a platform other
//! than Unix, they do nothing, so a program calls them unconditionally.
//!
//! - [`Notifier`] sends `READY=1`, `STOPPING=1`, `STATUS=`, `EXTEND_TIMEOUT_USEC=`,
//!   `WATCHDOG=1` and `MAINPID=` to `NOTIFY_SOCKET` (a path or an abstract `@name`), without
//!   ever blocking: what the socket cannot take at once is dropped and counted.
//! - [`upgraded_from`]: the process whose upgrade started this one, if one did.
//! - [`listener`] takes the socket systemd passed under a name (`LISTEN_FDNAMES`), validated
//!   as a listening TCP socket, or binds the configured address when there is none;
//!   [`take_listener`] only takes. The [`HealthEndpoint`](crate::HealthEndpoint) takes the
//!   socket named `health` (see
//!   [`EndpointOptions::socket_activation`](crate::health::EndpointOptions::socket_activation)).
//!
//! A [`Runner`](crate::Runner) uses the notifier itself: it sends its phase as `STATUS=`,
//! `READY=1` when the run phase begins, `STOPPING=1` when the shutdown does,
//! `EXTEND_TIMEOUT_USEC=` while a start or a close is within its bound, and `WATCHDOG=1` while
//! `/livez` passes (see [its systemd section](crate::Runner#systemd)); a program that runs one
//! calls the notifier only for what it adds.
//!
//! With a unit like this one, systemd holds the port while the program restarts, and knows
//! when it is ready:
//!
//! ```text
//! # demo.socket                          # demo.service
//! [Socket]                               [Service]
//! ListenStream=127.0.0.1:8001            Type=notify
//! FileDescriptorName=health              ExecStart=/usr/bin/demo
//! Service=demo.service                   Sockets=demo.socket
//! ```
//!
//! `systemd-socket-activate -l 127.0.0.1:8001 -l 127.0.0.1:8080 --fdname=health:api demo` does
//! the same by hand (names in the order of the `-l` flags), for a try.
//!
//! Both are written here on the standard library (and `libc` for the socket checks), not
//! with the `sd-notify` crate: its `notify` reads the environment at every call, offers to
//! unset it with `remove_var`, and sends on a new blocking socket each time (a full queue
//! blocks the caller); the 0.4 source connects to `NOTIFY_SOCKET` as a path, so an abstract
//! `@name` does not resolve, and its watchdog check requires `WATCHDOG_PID`.

mod listen;
pub(crate) mod named;
#[cfg(unix)]
pub(crate) use self::listen::unix::open_files_limit;
mod notify;

pub use self::listen::{listener, take_listener};
pub use self::notify::Notifier;

/// The id of the process that started this one by an upgrade (see
/// [Upgrades](crate::Runner#upgrades)), read once from the environment the old process set,
/// and only if it was meant for this process (as `LISTEN_PID` is); `None` otherwise, and on a
/// platform other than Linux.
///
/// For a program that does something differently in the new process of an upgrade (the
/// demo's `--fail-upgraded` fault, say).
///
/// ```
/// // A process started by hand (or by a test runner) was not started by an upgrade.
/// assert_eq!(lifecycle::systemd::upgraded_from(), None);
/// ```
pub fn upgraded_from() -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        crate::upgrade::parent().map(crate::upgrade::Parent::pid)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

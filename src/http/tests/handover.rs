//! A zero-downtime upgrade's two sides: a server started paused, which accepts only once told
//! (the new process), and a hand-over (the old process): it stops accepting, the socket living
//! on elsewhere, and its connections close once answered, or once idle for `HANDOVER_IDLE`.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::later::serve_deferred;
use super::{serve, serve_with, threads_named, wait_until, Client, WATCHDOG};
use crate::http::{Accepting, Limits, Response, HANDOVER_IDLE};

/// How much later than `HANDOVER_IDLE` an idle connection may close, on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

/// Waits for the server to end the connection, as [`Client::until_closed`] does; how long
/// that took.
fn time_to_close(c: &mut Client) -> Duration {
    let start = Instant::now();
    assert!(c.until_closed().is_empty(), "closed without an answer");
    start.elapsed()
}

#[test]
fn a_paused_server_takes_connections_only_once_told_and_none_is_refused() {
    let f = serve_with(Limits::new(), "t-paused", Accepting::Paused);
    // The connect succeeds: the kernel completes it into the backlog.
    let mut c = f.client();
    c.send("GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = c
        .stream
        .read(&mut byte)
        .expect_err("no answer while paused");
    assert!(
        matches!(
            waited.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{waited}"
    );
    assert_eq!(f.server.stats().accepted, 0);
    assert_eq!(f.calls(), 0);

    f.server.start_accepting();
    f.server.start_accepting(); // idempotent
    c.stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    let r = c.reply(false).expect("answered once accepting");
    assert_eq!((r.status, r.body()), (200, "GET /first\n"));
    assert!(!r.closes());
    assert_eq!(f.client().get("/second").status, 200);
}

#[test]
fn after_a_hand_over_a_keep_alive_connection_is_answered_then_closed() {
    let f = serve(Limits::new(), "t-ho-keep");
    let mut c = f.client();
    assert!(!c.get("/before").closes());
    f.server.hand_over();
    f.server.hand_over(); // idempotent
    let r = c.get("/after");
    assert_eq!((r.status, r.body()), (200, "GET /after\n"));
    assert!(r.closes(), "answered with Connection: close");
    assert!(c.until_closed().is_empty(), "then the end of the stream");
}

#[test]
fn after_a_hand_over_pipelined_requests_get_only_the_first_answer() {
    let f = serve(Limits::new(), "t-ho-pipe");
    let mut c = f.client();
    assert_eq!(c.get("/warm").status, 200);
    f.server.hand_over();
    c.send("GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.reply(false).expect("the first answer");
    assert_eq!(r.body(), "GET /one\n");
    assert!(r.closes());
    assert!(c.until_closed().is_empty(), "the second is not answered");
    assert_eq!(f.calls(), 2);
}

#[test]
fn a_request_in_progress_at_the_hand_over_is_answered_with_close() {
    let (server, responders) = serve_deferred(Limits::new(), "t-ho-later");
    let mut c = Client::connect(server.local_addr());
    // Its answer comes later; a request pipelined behind it waits.
    c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\nGET /behind HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).expect("the handler ran");
    server.hand_over();
    responder.send(Response::text(200, "in progress"));
    let r = c.reply(false).expect("the answer in progress");
    assert_eq!(r.body(), "in progress");
    assert!(r.closes(), "sent with Connection: close");
    assert!(
        c.until_closed().is_empty(),
        "the request behind it is not read"
    );
}

#[test]
fn after_a_hand_over_an_idle_connection_ends_after_handover_idle() {
    let f = serve(Limits::new(), "t-ho-idle");
    let mut idle = f.client();
    assert_eq!(idle.get("/").status, 200);
    // Nothing of a head received: no request in progress either.
    let mut silent = f.client();
    wait_until("both connections open", || f.server.open_connections() == 2);
    let start = Instant::now();
    f.server.hand_over();
    let took = time_to_close(&mut idle);
    let silent_took = time_to_close(&mut silent) + took;
    for took in [took, silent_took] {
        let earliest = HANDOVER_IDLE - Duration::from_millis(100);
        assert!(took >= earliest, "ended after {took:?}");
        assert!(took <= HANDOVER_IDLE + SLACK, "ended after {took:?}");
    }
    assert!(start.elapsed() <= HANDOVER_IDLE + SLACK);
    assert_eq!(f.server.stats().timed_out, 0, "not counted as timeouts");
}

#[test]
fn after_a_hand_over_a_partial_head_goes_on_under_its_head_read_deadline() {
    let limits = Limits::new().head_read_timeout(Duration::from_secs(30));
    let f = serve(limits, "t-ho-partial");
    let mut c = f.client();
    c.send("GET /slow HTTP/1.1\r\n");
    wait_until("the head begun", || f.server.stats().bytes_read > 0);
    f.server.hand_over();
    // Past the idle end of a hand-over (bounded: the point is that it is still open).
    std::thread::sleep(HANDOVER_IDLE + Duration::from_millis(300));
    assert!(c.is_held(), "still open, its head not complete");
    c.send("Host: t\r\n\r\n");
    let r = c.reply(false).expect("answered");
    assert_eq!(r.body(), "GET /slow\n");
    assert!(r.closes());
    assert!(c.until_closed().is_empty());
}

#[cfg(unix)]
#[test]
fn after_a_hand_over_new_connections_queue_for_the_process_that_took_the_socket() {
    use std::os::fd::BorrowedFd;

    let f = serve(Limits::new(), "t-ho-dup");
    let fd = f.server.listener_fd().expect("a listener while serving");
    // What the new process inherits: the same socket, through a descriptor of its own.
    // SAFETY: the server's listener stays open until the hand-over below.
    let taken = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .expect("dup");
    let taken = std::net::TcpListener::from(taken);
    f.server.hand_over();
    assert_eq!(f.server.listener_fd(), None);
    wait_until("the listener dropped", || f.server.has_retired_listener());
    let accepted_before = f.server.stats().accepted;

    // Not refused: it waits in the backlog of the socket, which the duplicate accepts from
    // (non-blocking, as the server's descriptor was: they share the file description).
    let client = TcpStream::connect(f.addr()).expect("connect after the hand-over");
    let mut from_taken = None;
    wait_until("the duplicate to accept it", || match taken.accept() {
        Ok((stream, peer)) => {
            from_taken = Some((stream, peer));
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    });
    let (_stream, peer) = from_taken.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(
        f.server.stats().accepted,
        accepted_before,
        "the server took none"
    );
}

#[test]
fn wait_drained_returns_once_the_connections_have_closed_and_not_before() {
    let limits = Limits::new().head_read_timeout(Duration::from_secs(30));
    let f = serve(limits, "t-ho-drain");
    let mut idle = f.client();
    assert_eq!(idle.get("/").status, 200);
    let mut partial = f.client();
    partial.send("GET / HTTP/1.1\r\n");
    wait_until("both open", || f.server.open_connections() == 2);
    assert!(!f.server.wait_drained(Instant::now()), "some are open");

    f.server.hand_over();
    assert!(idle.until_closed().is_empty(), "the idle one ends");
    drop(idle);
    // The partial head holds its connection open: the wait ends at its deadline.
    let start = Instant::now();
    assert!(!f
        .server
        .wait_drained(Instant::now() + Duration::from_millis(300)));
    assert!(start.elapsed() >= Duration::from_millis(300));
    wait_until("the idle one closed", || f.server.open_connections() == 1);

    // Two waiters, from other threads: both are woken once the last one closes.
    let watch = f.server.drain_watch();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let watch = watch.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                (watch.wait(Instant::now() + WATCHDOG), start.elapsed())
            })
        })
        .collect();
    drop(partial);
    for waiter in waiters {
        let (drained, took) = waiter.join().unwrap();
        assert!(drained);
        assert!(took < WATCHDOG / 2, "woken, not at the deadline: {took:?}");
    }
    assert_eq!(watch.open_connections(), 0);
    assert!(
        f.server.wait_drained(Instant::now()),
        "and at once from then on"
    );
}

#[test]
fn a_server_shuts_down_after_a_hand_over_and_its_calls_are_harmless_after() {
    let mut f = serve(Limits::new(), "t-ho-down");
    let mut c = f.client();
    c.send("GET / HTTP/1.1\r\n");
    wait_until("the connection open", || f.server.open_connections() == 1);
    f.server.hand_over();
    f.server.start_accepting(); // no effect after a hand-over
    f.server.shutdown().unwrap();
    wait_until("the threads gone", || {
        threads_named("t-ho-down") + threads_named("t-ho-down 1") == 0
    });
    assert!(f.server.wait_drained(Instant::now()));
    assert!(c.until_closed().is_empty());
    f.server.hand_over();
    f.server.start_accepting();
    #[cfg(unix)]
    assert_eq!(f.server.listener_fd(), None);
}

#[test]
fn a_paused_server_shuts_down_and_hands_over_without_ever_accepting() {
    let mut f = serve_with(Limits::new(), "t-ho-never", Accepting::Paused);
    let mut c = f.client();
    f.server.hand_over();
    wait_until("the listener dropped", || f.server.has_retired_listener());
    // Nothing accepted it; the last descriptor of the socket has closed, so it is reset.
    let mut byte = [0u8; 1];
    match c.stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if super::is_reset(&e) => {}
        other => panic!("expected the end or a reset, got {other:?}"),
    }
    assert_eq!(f.server.stats().accepted, 0);
    f.server.shutdown().unwrap();
}

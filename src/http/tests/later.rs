//! Answers that come later ([`Reply::Later`](crate::http::Reply::Later)), through a
//! [`Responder`].

use std::sync::Arc;
use std::time::Duration;

use super::{wait_until, Client, WATCHDOG};
use crate::http::{Handler, Limits, Request, Responder, Response, Server};

/// A server that answers `/later` [`Reply::Later`](crate::http::Reply::Later), handing each
/// responder to the test through the returned channel, `/drop` later with a responder that is
/// dropped unanswered, and anything else at once with `"now <path>"`.
pub(super) fn serve_deferred(
    limits: Limits,
    thread_name: &str,
) -> (Server, crossbeam_channel::Receiver<Responder>) {
    let (give, responders) = crossbeam_channel::unbounded::<Responder>();
    let handler: Handler = Arc::new(move |req: &Request<'_>| match req.path() {
        "/later" => {
            let give = give.clone();
            crate::http::Reply::Later(Box::new(move |responder| {
                let _ = give.send(responder);
            }))
        }
        "/drop" => crate::http::Reply::Later(Box::new(drop)),
        path => Response::text(200, format!("now {path}")).into(),
    });
    let server = Server::bind("127.0.0.1:0", limits, handler, thread_name).expect("bind");
    (server, responders)
}

#[test]
fn a_later_answer_keeps_pipelined_answers_in_order() {
    let (server, responders) = serve_deferred(Limits::new(), "t-later");
    let mut c = Client::connect(server.local_addr());
    c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).expect("the handler ran");
    // Another connection is served meanwhile, by either loop.
    for _ in 0..4 {
        assert_eq!(
            Client::connect(server.local_addr()).get("/x").body(),
            "now /x"
        );
    }
    // The answer comes from another thread; the pipelined request is answered after it.
    std::thread::scope(|s| {
        s.spawn(move || responder.send(Response::text(200, "later")));
    });
    assert_eq!(c.reply(false).expect("the later answer").body(), "later");
    assert_eq!(
        c.reply(false).expect("the pipelined answer").body(),
        "now /after"
    );
    // And the connection goes on.
    assert_eq!(c.get("/again").body(), "now /again");
}

#[test]
fn a_later_head_answer_has_no_body_and_close_is_honoured() {
    let (server, responders) = serve_deferred(Limits::new(), "t-later-head");
    let mut c = Client::connect(server.local_addr());
    c.send("HEAD /later HTTP/1.1\r\nHost: t\r\n\r\n");
    responders
        .recv_timeout(WATCHDOG)
        .unwrap()
        .send(Response::text(200, "a body"));
    let head = c.reply(true).expect("an answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("6"));
    assert!(head.body.is_empty());

    c.send(
        "GET /later HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n",
    );
    responders
        .recv_timeout(WATCHDOG)
        .unwrap()
        .send(Response::text(200, "last"));
    let last = c.reply(false).expect("an answer");
    assert_eq!(last.body(), "last");
    assert!(last.closes());
    assert!(
        c.until_closed().is_empty(),
        "nothing after a Connection: close"
    );
}

#[test]
fn a_responder_dropped_unanswered_sends_500() {
    let (server, _responders) = serve_deferred(Limits::new(), "t-later-drop");
    let mut c = Client::connect(server.local_addr());
    let r = c.get("/drop");
    assert_eq!(r.status, 500);
    assert_eq!(c.get("/x").body(), "now /x", "the connection goes on");
}

#[test]
fn an_answer_that_never_comes_closes_the_connection_at_its_timeout() {
    let (server, responders) = serve_deferred(
        Limits::new().answer_timeout(Duration::from_millis(200)),
        "t-later-never",
    );
    let mut c = Client::connect(server.local_addr());
    c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).unwrap();
    assert!(c.until_closed().is_empty(), "closed without an answer");
    assert_eq!(server.stats().timed_out, 1);
    // A late answer for the closed connection is dropped, and the server goes on.
    responder.send(Response::text(200, "too late"));
    assert_eq!(
        Client::connect(server.local_addr()).get("/x").body(),
        "now /x"
    );
}

#[test]
fn a_late_answer_never_reaches_the_next_connection_in_the_same_slot() {
    // One loop, so that the second connection takes the first one's slot.
    let (server, responders) = serve_deferred(
        Limits::new()
            .event_loops(1)
            .answer_timeout(Duration::from_millis(200)),
        "t-later-slot",
    );
    let mut first = Client::connect(server.local_addr());
    first.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let late = responders.recv_timeout(WATCHDOG).unwrap();
    assert!(
        first.until_closed().is_empty(),
        "closed at its answer timeout"
    );
    wait_until("the first connection is gone", || {
        server.stats().open_connections == 0
    });

    let mut second = Client::connect(server.local_addr());
    second.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let own = responders.recv_timeout(WATCHDOG).unwrap();
    // The first connection's answer arrives while the second awaits its own: it is dropped.
    late.send(Response::text(200, "for the first"));
    own.send(Response::text(200, "for the second"));
    assert_eq!(second.reply(false).unwrap().body(), "for the second");
}

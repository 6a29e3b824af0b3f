//! Admission: which connection makes room for a newcomer ([`decide`], alone), and the server
//! evicting, refusing, and dropping connections already closed, through real sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::later::serve_deferred;
use super::{serve, wait_until, Client, WATCHDOG};
use crate::http::admission::{
    decide, peer_share, Candidate, Evictable, EvictionReason, PeerCounts, Verdict,
};
use crate::http::{Limits, Response};

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

/// Connections as `(peer, reason, seconds since their last progress, before `now`)`, in slots
/// 0, 1, ...; and the counts of their peers with a share of `share`.
fn loop_of(
    now: Instant,
    share: usize,
    connections: &[(IpAddr, EvictionReason, u64)],
) -> (PeerCounts, Vec<Candidate>) {
    let mut peers = PeerCounts::new(share);
    let candidates = (connections.iter().enumerate())
        .map(|(index, &(peer, reason, idle))| {
            peers.add(peer);
            let since = now - Duration::from_secs(idle);
            let evictable = Evictable {
                reason,
                since,
                closing: false,
            };
            Candidate {
                index,
                peer,
                evictable,
            }
        })
        .collect();
    (peers, candidates)
}

fn evict(index: usize, reason: EvictionReason) -> Verdict {
    Verdict::Evict { index, reason }
}

#[test]
fn a_free_slot_admits_a_peer_under_its_share() {
    let now = Instant::now();
    let (peers, all) = loop_of(now, 2, &[(A, EvictionReason::Idle, 9)]);
    assert_eq!(decide(A, false, &peers, all.clone()), Verdict::Admit);
    assert_eq!(decide(B, false, &peers, all), Verdict::Admit);
}

#[test]
fn when_full_the_least_recently_active_evictable_connection_makes_room() {
    use EvictionReason::{HeadLess, Idle, Stalled};
    let now = Instant::now();
    let (peers, all) = loop_of(now, 10, &[(A, Idle, 3), (B, HeadLess, 7), (C, Stalled, 5)]);
    assert_eq!(decide(C, true, &peers, all.clone()), evict(1, HeadLess));
    // Busy connections are no candidates: with none evictable, the newcomer is refused.
    assert_eq!(decide(C, true, &peers, all[..1].to_vec()), evict(0, Idle));
    assert_eq!(decide(C, true, &peers, Vec::new()), Verdict::Refuse);
}

#[test]
fn a_connection_lingering_after_its_last_answer_goes_last() {
    use EvictionReason::{HeadLess, Idle};
    let now = Instant::now();
    let (peers, mut all) = loop_of(now, 10, &[(A, Idle, 9), (B, HeadLess, 1)]);
    all[0].evictable.closing = true;
    // Its answer may still be on its way: the younger head-less one goes first.
    assert_eq!(decide(C, true, &peers, all.clone()), evict(1, HeadLess));
    assert_eq!(decide(C, true, &peers, all[..1].to_vec()), evict(0, Idle));
}

#[test]
fn a_peer_at_its_share_makes_room_from_its_own_connections() {
    use EvictionReason::{HeadLess, Idle};
    let now = Instant::now();
    // A holds its share of 2; B's connection has been idle longer than either of A's.
    let (peers, all) = loop_of(now, 2, &[(A, HeadLess, 1), (B, Idle, 60), (A, HeadLess, 4)]);
    // With a free slot or without, A's newcomer takes A's own oldest connection's place.
    assert_eq!(decide(A, false, &peers, all.clone()), evict(2, HeadLess));
    assert_eq!(decide(A, true, &peers, all.clone()), evict(2, HeadLess));
    // If all of A's are busy, A is refused: B's connection is not A's to take.
    assert_eq!(decide(A, true, &peers, all[1..2].to_vec()), Verdict::Refuse);
    assert_eq!(
        decide(A, false, &peers, all[1..2].to_vec()),
        Verdict::Refuse
    );
    // Another peer's newcomer, when full, takes from the peer at its share first...
    assert_eq!(decide(C, true, &peers, all.clone()), evict(2, HeadLess));
    // ... and from anyone if that peer has nothing evictable.
    assert_eq!(decide(C, true, &peers, all[1..2].to_vec()), evict(1, Idle));
}

#[test]
fn a_peer_may_hold_its_part_of_the_peer_limit_on_each_loop() {
    // The default: half the cap of 256, over two loops.
    assert_eq!(peer_share(Limits::new().peer_limit(), 2), 64);
    assert_eq!(peer_share(5, 2), 3);
    assert_eq!(peer_share(1, 4), 1);
    assert_eq!(peer_share(10, 1), 10);
    assert_eq!(Limits::new().max_connections(7).peer_limit(), 4);
    assert_eq!(Limits::new().max_connections_per_peer(9).peer_limit(), 9);
}

/// Waits until the server has closed `c` (end of stream or reset, nothing sent).
#[track_caller]
fn assert_closed_by_server(c: &mut Client, what: &str) {
    assert!(
        c.until_closed().is_empty(),
        "{what}: closed without an answer"
    );
}

#[test]
fn a_newcomer_over_the_cap_takes_the_place_of_the_least_recently_active_connection() {
    // One loop, so that the least recently active connection is the server's; every client is
    // 127.0.0.1, and this tests the cap alone.
    let limits = Limits::new()
        .event_loops(1)
        .max_connections(4)
        .max_connections_per_peer(4)
        .head_read_timeout(Duration::from_secs(60));
    let f = serve(limits, "t-evict");
    // Four silent connections, accepted in order.
    let mut four: Vec<Client> = (0..4).map(|_| f.client()).collect();
    wait_until("4 open connections", || {
        f.server.stats().open_connections == 4
    });
    // The second one asks and is answered: it is the most recently active now.
    assert_eq!(four[1].get("/").status, 200);

    // A newcomer takes the place of the first, then another that of the third.
    let mut new = f.client();
    assert_eq!(new.get("/new").status, 200);
    assert_closed_by_server(&mut four[0], "the oldest silent connection");
    let mut newer = f.client();
    assert_eq!(newer.get("/newer").status, 200);
    assert_closed_by_server(&mut four[2], "the next oldest silent connection");
    assert!(four[1].is_held() && four[3].is_held());
    assert_eq!(four[1].get("/still").status, 200);

    let stats = f.server.stats();
    assert_eq!(stats.evicted(EvictionReason::HeadLess), 2, "{stats:?}");
    assert_eq!(stats.evicted(EvictionReason::Idle), 0, "{stats:?}");
    assert_eq!((stats.rejected, stats.accepted), (0, 6), "{stats:?}");
    // The first newcomer was answered before the second was, and after the fourth silent
    // connection was accepted: that one goes next, then the first newcomer.
    let mut third = f.client();
    assert_eq!(third.get("/third").status, 200);
    assert_closed_by_server(&mut four[3], "the last silent connection");
    // Held open: a client dropped here would race the count below.
    let mut fourth = f.client();
    assert_eq!(fourth.get("/fourth").status, 200);
    assert_closed_by_server(&mut new, "the least recently answered connection");
    assert_eq!(f.server.stats().open_connections, 4);
    assert!(newer.is_held() && third.is_held() && fourth.is_held());
}

#[test]
fn a_client_that_does_not_read_is_evicted_as_stalled() {
    let limits = Limits::new()
        .event_loops(1)
        .max_connections(2)
        .max_connections_per_peer(2);
    let f = serve(limits, "t-stalled");
    // 16 MiB that it never reads: its answer waits to be sent.
    let mut stalled = f.client();
    stalled.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut idle = f.client();
    assert_eq!(idle.get("/").status, 200);
    wait_until("2 open connections", || {
        f.server.stats().open_connections == 2
    });
    // The stalled one has made no progress since before the idle one was answered.
    assert_eq!(f.client().get("/new").status, 200);
    let received = stalled.until_closed();
    assert!(received.len() < 16 << 20, "the answer was cut");
    assert_eq!(f.server.stats().evicted(EvictionReason::Stalled), 1);
    assert_eq!(idle.get("/still").status, 200);
}

#[test]
fn a_peer_at_its_share_evicts_its_own_connections_though_slots_are_free() {
    let limits = Limits::new()
        .event_loops(1)
        .max_connections(10)
        .head_read_timeout(Duration::from_secs(60));
    let f = serve(limits, "t-share");
    // 127.0.0.1 may hold half of 10.
    let mut five: Vec<Client> = (0..5).map(|_| f.client()).collect();
    wait_until("5 open connections", || {
        f.server.stats().open_connections == 5
    });
    assert_eq!(f.client().get("/sixth").status, 200);
    assert_closed_by_server(&mut five[0], "the peer's oldest connection");
    let stats = f.server.stats();
    assert_eq!(stats.evicted(EvictionReason::HeadLess), 1, "{stats:?}");
    assert!(five[1..].iter().all(Client::is_held));
}

#[test]
fn a_newcomer_is_refused_only_while_every_connection_is_busy() {
    let limits = Limits::new()
        .event_loops(1)
        .max_connections(2)
        .max_connections_per_peer(2);
    let (server, responders) = serve_deferred(limits, "t-refuse");
    // Two connections wait for answers that come later: both are busy.
    let mut busy: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(server.local_addr());
            c.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
            c
        })
        .collect();
    let pending: Vec<_> = (0..2)
        .map(|_| responders.recv_timeout(WATCHDOG).expect("the handler ran"))
        .collect();
    let mut third = Client::connect(server.local_addr());
    let answer = third.until_closed();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 503 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let stats = server.stats();
    assert_eq!((stats.rejected, stats.evicted), (1, [0; 3]), "{stats:?}");

    // Answered, they are idle, and the next newcomer takes the place of the first.
    for (c, responder) in busy.iter_mut().zip(pending) {
        responder.send(Response::text(200, "later"));
        assert_eq!(c.reply(false).expect("its answer").body(), "later");
    }
    assert_eq!(
        Client::connect(server.local_addr()).get("/x").body(),
        "now /x"
    );
    assert_closed_by_server(&mut busy[0], "the least recently answered connection");
    let stats = server.stats();
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(stats.evicted(EvictionReason::Idle), 1, "{stats:?}");
}

#[test]
fn connections_closed_by_their_client_before_the_accept_are_dropped_unadmitted() {
    let limits = Limits::new().event_loops(1).max_connections(1);
    let (server, responders) = serve_deferred(limits, "t-abandoned");
    // The one slot is busy: any newcomer that reaches admission is refused.
    let mut busy = Client::connect(server.local_addr());
    busy.send("GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    let responder = responders.recv_timeout(WATCHDOG).expect("the handler ran");
    // Connected and closed at once: most are closed before the server accepts them.
    let mut attempts = 0;
    wait_until("a connection dropped at the accept", || {
        drop(Client::connect(server.local_addr()));
        attempts += 1;
        server.stats().abandoned > 0
    });
    wait_until("every attempt accepted", || {
        server.stats().accepted == attempts + 1
    });
    // Each was either dropped at the accept, or (closed a moment too late) refused: those
    // dropped never reached admission.
    let stats = server.stats();
    assert_eq!(stats.abandoned + stats.rejected, attempts, "{stats:?}");
    assert_eq!(stats.evicted, [0; 3], "{stats:?}");
    responder.send(Response::text(200, "later"));
    assert_eq!(busy.reply(false).expect("its answer").body(), "later");
}

//! The event loops: their threads, how connections are spread over them, shutdown, and
//! accept errors.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::{serve, threads_named, wait_until, Client};
use crate::http::{EvictionReason, Handler, Limits, Request, Response, Server};

#[test]
fn server_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Server>();
    check::<Limits>();
    check::<Response>();
}

#[test]
fn idle_connections_neither_starve_others_nor_add_threads() {
    let limits = Limits::new()
        .max_connections(1000)
        .head_read_timeout(Duration::from_secs(60));
    let mut f = serve(limits, "t-idle300");
    let mut idle: Vec<Client> = (0..300)
        .map(|i| {
            let mut c = f.client();
            if i % 2 == 0 {
                c.send("GET / HTTP/1.1\r\nHost: t\r\n"); // a partial head
            }
            c
        })
        .collect();
    wait_until("300 open connections", || {
        f.server.stats().open_connections == 300
    });
    let r = f.client().get("/fresh");
    assert_eq!(r.status, 200);
    // The default two event loops, and no thread more.
    assert_eq!(threads_named("t-idle300"), 1);
    assert_eq!(threads_named("t-idle300 1"), 1);
    assert_eq!(threads_named("t-idle300 2"), 0);
    assert_eq!(f.calls(), 1);

    f.server.shutdown().unwrap();
    wait_until("the threads to be gone", || {
        threads_named("t-idle300") + threads_named("t-idle300 1") == 0
    });
    assert_eq!(f.server.stats().open_connections, 0);
    for c in &mut idle {
        assert!(c.until_closed().is_empty());
    }
}

#[test]
fn shutdown_returns_with_idle_keep_alive_clients_and_joins() {
    let mut f = serve(Limits::new(), "t-shutdown");
    let mut clients: Vec<Client> = (0..20).map(|_| f.client()).collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    // The default: two event loops, which split the clients between them.
    assert_eq!(threads_named("t-shutdown"), 1);
    assert_eq!(threads_named("t-shutdown 1"), 1);
    assert_eq!(f.server.loads(), [10, 10]);
    f.server.shutdown().unwrap();
    wait_until("the threads to be gone", || {
        threads_named("t-shutdown") + threads_named("t-shutdown 1") == 0
    });
    f.server.shutdown().unwrap();
    assert_eq!(f.server.stats().open_connections, 0);
    for c in &mut clients {
        assert!(c.until_closed().is_empty());
    }

    // Dropping shuts down too.
    let f = serve(Limits::new(), "t-drop");
    let mut c = f.client();
    assert_eq!(c.get("/").status, 200);
    drop(f);
    wait_until("the threads to be gone", || {
        threads_named("t-drop") + threads_named("t-drop 1") == 0
    });
    assert!(c.until_closed().is_empty());
}

/// A server whose handler answers `200` with the name of the thread it runs on.
fn serve_thread_names(limits: Limits, thread_name: &str) -> Server {
    let handler: Handler = Arc::new(|_: &Request<'_>| {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        Response::text(200, name).into()
    });
    Server::bind("127.0.0.1:0", limits, handler, thread_name).expect("bind")
}

#[test]
fn connections_are_spread_over_the_event_loops() {
    let loops = 3;
    let server = serve_thread_names(Limits::new().event_loops(loops), "t-spread");
    // Each is answered before the next connects: the least loaded loop gets the next one, and
    // ties go round, so they take turns.
    let mut clients: Vec<(Client, String)> = Vec::new();
    for _ in 0..2 * loops {
        let mut c = Client::connect(server.local_addr());
        let served_by = c.get("/").body().to_owned();
        clients.push((c, served_by));
    }
    let names = ["t-spread", "t-spread 1", "t-spread 2"];
    let served_by: Vec<&str> = clients.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(served_by, [names, names].concat());
    assert_eq!(server.loads(), [2, 2, 2]);
    // A connection keeps its loop: a second request on each is answered by the same thread.
    for (c, name) in &mut clients {
        assert_eq!(c.get("/again").body(), name);
    }
    for name in names {
        assert_eq!(threads_named(name), 1, "{name}");
    }
    // A loop whose connections close gets the next ones.
    clients.retain(|(_, n)| n != "t-spread 1");
    wait_until("loop 1 to close its connections", || {
        server.loads() == [2, 0, 2]
    });
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/").body(), "t-spread 1");
    assert_eq!(server.stats().open_connections, 5);
}

#[test]
fn a_single_event_loop_serves_every_connection() {
    let server = serve_thread_names(Limits::new().event_loops(1), "t-one");
    let mut clients: Vec<Client> = (0..5)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.get("/").body(), "t-one");
    }
    assert_eq!(server.loads(), [5]);
    assert_eq!(threads_named("t-one"), 1);
    assert_eq!(threads_named("t-one 1"), 0);
}

#[test]
fn shutdown_joins_every_event_loop_with_idle_keep_alive_clients() {
    let loops = 4;
    let mut server = serve_thread_names(Limits::new().event_loops(loops), "t-join4");
    let mut clients: Vec<Client> = (0..3 * loops)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.get("/").status, 200);
    }
    // Every loop holds idle keep-alive clients when the shutdown comes.
    assert_eq!(server.loads(), [3, 3, 3, 3]);
    let names = ["t-join4", "t-join4 1", "t-join4 2", "t-join4 3"];
    for name in names {
        assert_eq!(threads_named(name), 1, "{name}");
    }
    server.shutdown().unwrap();
    wait_until("every loop's thread to be gone", || {
        names.iter().all(|n| threads_named(n) == 0)
    });
    assert_eq!(server.stats().open_connections, 0);
    for c in &mut clients {
        assert!(c.until_closed().is_empty());
    }
    assert!(TcpStream::connect(server.local_addr()).is_err());
}

#[test]
fn max_connections_is_one_limit_over_every_event_loop() {
    // Every client is 127.0.0.1: this tests the cap alone.
    let limits = Limits::new()
        .event_loops(4)
        .max_connections(6)
        .max_connections_per_peer(6)
        .head_read_timeout(Duration::from_secs(60));
    let server = serve_thread_names(limits, "t-admit4");
    let mut six: Vec<Client> = (0..6)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut six {
        assert_eq!(c.get("/").status, 200);
    }
    // Six, over four loops: no loop's share is its own limit.
    assert_eq!(server.loads(), [2, 2, 1, 1]);
    assert_eq!(server.stats().open_connections, 6);

    // A seventh takes the place of an idle one, on a loop that has the most of them; the cap
    // holds.
    let mut seventh = Client::connect(server.local_addr());
    assert_eq!(seventh.get("/").status, 200);
    let stats = server.stats();
    assert_eq!(stats.evicted(EvictionReason::Idle), 1, "{stats:?}");
    assert_eq!((stats.accepted, stats.rejected), (7, 0), "{stats:?}");
    let closed: Vec<usize> = (0..6).filter(|&i| !six[i].is_held()).collect();
    assert_eq!(closed.len(), 1, "one idle connection evicted: {closed:?}");
    assert!(closed[0] < 2, "from loop 0 or 1: {closed:?}");
    assert_eq!(server.stats().open_connections, 6);
    assert_eq!(server.loads().iter().sum::<usize>(), 6);

    // A connection closed on any loop makes room for one more, on the least loaded loop, and
    // then nothing is evicted.
    let gone = if closed[0] == 1 { 2 } else { 1 };
    drop(six.remove(gone));
    wait_until("5 open connections", || {
        server.stats().open_connections == 5
    });
    let mut next = Client::connect(server.local_addr());
    assert_eq!(next.get("/").status, 200);
    assert_eq!(server.stats().evicted(EvictionReason::Idle), 1);
    assert_eq!(server.loads().iter().sum::<usize>(), 6);
}

const EMFILE_CHILD: &str = "LIFECYCLE_TEST_EMFILE_CHILD";

/// Runs [`emfile_child`] in a child process whose fd limit is 64, so that exhausting it does not
/// disturb the tests running alongside.
#[test]
fn accept_errors_pause_accepting_but_never_end_it() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "--exact",
            "http::tests::event_loops::emfile_child",
            "--ignored",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child: {}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "run in a child process by accept_errors_pause_accepting_but_never_end_it"]
fn emfile_child() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let f = serve(Limits::new(), "t-emfile");
    // Fill the fd table, then free one fd for the client: the server's accept gets EMFILE.
    let mut hog = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hog.push(file);
    }
    hog.pop();
    let mut c = f.client();
    c.send("GET /patient HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("an accept error", || f.server.stats().accept_errors > 0);
    wait_until("a second accept error after the pause", || {
        f.server.stats().accept_errors > 1
    });
    drop(hog);
    let r = c.reply(false).expect("served once fds are free");
    assert_eq!(r.body(), "GET /patient\n");
    assert_eq!(f.client().get("/next").status, 200);
    assert_eq!(threads_named("t-emfile"), 1);
}

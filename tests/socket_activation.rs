//! The demo started by the real `systemd-socket-activate`, which listens on ports this test
//! chooses and passes the sockets to the demo by name: its probes and its API are answered
//! through the inherited sockets (not through sockets of its own: those it would bind are on
//! other ports), a socket of the wrong kind fails the start with an error that names it, and
//! a name not passed falls back to the configured address.

#![cfg(target_os = "linux")]

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use common::process::{example, Proc};
use common::{http, WATCHDOG};

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
/// How many times ports are chosen again when another process took one meanwhile.
const TRIES: usize = 5;

/// A TCP port that was free on 127.0.0.1 a moment ago (bound, then closed).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// The demo run by `systemd-socket-activate` with `activate_args` (its `-l` flags and names),
/// once it listens on every one of `listening` (its addresses as it logs them: "Listening on
/// ADDR as FD."); `None` if it could not (a port was taken meanwhile). The demo's own
/// addresses are `127.0.0.1:0`, so a socket it bound itself would not be on a port chosen
/// here.
fn activate(activate_args: &[String], listening: &[String]) -> Option<Proc> {
    let demo = example("demo");
    let mut args: Vec<&str> = activate_args.iter().map(String::as_str).collect();
    args.push(demo.to_str().unwrap());
    args.extend(["--health-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"]);
    let mut p = Proc::spawn(&PathBuf::from(ACTIVATE), &args);
    for (fd, addr) in (3..).zip(listening) {
        let line = p.wait_for_any(&[&format!("Listening on {addr} as {fd}."), "Failed to"]);
        if line.contains("Failed to") {
            let (status, log) = p.wait_exit();
            assert!(!status.success(), "{log:?}");
            assert!(
                log.iter().any(|l| l.contains("Address already in use")),
                "{log:?}"
            );
            return None;
        }
    }
    Some(p)
}

/// Like [`activate`] with TCP sockets on fresh ports, `-l` for each of `names` (in order),
/// named with one `--fdname=a:b`; retried with other ports if one was taken. Returns the demo
/// and the sockets' addresses.
fn activate_tcp(names: &[&str]) -> (Proc, Vec<SocketAddr>) {
    for _ in 0..TRIES {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        while addrs.len() < names.len() {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let mut args: Vec<String> = addrs.iter().map(|a| format!("-l{a}")).collect();
        args.push(format!("--fdname={}", names.join(":")));
        let listening: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        if let Some(p) = activate(&args, &listening) {
            return (p, addrs);
        }
    }
    panic!("{TRIES} tries: a port chosen was taken each time");
}

/// The address the demo logs for `what` (`health endpoint`, `api`).
fn logged_addr(p: &mut Proc, what: &str) -> SocketAddr {
    let line = p.wait_for(&format!("{what}: listening on http://"));
    line.rsplit("http://").next().unwrap().parse().unwrap()
}

#[test]
fn probes_and_the_api_are_answered_through_the_sockets_systemd_passed() {
    let (mut p, addrs) = activate_tcp(&["health", "api"]);
    let (health, api) = (addrs[0], addrs[1]);
    // systemd-socket-activate starts the demo at the first connection; that probe waits in
    // the socket's backlog meanwhile, and is answered.
    http::wait_status(health, "/livez", 200);
    p.wait_for("Execing ");
    assert_eq!(logged_addr(&mut p, "health endpoint"), health);
    p.wait_for(&format!("took `health` (descriptor 3, {health})"));
    assert_eq!(logged_addr(&mut p, "api"), api);
    p.wait_for(&format!("took `api` (descriptor 4, {api})"));
    p.wait_for("; running");
    // Taken, each socket is marked close-on-exec.
    for fd in [3, 4] {
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", p.pid())).unwrap();
        let flags = (info.lines())
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .expect("flags in fdinfo");
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd {fd}: {info}");
    }
    http::wait_status(health, "/readyz", 200);
    let verbose = http::get(health, "/readyz?verbose");
    assert!(verbose.body.contains("[+]api ok"), "{}", verbose.body);
    // The API's own route and the health routes on its port, through its inherited socket.
    let jobs = http::get(api, "/jobs");
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    assert_eq!(http::get(api, "/readyz").status, 200);
    // The demo is the process systemd-socket-activate became: a signal shuts it down.
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    assert!(
        !log.iter()
            .any(|l| l.contains("socket activation:") && l.contains("WARN")),
        "{log:?}"
    );
}

#[test]
fn a_datagram_socket_named_health_fails_the_start_and_names_the_descriptor() {
    for _ in 0..TRIES {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            "--datagram".to_owned(),
            format!("-l{addr}"),
            "--fdname=health".to_owned(),
        ];
        let Some(mut p) = activate(&args, &[addr.to_string()]) else {
            continue;
        };
        // A datagram starts the demo.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(b"hello", addr).unwrap();
        let line = p.wait_for("is not a listening TCP socket");
        assert!(
            line.contains("descriptor 3 (`health`)") && line.contains("it is a datagram socket"),
            "{line}"
        );
        let (status, log) = p.wait_exit();
        assert_eq!(status.code(), Some(1), "{log:?}");
        return;
    }
    panic!("{TRIES} tries: a port chosen was taken each time");
}

#[test]
fn a_unix_socket_named_api_fails_its_start_and_health_binds_its_own_address() {
    let dir = std::env::temp_dir().join(format!("lifecycle-activation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    let args = [format!("-l{}", path.display()), "--fdname=api".to_owned()];
    let mut p = activate(&args, &[path.display().to_string()]).expect("a fresh path");
    let _starts = connect_unix(&path);
    // No socket is named `health`: the endpoint binds its own address (port 0 here).
    p.wait_for("no socket named `health` among the 1 passed");
    let health = logged_addr(&mut p, "health endpoint");
    assert_ne!(health.port(), 0);
    let line = p.wait_for("is not a listening TCP socket");
    assert!(
        line.contains("descriptor 3 (`api`)") && line.contains("it is a Unix socket"),
        "{line}"
    );
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(1), "{log:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A connection to the Unix socket at `path`, with the watchdog's timeouts.
fn connect_unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    s
}

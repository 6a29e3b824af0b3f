//! Upgrades in place, end to end, between real processes: a child process (this test binary
//! again, running only [`child`]) runs a `Runner` with a health endpoint on 127.0.0.1:0; an
//! upgrade starts the same executable with the same arguments and environment, so the new
//! process is this binary running [`child`] in the same role, and
//! [`upgraded_from`](lifecycle::systemd::upgraded_from) tells it it is the new one.
//!
//! The new process inherits the old one's standard error, so the log lines of every process
//! of a test come on one pipe, each prefixed by its writer's pid (written in one `write`, so
//! lines of two processes never mix). This process is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): a new process outliving the old one becomes its child, so its
//! exit status is read with `waitpid`, and no orphan is left to a PID 1 that may not reap.
//! Every pid a test learns is killed when it ends ([`Family`]'s drop), pass or fail.
//!
//! What is checked: the hand-over under a real `NOTIFY_SOCKET` (the sender of each datagram
//! told by `SO_PASSCRED`), with the health endpoint's socket and a named listener
//! (`systemd::listener("api", ..)`) on the same ports; the PID file; the refusals (SIGHUP
//! during the start and the shutdown, and during another upgrade; SIGHUP with upgrades off
//! keeps its default action, while `RunHandle::upgrade` still works); a new process that is
//! never ready (killed at the upgrade timeout, counted, the old one serving throughout and
//! taking the next SIGHUP); one that fails its start (reaped, counted); a SIGTERM to the old
//! process while its new one starts (both end, no orphan); and a new process given up on
//! late in its start (it never begins its run phase; the PID file names the old process); and
//! a failed new process leaves the old one's listener non-blocking.
//!
//! Every wait is bounded (the [`WATCHDOG`]); the child's steps wait for files this test creates
//! or for signals it sends, never for time to pass.

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use lifecycle::metrics::Metrics;
use lifecycle::{HealthChecker, HealthReporter, Result, Runner, Service, StartContext};

use common::notify::{NotifySocket, TempDir, PING};
use common::WATCHDOG;

/// The variable that makes [`child`] run, and in which role (see [`Role`]).
const ROLE: &str = "LIFECYCLE_TEST_UPGRADE_ROLE";
/// The directory of the files through which the test steers the child.
const DIR: &str = "LIFECYCLE_TEST_UPGRADE_DIR";
/// If set, the runner's upgrade timeout, in milliseconds.
const TIMEOUT_MS: &str = "LIFECYCLE_TEST_UPGRADE_TIMEOUT_MS";
/// If set, the runner's PID file.
const PID_FILE: &str = "LIFECYCLE_TEST_UPGRADE_PID_FILE";
/// How long the old process is given to name itself in the PID file again after it logged a
/// failed upgrade.
const REWRITE_BOUND: Duration = Duration::from_secs(5);
/// The child's watchdog under systemd: a ping every second.
const WATCHDOG_USEC: &str = "2000000";

/// What the child does, by the value of [`ROLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Starts at once, in the first process and in the new ones; SIGHUP upgrades.
    Serve,
    /// The first process's start waits for the file `go`, and its close for `go-close`;
    /// SIGHUP upgrades.
    Slow,
    /// The new process's start never ends (until the process is told to stop); SIGHUP
    /// upgrades.
    Hang,
    /// The new process's start fails at once; SIGHUP upgrades.
    Fail,
    /// The new process starts at once, but its readiness check does not answer (for 5 s, or
    /// until the file `late-go` exists): its run phase begins only once the runner gives up
    /// waiting for that poll (2 s), after its PID file is written; SIGHUP upgrades.
    Late,
    /// Upgrades off (SIGHUP keeps its default action); the first process asks for an upgrade
    /// through `RunHandle::upgrade` once the file `upgrade-now` appears.
    Handle,
}

impl Role {
    fn parse(value: &str) -> Role {
        match value {
            "serve" => Role::Serve,
            "slow" => Role::Slow,
            "hang" => Role::Hang,
            "fail" => Role::Fail,
            "late" => Role::Late,
            "handle" => Role::Handle,
            other => panic!("unknown role {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Slow => "slow",
            Role::Hang => "hang",
            Role::Fail => "fail",
            Role::Late => "late",
            Role::Handle => "handle",
        }
    }
}

/// In a child process started by a test below (or by an upgrade of one): runs a runner as its
/// role says, then exits with 0 if the run succeeded, 1 otherwise. Run as a plain test, it does
/// nothing.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    log::set_boxed_logger(Box::new(Stderr)).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let role = Role::parse(&role);
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let code = run_child(role, dir);
    std::process::exit(code);
}

/// The child's run: [`Gate`], and `api`, which answers each connection to a listener named
/// `api` (127.0.0.1:0, or the socket handed over) with the process's id; health on an endpoint
/// at 127.0.0.1:0 (in a new process, the socket handed over, whatever port it is), metrics,
/// and the settings of [`TIMEOUT_MS`] and [`PID_FILE`].
fn run_child(role: Role, dir: PathBuf) -> i32 {
    let upgraded = lifecycle::systemd::upgraded_from();
    say(&format!("role {} upgraded from {upgraded:?}", role.name()));
    let api = lifecycle::systemd::listener("api", "127.0.0.1:0").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&api);
    say(&format!("api fd {fd} at {}", api.local_addr().unwrap()));
    // Non-blocking, as an accept loop that looks at its stop signal makes it; except in the new
    // process of `Fail`, which fails before it gets there. And SO_RCVTIMEO, which bounds a
    // blocking accept (Linux), so that this loop sees its stop even should the socket, whose
    // O_NONBLOCK flag the processes share, ever be made blocking under it (what
    // `a_failed_upgrade_leaves_the_old_listener_non_blocking` shows does not happen).
    if !(role == Role::Fail && upgraded.is_some()) {
        api.set_nonblocking(true).unwrap();
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt(2) reads a timeval from a pointer to one, of its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO");
    let api = lifecycle::Worker::new("api", move |stop| {
        let pid = format!("{}\n", std::process::id());
        loop {
            match api.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.write_all(pid.as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.wait_timeout(Duration::from_millis(5)) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    let checker = Arc::new(
        HealthChecker::builder("test", "test")
            .interval(Duration::from_millis(20))
            .build(),
    );
    let mut runner = Runner::new()
        .upgrade_on_sighup(role != Role::Handle)
        .health(checker)
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .metrics(Metrics::new())
        .service(Gate {
            role,
            dir: dir.clone(),
            upgraded,
        })
        .service(api);
    if let Ok(ms) = std::env::var(TIMEOUT_MS) {
        runner = runner.upgrade_timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    if let Ok(path) = std::env::var(PID_FILE) {
        runner = runner.pid_file(path);
    }
    let handle = runner.handle();
    // Not joined: in a process whose run never begins, it waits out its bound.
    std::thread::Builder::new()
        .name("test control".into())
        .spawn(move || {
            if !handle.wait_running(4 * WATCHDOG) {
                say("no run phase");
                return;
            }
            say(&format!("serving at {}", handle.health_addr().unwrap()));
            if role != Role::Handle || upgraded.is_some() {
                return;
            }
            let ask = dir.join("upgrade-now");
            while !handle.is_shutting_down() {
                if std::fs::remove_file(&ask).is_ok() {
                    say("asking for an upgrade");
                    handle.upgrade();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
    let report = runner.run();
    say(&format!(
        "run ended: {}; success {}",
        report.cause(),
        report.is_success()
    ));
    i32::from(!report.is_success())
}

/// The child's one service: what its start does depends on the role and on whether an
/// upgrade started this process.
struct Gate {
    role: Role,
    dir: PathBuf,
    upgraded: Option<u32>,
}

impl HealthReporter for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn ready(&self) -> Result<()> {
        // The runner's own look at readiness during the start (on its "lifecycle calls"
        // threads) is answered; the checker's polls wait.
        let runner_asks = std::thread::current().name() == Some("lifecycle calls");
        if let (Role::Late, Some(_), false) = (self.role, self.upgraded, runner_asks) {
            let go = self.dir.join("late-go");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !go.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

impl Service for Gate {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        match (self.role, self.upgraded) {
            (Role::Slow, None) => {
                say("gate: waiting for go");
                let go = self.dir.join("go");
                while !go.exists() {
                    ctx.check("gate")?;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }
            (Role::Hang, Some(_)) => {
                say("gate: hanging");
                loop {
                    ctx.check("gate")?;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            (Role::Fail, Some(_)) => Err(lifecycle::Error::msg("gate fails its start on purpose")),
            _ => Ok(()),
        }
    }
    fn close(&self) -> Result<()> {
        if let (Role::Slow, None) = (self.role, self.upgraded) {
            say("gate: closing: waiting for go-close");
            let go = self.dir.join("go-close");
            let deadline = Instant::now() + 2 * WATCHDOG;
            while !go.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

/// Writes `line` to standard error prefixed by this process's id, in one `write`.
fn say(line: &str) {
    let text = format!("{} {line}\n", std::process::id());
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A logger that writes each line to standard error with this process's id, where the test
/// reads it.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        say(&format!("[{}] {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

// ---------------------------------------------------------------------------------------------
// The test's side.

/// The processes of one test: the first (this process's child) and every one an upgrade
/// started, whose log lines all come on the first one's standard error. Every pid learned
/// ([`learn`](Family::learn)) is killed on drop, if it still runs this binary.
struct Family {
    first: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    /// The lines of `log` that a wait has returned.
    returned: Vec<usize>,
    pids: Vec<libc::pid_t>,
    /// The files through which the test steers the child.
    dir: TempDir,
}

impl Family {
    /// This binary run as [`child`] in `role`, with `env`, and without the variables of
    /// systemd or of an upgrade unless `env` sets them. Makes this process a child subreaper
    /// first (see the module's documentation).
    fn spawn(role: Role, env: &[(&str, &str)]) -> Family {
        // SAFETY: prctl(2) with an option that takes one integer.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
        let dir = TempDir::new("upgrade");
        let exe = std::env::current_exe().expect("test binary");
        let mut command = Command::new(exe);
        command
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "LIFECYCLE_UPGRADE_FD",
            "LIFECYCLE_UPGRADE_PARENT",
            TIMEOUT_MS,
            PID_FILE,
        ] {
            command.env_remove(var);
        }
        command
            .env(ROLE, role.name())
            .env(DIR, &dir.0)
            .envs(env.iter().copied());
        let mut first = command.spawn().expect("spawn child");
        let stderr = first.stderr.take().expect("piped stderr");
        let (tx, lines) = crossbeam_channel::unbounded();
        // Not joined: it reads until every process of the family has closed the pipe.
        std::thread::Builder::new()
            .name("family stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn reader");
        let pid = first.id() as libc::pid_t;
        Family {
            first,
            lines,
            log: Vec::new(),
            returned: Vec::new(),
            pids: vec![pid],
            dir,
        }
    }

    /// The first process's id.
    fn first_pid(&self) -> libc::pid_t {
        self.first.id() as libc::pid_t
    }

    /// Records `pid` as one of the family's, to be killed on drop.
    fn learn(&mut self, pid: libc::pid_t) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    /// Waits for a log line containing `needle`, read earlier or still to come, and not
    /// returned by an earlier wait; returns it. Fails the test at the watchdog or if every
    /// process's output ends first.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// Waits for a log line containing any of `needles`, as [`wait_for`](Family::wait_for)
    /// waits for one; returns it.
    #[track_caller]
    fn wait_for_any(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(line) = needles.iter().find_map(|n| self.take(n)) {
                return line;
            }
            match self.lines.recv_deadline(deadline) {
                Ok(line) => self.log.push(line),
                Err(e) => panic!(
                    "{e}: no line with {needles:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// A line containing `needle` among those read so far (reading what is waiting first,
    /// without waiting), not returned before; marked returned.
    fn poll_for(&mut self, needle: &str) -> Option<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.take(needle)
    }

    /// Whether a line containing `needle` was read so far (returned or not).
    fn logged(&mut self, needle: &str) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.iter().any(|l| l.contains(needle))
    }

    fn take(&mut self, needle: &str) -> Option<String> {
        let (i, line) = (self.log.iter().enumerate())
            .find(|(i, line)| !self.returned.contains(i) && line.contains(needle))
            .map(|(i, line)| (i, line.clone()))?;
        self.returned.push(i);
        Some(line)
    }

    /// Waits until process `pid` says it serves; returns its health endpoint's address.
    #[track_caller]
    fn serving(&mut self, pid: libc::pid_t) -> SocketAddr {
        let line = self.wait_for(&format!("{pid} serving at "));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The address of process `pid`'s `api` listener, as it logged it.
    #[track_caller]
    fn api(&mut self, pid: libc::pid_t) -> SocketAddr {
        self.api_fd(pid).1
    }

    /// The descriptor and address of process `pid`'s `api` listener, as it logged them.
    #[track_caller]
    fn api_fd(&mut self, pid: libc::pid_t) -> (i32, SocketAddr) {
        let line = self.wait_for(&format!("{pid} api fd "));
        let words: Vec<&str> = line.split(' ').collect();
        (words[3].parse().unwrap(), words[5].parse().unwrap())
    }

    /// Sends SIGHUP to `old`, which serves, and waits until it starts the new process of an
    /// upgrade; returns that process's id, learned. The runner takes upgrades before it says
    /// the run phase began (`RunHandle::wait_running`, `READY=1`), so a SIGHUP sent once it
    /// serves is never refused: a refusal fails the test.
    #[track_caller]
    fn sighup_upgrade(&mut self, old: libc::pid_t) -> libc::pid_t {
        let started = format!("{old} [INFO] upgrade: started pid ");
        let refused = format!(
            "{old} [WARN] SIGHUP: upgrade refused: the program is starting or shutting down"
        );
        signal(old, libc::SIGHUP);
        let line = self.wait_for_any(&[&started, &refused]);
        assert!(
            line.contains(&started),
            "pid {old} refused SIGHUP though its run phase began: {line}; log:\n{}",
            self.dump()
        );
        self.started_in(&line)
    }

    /// The pid in a line `upgrade: started pid N; ...`, learned.
    #[track_caller]
    fn started_in(&mut self, line: &str) -> libc::pid_t {
        let pid = line
            .split("started pid ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        self.learn(pid);
        pid
    }

    /// Waits for the first process to exit, under the watchdog; its status.
    #[track_caller]
    fn wait_first(&mut self) -> ExitStatus {
        let mut status = None;
        let what = format!("pid {} exits", self.first_pid());
        common::eventually(&what, || {
            status = self.first.try_wait().expect("try_wait");
            status.is_some()
        });
        status.unwrap()
    }

    /// Touches `name` in the family's directory.
    fn create(&self, name: &str) {
        std::fs::write(self.dir.0.join(name), b"").unwrap();
    }

    /// The whole log so far, for a failure's message.
    fn dump(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        let _ = self.first.kill();
        let _ = self.first.wait();
        let exe = std::env::current_exe().ok();
        for &pid in &self.pids[1..] {
            // Only a process still running this binary: a pid reused by another is left alone.
            let running_this = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if running_this.is_some() && running_this == exe {
                // SAFETY: kill(2) takes no pointers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // Reaped if it is this process's child by now (an orphan); ECHILD otherwise.
            let mut status = 0;
            // SAFETY: waitpid(2) writes the status into `status`.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

/// The state letter and parent of process `pid` from `/proc/PID/stat`; `None` if there is no
/// such process.
fn proc_state(pid: libc::pid_t) -> Option<(char, libc::pid_t)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's closing parenthesis: the state, then the parent's id.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Waits, at most `bound`, until process `pid` is gone: reaped by this process (it became its
/// child when its parent exited: its status), or by its own parent (`None`). A zombie is not
/// gone: its parent has yet to reap it.
#[track_caller]
fn wait_gone(pid: libc::pid_t, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) writes the status into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(ExitStatus::from_raw(status));
        }
        if rc < 0 && proc_state(pid).is_none() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} not gone within {bound:?}: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The id of the process whose `api` answered a connection to `addr`.
fn api_answer(addr: SocketAddr) -> libc::pid_t {
    use std::io::Read;
    let mut conn = common::http::connect(addr);
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a pid: {text:?}"))
}

/// Sends `signal` to `pid`.
fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes no pointers.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// `/metrics` of the endpoint at `addr`: its line for `lifecycle_upgrades_total` with `outcome`.
fn upgrades_counted(addr: SocketAddr, outcome: &str) -> Option<String> {
    let reply = common::http::get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    let prefix = format!("lifecycle_upgrades_total{{outcome=\"{outcome}\"}} ");
    (reply.body.lines())
        .find(|l| l.starts_with(&prefix))
        .map(str::to_owned)
}

/// Every datagram a [`NotifySocket`] with credentials received, with its sender, in order.
struct Datagrams<'a> {
    socket: &'a NotifySocket,
    all: Vec<(libc::pid_t, String)>,
}

impl Datagrams<'_> {
    /// Receives until a datagram for which `found` holds (given its sender and text); returns
    /// it. Fails the test if it has not come within the watchdog.
    #[track_caller]
    fn until(&mut self, what: &str, found: impl Fn(libc::pid_t, &str) -> bool) -> (i32, String) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((pid, d)) = self.socket.next_from_within(left) else {
                panic!("no {what} within {WATCHDOG:?}; in all: {:#?}", self.all);
            };
            self.all.push((pid, d.clone()));
            if found(pid, &d) {
                return (pid, d);
            }
        }
    }

    /// Every datagram already waiting, without waiting, kept.
    fn drain(&mut self) {
        while let Some(d) = self.socket.next_from_within(Duration::from_millis(1)) {
            self.all.push(d);
        }
    }

    /// What `pid` sent, in order.
    fn from(&self, pid: libc::pid_t) -> Vec<&str> {
        (self.all.iter())
            .filter(|(p, _)| *p == pid)
            .map(|(_, d)| d.as_str())
            .collect()
    }
}

/// 1. SIGHUP under a real `NOTIFY_SOCKET` with the watchdog on: the old process tells systemd
///    `MAINPID=` of the new one, sends nothing after it (no `STOPPING=1`, no ping), and exits
///    0; the new one pings the watchdog as its own (`WATCHDOG_PID`), serves `/readyz` on the
///    same port, and on SIGTERM sends `STOPPING=1` and exits 0.
#[test]
fn sighup_hands_over_to_the_new_process_as_systemd_sees_it() {
    let socket = NotifySocket::at_path();
    socket.pass_credentials();
    let env = [
        ("NOTIFY_SOCKET", socket.value.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ];
    let mut f = Family::spawn(Role::Serve, &env);
    let mut d = Datagrams {
        socket: &socket,
        all: Vec::new(),
    };
    let old = f.first_pid();
    d.until("the old READY=1", |p, m| {
        p == old && m == "READY=1\nSTATUS=running"
    });
    let addr = f.serving(old);
    let api = f.api(old);
    assert_eq!(api_answer(api), old);
    d.until("a ping of the old process", |p, m| p == old && m == PING);

    let new = f.sighup_upgrade(old);
    assert_ne!(new, old);
    let (_, handed) = d.until("MAINPID=", |_, m| m.starts_with("MAINPID="));
    assert_eq!(
        handed,
        format!("MAINPID={new}\nSTATUS=upgraded: pid {new} serves; this process drains and exits")
    );
    assert_eq!(d.all.last().unwrap().0, old, "MAINPID= is the old one's");
    f.wait_for(&format!(
        "{old} [INFO] upgrade: pid {new} is ready: handing over to it"
    ));
    assert_eq!(f.serving(new), addr, "the same port");
    assert_eq!(f.api(new), api, "the named listener, handed over");
    assert_eq!(common::http::get(addr, "/readyz").status, 200);

    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert!(f.logged(&format!(
        "{old} run ended: upgraded: pid {new} serves; success true"
    )));
    d.drain();
    let sent = d.from(old);
    assert_eq!(
        sent.iter().rposition(|m| m.starts_with("MAINPID=")),
        Some(sent.len() - 1),
        "nothing from the old process after MAINPID=: {sent:#?}"
    );
    assert!(
        !sent.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 from the old process: {sent:#?}"
    );

    // The new process serves, and pings as the watchdog's own process.
    d.until("a ping of the new process", |p, m| p == new && m == PING);
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(api_answer(api), new);

    signal(new, libc::SIGTERM);
    d.until("the new process's STOPPING=1", |p, m| {
        p == new && m.starts_with("STOPPING=1\n")
    });
    d.until("the new process's end", |p, m| {
        p == new && m == "STATUS=shut down cleanly"
    });
    let status = wait_gone(new, WATCHDOG).expect("the new process, an orphan, reaped here");
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

/// 2. The PID file holds the first process's id once it serves, the new one's after an upgrade
///    (the old process leaves it), and is removed when the new process's run ends.
#[test]
fn the_pid_file_follows_the_upgrade_and_is_removed_at_the_end() {
    let files = TempDir::new("pid");
    let path = files.0.join("x.pid");
    let value = path.to_str().unwrap().to_owned();
    let mut f = Family::spawn(Role::Serve, &[(PID_FILE, value.as_str())]);
    let old = f.first_pid();
    let addr = f.serving(old);
    let read = || std::fs::read_to_string(&path).ok();
    assert_eq!(read(), Some(format!("{old}\n")));

    let new = f.sighup_upgrade(old);
    assert_eq!(f.serving(new), addr);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(
        read(),
        Some(format!("{new}\n")),
        "the new one's, left by the old one"
    );

    signal(new, libc::SIGTERM);
    let status = wait_gone(new, WATCHDOG).expect("reaped here");
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(read(), None, "removed at the end");
    let left: Vec<_> = std::fs::read_dir(&files.0).unwrap().collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");
}

/// 3a. SIGHUP during the start is refused with a log line; the start goes on, and the same
///     process serves; SIGHUP during the shutdown (a slow close) is refused too, and the
///     shutdown ends cleanly.
#[test]
fn sighup_during_the_start_is_refused_and_the_run_goes_on() {
    let mut f = Family::spawn(Role::Slow, &[]);
    let old = f.first_pid();
    f.wait_for(&format!("{old} gate: waiting for go"));
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: the program is starting or shutting down"
    ));
    f.create("go");
    let addr = f.serving(old);
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert!(!f.logged("upgrade: started pid"), "{}", f.dump());

    signal(old, libc::SIGTERM);
    f.wait_for(&format!("{old} gate: closing: waiting for go-close"));
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: the program is starting or shutting down"
    ));
    f.create("go-close");
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert!(!f.logged("upgrade: started pid"), "{}", f.dump());
    assert!(f.logged(&format!("{old} run ended: signal; success true")));
}

/// 3b. With upgrades off, `RunHandle::upgrade` upgrades all the same; and SIGHUP keeps its
///     default action: the new process dies of it.
#[test]
fn run_handle_upgrades_with_sighup_off_and_sighup_keeps_its_default() {
    let mut f = Family::spawn(Role::Handle, &[]);
    let old = f.first_pid();
    let addr = f.serving(old);
    f.create("upgrade-now");
    f.wait_for(&format!("{old} asking for an upgrade"));
    let line = f.wait_for(&format!("{old} [INFO] upgrade: started pid "));
    let new = f.started_in(&line);
    f.wait_for(&format!(
        "{old} [INFO] upgrade: pid {new} is ready: handing over to it"
    ));
    assert_eq!(f.serving(new), addr);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(common::http::get(addr, "/readyz").status, 200);

    signal(new, libc::SIGHUP);
    let status = wait_gone(new, WATCHDOG).expect("reaped here");
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "{status}; log:\n{}",
        f.dump()
    );
}

/// 4. A new process never ready within the upgrade timeout (1 s) is killed; the old one logs
///    it, serves `/readyz` on fresh connections throughout, counts it at `/metrics`, and
///    takes the next SIGHUP.
#[test]
fn a_new_process_not_ready_in_time_is_killed_and_the_old_one_serves_on() {
    let mut f = Family::spawn(Role::Hang, &[(TIMEOUT_MS, "1000")]);
    let old = f.first_pid();
    let addr = f.serving(old);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 0")
    );

    let new = f.sighup_upgrade(old);
    let failed = format!("{old} [ERROR] upgrade failed: pid {new} was not ready within 1s");
    let deadline = Instant::now() + WATCHDOG;
    let mut polls = 0;
    let line = loop {
        // Fresh connections, as a load balancer's probes: every one answered by a ready
        // process on the same port.
        let reply = common::http::get(addr, "/readyz");
        assert_eq!(reply.status, 200, "poll {polls}; log:\n{}", f.dump());
        polls += 1;
        // Paced, not to run out of ephemeral ports: this waits for nothing.
        std::thread::sleep(Duration::from_millis(2));
        if let Some(line) = f.poll_for(&failed) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no {failed:?}; log:\n{}",
            f.dump()
        );
    };
    assert!(line.contains("; killed ("), "{line}");
    assert!(line.ends_with("this process goes on serving"), "{line}");
    assert!(
        f.logged(&format!("{new} gate: hanging")),
        "it was in its start"
    );
    assert_eq!(proc_state(new), None, "the new process is gone (reaped)");
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 1")
    );
    assert_eq!(
        upgrades_counted(addr, "handed_over").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"handed_over\"} 0")
    );

    // A second attempt is taken, and fails the same way.
    let second = f.sighup_upgrade(old);
    assert_ne!(second, new);
    f.wait_for(&format!(
        "{old} [ERROR] upgrade failed: pid {second} was not ready within 1s"
    ));
    assert_eq!(proc_state(second), None);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 2")
    );

    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

/// 5. A new process whose start fails exits at once: the old one logs its exit, reaps it (no
///    zombie), counts it, and serves on; its PID file still holds its own id.
#[test]
fn a_new_process_that_fails_its_start_is_reaped_and_counted() {
    let files = TempDir::new("pid");
    let path = files.0.join("x.pid");
    let value = path.to_str().unwrap().to_owned();
    let mut f = Family::spawn(Role::Fail, &[(PID_FILE, value.as_str())]);
    let old = f.first_pid();
    let addr = f.serving(old);
    let read = || std::fs::read_to_string(&path).ok();
    assert_eq!(read(), Some(format!("{old}\n")));
    let new = f.sighup_upgrade(old);
    let line = f.wait_for(&format!("{old} [ERROR] upgrade failed: pid {new} "));
    assert!(
        line.contains(&format!("pid {new} exit status: 1 before it was ready")),
        "{line}"
    );
    assert!(f.logged(&format!("{new} run ended: start failed; success false")));
    // Reaped by the old process, its parent, before it logged the failure: no zombie.
    assert_eq!(proc_state(new), None, "log:\n{}", f.dump());
    assert_eq!(common::http::get(addr, "/readyz").status, 200);
    assert_eq!(
        upgrades_counted(addr, "failed").as_deref(),
        Some("lifecycle_upgrades_total{outcome=\"failed\"} 1")
    );
    assert_eq!(read(), Some(format!("{old}\n")), "the old one's still");

    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    assert_eq!(read(), None, "removed at the end");
}

/// 6. SIGTERM to the old process while its upgrade's new process is still starting: the old
///    one shuts down cleanly (exit 0), and the new one is killed and reaped before it exits:
///    no orphan left.
#[test]
fn sigterm_during_an_upgrade_ends_both_processes() {
    let mut f = Family::spawn(Role::Hang, &[]);
    let old = f.first_pid();
    f.serving(old);
    let new = f.sighup_upgrade(old);
    f.wait_for(&format!("{new} gate: hanging"));
    // One upgrade at a time.
    signal(old, libc::SIGHUP);
    f.wait_for(&format!(
        "{old} [WARN] SIGHUP: upgrade refused: an upgrade is in progress (one at a time)"
    ));
    let began = Instant::now();
    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
    f.wait_for(&format!(
        "{old} [INFO] upgrade: given up on: the program is shutting down"
    ));
    assert_eq!(
        wait_gone(new, Duration::from_secs(1)),
        None,
        "reaped by the old process, not left to this one; log:\n{}",
        f.dump()
    );
    assert!(
        began.elapsed() < Duration::from_secs(7),
        "{:?}",
        began.elapsed()
    );
    assert!(
        f.logged(&format!("{old} run ended: signal; success true")),
        "{}",
        f.dump()
    );
}

/// What [`given_up_late`] saw.
struct Late {
    f: Family,
    old: libc::pid_t,
    new: libc::pid_t,
    /// The status of every `/readyz` asked on a fresh connection meanwhile, in order.
    answers: Vec<u16>,
    /// Whether the PID file named the new process at some point.
    named_new: bool,
    /// The PID file's text once the new process is gone.
    file: Option<String>,
    _files: TempDir,
}

/// An upgrade whose new process starts at once, writes its PID file, then waits (at least the
/// check timeout, 1 s) for a poll of its readiness check, which does not answer, past the
/// upgrade timeout (500 ms, so never ready in time, however fast the machine): it is given up
/// on. Asks `/readyz` on fresh connections, and reads the PID file, until it is gone.
fn given_up_late() -> Late {
    let files = TempDir::new("pid");
    let path = files.0.join("x.pid");
    let value = path.to_str().unwrap().to_owned();
    let env = [(PID_FILE, value.as_str()), (TIMEOUT_MS, "500")];
    let mut f = Family::spawn(Role::Late, &env);
    let old = f.first_pid();
    let addr = f.serving(old);
    let read = || std::fs::read_to_string(&path).ok();
    assert_eq!(read(), Some(format!("{old}\n")));

    let new = f.sighup_upgrade(old);
    let failed = format!("{old} [ERROR] upgrade failed: pid {new} was not ready within 500ms");
    let deadline = Instant::now() + WATCHDOG;
    let mut named_new = false;
    let mut answers = Vec::new();
    let (mut failed_seen, mut told) = (false, false);
    loop {
        answers.push(common::http::get(addr, "/readyz").status);
        named_new |= read() == Some(format!("{new}\n"));
        // Paced, not to run out of ephemeral ports: this waits for nothing.
        std::thread::sleep(Duration::from_millis(2));
        if !told && f.logged(&format!("{new} [INFO] SIGTERM: shutting down")) {
            told = true;
            // Its check answers from now on: its close does not wait for it.
            f.create("late-go");
        }
        failed_seen = failed_seen || f.poll_for(&failed).is_some();
        if failed_seen && proc_state(new).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "log:\n{}", f.dump());
    }
    // The old process may write its id again just after it logs the failure: waited for, a
    // while (a bound, not a speed requirement: the step takes microseconds).
    let named_old = Some(format!("{old}\n"));
    let until = Instant::now() + REWRITE_BOUND;
    let mut file = read();
    while file != named_old && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        file = read();
    }
    Late {
        f,
        old,
        new,
        answers,
        named_new,
        file,
        _files: files,
    }
}

impl Late {
    /// Its SIGTERM ends the old process cleanly.
    fn end(mut self) {
        signal(self.old, libc::SIGTERM);
        let status = self.f.wait_first();
        assert!(status.success(), "{status}; log:\n{}", self.f.dump());
    }
}

/// 7. Once a new process that wrote its PID file is given up on and gone, the PID file should
///    name the old process, which serves on (the supervisor's `kill -HUP $(cat PATH)` needs
///    it). Its verdict needs the new process to have written the file before it was given up
///    on (500 ms): on a machine too slow for that, it passes without showing anything.
#[test]
fn a_new_process_given_up_on_after_writing_the_pid_file_leaves_the_old_one_named() {
    let mut late = given_up_late();
    let (old, new, named_new) = (late.old, late.new, late.named_new);
    assert_eq!(
        late.file,
        Some(format!("{old}\n")),
        "the PID file names the process that serves (it named pid {new} meanwhile: \
         {named_new}); log:\n{}",
        late.f.dump()
    );
    late.end();
}

/// 8. A new process given up on (SIGTERM at the upgrade timeout) before its run phase never
///    begins it: it never accepts on the socket it shares with the old process, never tells
///    the old one it serves; every fresh connection is answered ready, by the old process.
#[test]
fn a_new_process_given_up_on_never_begins_its_run_phase() {
    let mut late = given_up_late();
    let (old, new) = (late.old, late.new);
    let began = [
        format!("{new} serving at"),
        format!("{new} [INFO] upgrade: told pid {old} that this process serves"),
    ];
    let log = late.f.dump();
    for line in &began {
        assert!(!log.contains(line.as_str()), "{line:?}; log:\n{log}");
    }
    let not_ready: Vec<(usize, u16)> = (late.answers.iter().copied().enumerate())
        .filter(|(_, s)| *s != 200)
        .collect();
    assert!(
        not_ready.is_empty(),
        "fresh connections answered not ready, (index, status) of {}: {not_ready:?}; log:\n{log}",
        late.answers.len()
    );
    late.end();
}

/// Whether descriptor `fd` of process `pid` is non-blocking (`O_NONBLOCK` among the flags its
/// `/proc/PID/fdinfo` shows).
fn non_blocking(pid: libc::pid_t, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = (info.lines())
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| i64::from_str_radix(v.trim(), 8).unwrap())
        .expect("a flags line");
    flags & i64::from(libc::O_NONBLOCK) != 0
}

/// 9. A socket handed over by an upgrade shares its file status flags, `O_NONBLOCK` among
///    them, with the old process, which still accepts on it. A new process that takes `api` with `systemd::listener` and fails before it sets it
///    non-blocking again should leave the old process's listener as the old process set it:
///    non-blocking. Blocking, an accept loop that looks at its stop signal between
///    `WouldBlock`s waits in `accept` instead, until a client comes (its close times out).
#[test]
fn a_failed_upgrade_leaves_the_old_listener_non_blocking() {
    let mut f = Family::spawn(Role::Fail, &[]);
    let old = f.first_pid();
    let (fd, api) = f.api_fd(old);
    f.serving(old);
    assert!(non_blocking(old, fd), "set so by the old process");
    let new = f.sighup_upgrade(old);
    assert_eq!(f.api(new), api, "the new process took it");
    f.wait_for(&format!("{old} [ERROR] upgrade failed: pid {new} "));
    assert!(
        non_blocking(old, fd),
        "the old process's api listener was made blocking by the new one; log:\n{}",
        f.dump()
    );
    signal(old, libc::SIGTERM);
    let status = f.wait_first();
    assert!(status.success(), "{status}; log:\n{}", f.dump());
}

//! The harness of the upgrade tests (`upgrade_runner`, `upgrade_runner_failures`), Linux only:
//! a child process (the test binary again, running only its `child` test, which calls
//! [`child`]) runs a `Runner` with a health endpoint on 127.0.0.1:0; an upgrade starts the same
//! executable with the same arguments and environment, so the new process is the same binary
//! running `child` in the same role, and [`upgraded_from`](lifecycle::systemd::upgraded_from)
//! tells it it is the new one.
//!
//! The new process inherits the old one's standard error, so the log lines of every process
//! of a test come on one pipe, each prefixed by its writer's pid (written in one `write`, so
//! lines of two processes never mix). The test process is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`): a new process outliving the old one becomes its child, so its
//! exit status is read with `waitpid`, and no orphan is left to a PID 1 that may not reap.
//! Every pid a test learns is killed when it ends ([`Family`]'s drop), pass or fail.
//!
//! Every wait is bounded (the [`WATCHDOG`]); the child's steps wait for files the test creates
//! or for signals it sends, never for time to pass.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use lifecycle::metrics::Metrics;
use lifecycle::{HealthChecker, HealthReporter, Result, Runner, Service, StartContext};

use super::notify::TempDir;
use super::process::read_lines;
use super::WATCHDOG;

/// The variable that makes [`child`] run, and in which role (see [`Role`]).
pub const ROLE: &str = "LIFECYCLE_TEST_UPGRADE_ROLE";
/// The directory of the files through which the test steers the child.
pub const DIR: &str = "LIFECYCLE_TEST_UPGRADE_DIR";
/// If set, the runner's upgrade timeout, in milliseconds.
pub const TIMEOUT_MS: &str = "LIFECYCLE_TEST_UPGRADE_TIMEOUT_MS";
/// If set, the runner's PID file.
pub const PID_FILE: &str = "LIFECYCLE_TEST_UPGRADE_PID_FILE";
/// How long the old process is given to name itself in the PID file again after it logged a
/// failed upgrade.
pub const REWRITE_BOUND: Duration = Duration::from_secs(5);
/// The child's watchdog under systemd: a ping every second.
pub const WATCHDOG_USEC: &str = "2000000";

/// What the child does, by the value of [`ROLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
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

/// The body of each upgrade test binary's `#[test] fn child()` (the name and arguments
/// [`Family::spawn`] runs it with): in a child process started by a test (or by an upgrade of
/// one), runs a runner as its role says, then exits with 0 if the run succeeded, 1 otherwise.
/// In a plain test run (no [`ROLE`]), it does nothing.
pub fn child() {
    let Some(role) = super::child_role(ROLE, Stderr) else {
        return;
    };
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

/// The processes of one test: the first (this process's child) and every one an upgrade
/// started, whose log lines all come on the first one's standard error. Every pid learned
/// ([`learn`](Family::learn)) is killed on drop, if it still runs this binary.
pub struct Family {
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
    pub fn spawn(role: Role, env: &[(&str, &str)]) -> Family {
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
        // Not joined: it reads until every process of the family has closed the pipe.
        let (lines, _reader) = read_lines(stderr, "family stderr");
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
    pub fn first_pid(&self) -> libc::pid_t {
        self.first.id() as libc::pid_t
    }

    /// Records `pid` as one of the family's, to be killed on drop.
    pub fn learn(&mut self, pid: libc::pid_t) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    /// Waits for a log line containing `needle`, read earlier or still to come, and not
    /// returned by an earlier wait; returns it. Fails the test at the watchdog or if every
    /// process's output ends first.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// Waits for a log line containing any of `needles`, as [`wait_for`](Family::wait_for)
    /// waits for one; returns it.
    #[track_caller]
    pub fn wait_for_any(&mut self, needles: &[&str]) -> String {
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
    pub fn poll_for(&mut self, needle: &str) -> Option<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.take(needle)
    }

    /// Whether a line containing `needle` was read so far (returned or not).
    pub fn logged(&mut self, needle: &str) -> bool {
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
    pub fn serving(&mut self, pid: libc::pid_t) -> SocketAddr {
        let line = self.wait_for(&format!("{pid} serving at "));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The address of process `pid`'s `api` listener, as it logged it.
    #[track_caller]
    pub fn api(&mut self, pid: libc::pid_t) -> SocketAddr {
        self.api_fd(pid).1
    }

    /// The descriptor and address of process `pid`'s `api` listener, as it logged them.
    #[track_caller]
    pub fn api_fd(&mut self, pid: libc::pid_t) -> (i32, SocketAddr) {
        let line = self.wait_for(&format!("{pid} api fd "));
        let words: Vec<&str> = line.split(' ').collect();
        (words[3].parse().unwrap(), words[5].parse().unwrap())
    }

    /// Sends SIGHUP to `old`, which serves, and waits until it starts the new process of an
    /// upgrade; returns that process's id, learned. The runner takes upgrades before it says
    /// the run phase began (`RunHandle::wait_running`, `READY=1`), so a SIGHUP sent once it
    /// serves is never refused: a refusal fails the test.
    #[track_caller]
    pub fn sighup_upgrade(&mut self, old: libc::pid_t) -> libc::pid_t {
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
    pub fn started_in(&mut self, line: &str) -> libc::pid_t {
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
    pub fn wait_first(&mut self) -> ExitStatus {
        let mut status = None;
        let what = format!("pid {} exits", self.first_pid());
        super::eventually(&what, || {
            status = self.first.try_wait().expect("try_wait");
            status.is_some()
        });
        status.unwrap()
    }

    /// Touches `name` in the family's directory.
    pub fn create(&self, name: &str) {
        std::fs::write(self.dir.0.join(name), b"").unwrap();
    }

    /// The whole log so far, for a failure's message.
    pub fn dump(&mut self) -> String {
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

/// A runner's PID file, in a temporary directory of its own (removed on drop).
pub struct PidFile {
    pub files: TempDir,
    pub path: PathBuf,
}

impl PidFile {
    /// Its text; `None` if there is no such file.
    pub fn read(&self) -> Option<String> {
        std::fs::read_to_string(&self.path).ok()
    }
}

/// A [`Family`] in `role` with a PID file (and `env` besides), once its first process serves
/// and the PID file names it: the family, the PID file, the first process's id and its health
/// endpoint's address.
#[track_caller]
pub fn serving_with_pid_file(
    role: Role,
    env: &[(&str, &str)],
) -> (Family, PidFile, libc::pid_t, SocketAddr) {
    let files = TempDir::new("pid");
    let path = files.0.join("x.pid");
    let value = path.to_str().unwrap().to_owned();
    let env: Vec<(&str, &str)> = [(PID_FILE, value.as_str())]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    let mut f = Family::spawn(role, &env);
    let old = f.first_pid();
    let addr = f.serving(old);
    let pid_file = PidFile { files, path };
    assert_eq!(pid_file.read(), Some(format!("{old}\n")));
    (f, pid_file, old, addr)
}

/// The state letter and parent of process `pid` from `/proc/PID/stat`; `None` if there is no
/// such process.
pub fn proc_state(pid: libc::pid_t) -> Option<(char, libc::pid_t)> {
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
pub fn wait_gone(pid: libc::pid_t, bound: Duration) -> Option<ExitStatus> {
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

/// Sends `signal` to `pid`.
pub fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes no pointers.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

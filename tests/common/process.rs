//! Running an example binary as a child process, reading its log as it goes, sending it real
//! signals, and waiting for it under a watchdog so that a hang fails the test instead of
//! freezing CI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{eventually, WATCHDOG};

/// The path of a built example, built (once per test binary) so that it is never stale: `cargo
/// test` builds examples, but `cargo test --test NAME` alone does not rebuild them.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent() // deps
        .and_then(|d| d.parent()) // debug
        .expect("target dir")
        .join("examples");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    dir.join(name)
}

/// What a child that ran to its end printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `path` with `args` (and `RUST_LOG=info`) to its end, under the watchdog: a child still
/// running then is killed and the test fails. For a child that exits by itself (`--help`, a
/// usage error).
#[track_caller]
pub fn run_to_end(path: &Path, args: &[&str]) -> Finished {
    let child = Command::new(path)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = crossbeam_channel::bounded(1);
    // Reads both pipes to their end and reaps the child; the pid stays the child's until then.
    let waiter = std::thread::Builder::new()
        .name("child output".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .expect("spawn waiter");
    let output = match rx.recv_timeout(WATCHDOG) {
        Ok(output) => output.expect("wait for the child"),
        Err(_) => {
            // SAFETY: kill(2) with the pid of a child not reaped yet (the waiter reaps it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            waiter.join().expect("waiter thread");
            panic!("watchdog: {} {args:?} did not exit", path.display());
        }
    };
    waiter.join().expect("waiter thread");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Reads `stderr` line by line on a thread named `name`, until its end (every writer closed
/// it) or until the receiver is dropped; each line is sent on the receiver returned.
pub fn read_lines(stderr: ChildStderr, name: &str) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let reader = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .expect("spawn reader");
    (rx, reader)
}

/// A running child whose standard error is read line by line on a thread.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    /// The lines of `log` that a wait has returned.
    returned: Vec<usize>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(path: &PathBuf, args: &[&str]) -> Proc {
        Proc::spawn_with(path, args, |_| {})
    }

    /// Like [`spawn`](Proc::spawn), after `configure` has set more of the command (its
    /// environment, a `pre_exec`).
    pub fn spawn_with(path: &PathBuf, args: &[&str], configure: impl FnOnce(&mut Command)) -> Proc {
        let mut command = Command::new(path);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("spawn child");
        let stderr = child.stderr.take().expect("piped stderr");
        let (rx, reader) = read_lines(stderr, "child stderr");
        Proc {
            child,
            lines: rx,
            log: Vec::new(),
            returned: Vec::new(),
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for a log line containing `needle`, read earlier or still to come, and not returned
    /// by an earlier wait; returns it. Fails the test at the watchdog or if the child's output
    /// ends first.
    ///
    /// Lines read while waiting for another one are kept for later waits: the library writes
    /// its lines from a thread of its own, so one of them can come out after a line the
    /// program logged later.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// Waits for a log line containing any of `needles`, as [`wait_for`](Proc::wait_for) waits
    /// for one; returns it. Fails the test at the watchdog or if the child's output ends first.
    #[track_caller]
    pub fn wait_for_any(&mut self, needles: &[&str]) -> String {
        let matches = |line: &str| needles.iter().any(|n| line.contains(n));
        let found = (self.log.iter().enumerate())
            .find(|(i, line)| !self.returned.contains(i) && matches(line))
            .map(|(i, line)| (i, line.clone()));
        if let Some((i, line)) = found {
            self.returned.push(i);
            return line;
        }
        let deadline = Instant::now() + WATCHDOG;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if matches(&line) {
                        self.returned.push(self.log.len() - 1);
                        return line;
                    }
                }
                Err(e) => {
                    if e == RecvTimeoutError::Timeout {
                        self.kill();
                    }
                    panic!(
                        "{e}: no line with any of {needles:?}; log:\n{}",
                        self.log.join("\n")
                    )
                }
            }
        }
    }

    /// Waits for the child to exit (killing it and failing at the watchdog); returns its status
    /// and its whole log.
    ///
    /// Reads its standard error to the end first: the child closes it as it exits.
    #[track_caller]
    pub fn wait_exit(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "watchdog: child did not exit; log:\n{}",
                        self.log.join("\n")
                    );
                }
            }
        }
        if let Some(reader) = self.reader.take() {
            reader.join().expect("reader thread");
        }
        // Its standard error is closed: the exit follows (the child is killed on drop if not).
        let mut status = None;
        eventually("the child exits once its standard error is closed", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        let status = status.expect("an exit status");
        (status, std::mem::take(&mut self.log))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// The services named in lines ending with `suffix` (such as `": starting"`), in log order.
pub fn services_in(log: &[String], suffix: &str) -> Vec<String> {
    log.iter()
        .filter_map(|l| l.strip_suffix(suffix))
        .filter_map(|l| l.rsplit("] ").next())
        .map(str::to_owned)
        .collect()
}

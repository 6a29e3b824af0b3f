//! Real processes: `/bin/sh` scripts started as the new process, real listeners handed over.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fork::decimal;
use super::strip_deleted;
use super::Spawned;
use crate::stop::StopSignal;
use crate::upgrade::{current_program, spawn, Command, Inherit, Readiness};

/// `/bin/sh -c script`, with this process's environment but `remove`, plus `add`.
fn sh<'a>(
    script: &str,
    listeners: Vec<Inherit<'a>>,
    remove: &[&str],
    add: &[(&str, &str)],
) -> Command<'a> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !remove.iter().any(|r| k == *r))
        .collect();
    env.extend(add.iter().map(|(k, v)| (k.into(), v.into())));
    Command {
        program: Path::new("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        arg0: "upgrade-test-sh".into(),
        env,
        listeners,
    }
}

fn in_secs(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// The exit code of an `Exited`, else a panic that says what it was.
fn exited_code(readiness: Readiness) -> i32 {
    match readiness {
        Readiness::Exited(status) => status.code().unwrap_or_else(|| panic!("{status:?}")),
        other => panic!("not exited: {other:?}"),
    }
}

/// The inode of the socket `fd`, as `/proc/<pid>/fd/<n>` names it: `socket:[<inode>]`.
fn socket_link(fd: &impl AsRawFd) -> String {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat(2) writes a `stat` into `stat`, which holds one.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) }, 0);
    // SAFETY: zeroed, then written by fstat.
    format!("socket:[{}]", unsafe { stat.assume_init() }.st_ino)
}

#[test]
fn the_child_gets_its_sockets_pipe_environment_and_nothing_else() {
    let listeners: Vec<_> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    // Not close-on-exec: the child must not get it all the same.
    // SAFETY: dup(2) takes no pointers; the copy is owned by `_leak`.
    let _leak = unsafe { OwnedFd::from_raw_fd(libc::dup(listeners[0].as_raw_fd())) };
    // In order of descriptor, reversed, and one socket twice: every target overlaps a source
    // whenever the listeners' descriptors are low.
    let order = [(2, "c"), (1, "b"), (0, "a"), (0, "a2")];
    let inherit = order
        .iter()
        .map(|&(i, name)| Inherit {
            name,
            fd: listeners[i].as_fd(),
        })
        .collect();
    let sockets: String = (order.iter().enumerate())
        .map(|(j, &(i, _))| {
            let link = socket_link(&listeners[i]);
            format!(
                "[ \"$(readlink /proc/$$/fd/{})\" = '{link}' ] || fail fd{};\n",
                j + 3,
                j + 3
            )
        })
        .collect();
    let script = format!(
        r#"fail() {{ echo "upgrade test: $1" >&2; exit 1; }}
        fds=
        for f in /proc/$$/fd/*; do
            [ -e "$f" ] || continue
            case ${{f##*/}} in 0|1|2) ;; *) fds="$fds ${{f##*/}}" ;; esac
        done
        [ "$fds" = " 3 4 5 6 7" ] || fail "descriptors:$fds"
        [ "$LISTEN_PID" = "$$" ] || fail "LISTEN_PID=$LISTEN_PID"
        [ "$WATCHDOG_PID" = "$$" ] || fail "WATCHDOG_PID=$WATCHDOG_PID"
        [ "$LISTEN_FDS" = 4 ] || fail "LISTEN_FDS=$LISTEN_FDS"
        [ "$LISTEN_FDNAMES" = c:b:a:a2 ] || fail "LISTEN_FDNAMES=$LISTEN_FDNAMES"
        [ "$LIFECYCLE_UPGRADE_FD" = 7 ] || fail "LIFECYCLE_UPGRADE_FD=$LIFECYCLE_UPGRADE_FD"
        [ "$LIFECYCLE_UPGRADE_PARENT" = {parent} ] || fail "PARENT=$LIFECYCLE_UPGRADE_PARENT"
        [ -p /proc/$$/fd/7 ] || fail "no pipe at 7"
        {sockets}
        [ "$(tr '\0' '\n' < /proc/$$/cmdline | head -n 1)" = upgrade-test-sh ] || fail argv0
        printf R >&7"#,
        parent = std::process::id(),
    );
    let env = [
        ("WATCHDOG_USEC", "5000000"),
        ("WATCHDOG_PID", "1"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDS", "9"),
        ("LIFECYCLE_UPGRADE_FD", "99"),
    ];
    let removed = ["WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS"];
    let command = sh(&script, inherit, &removed, &env);
    let mut child: Spawned = spawn(command).unwrap();
    let readiness = child.wait_ready(in_secs(20), &StopSignal::new());
    assert!(matches!(readiness, Readiness::Ready), "{readiness:?}");
    let status = child.reap_within(Duration::from_secs(20)).unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A socket whose descriptor is the target of another: B, last, moves to a descriptor above
/// both sources, and the copies of A before it land on B's own descriptor (a move straight
/// from the sources would have overwritten B with A).
#[test]
fn a_source_at_another_target_is_not_overwritten() {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let n = a.as_raw_fd().max(b.as_raw_fd()) - 1;
    let mut inherit: Vec<_> = (1..n)
        .map(|_| Inherit {
            name: "a",
            fd: a.as_fd(),
        })
        .collect();
    inherit.push(Inherit {
        name: "b",
        fd: b.as_fd(),
    });
    let script = format!(
        r#"i=3
        while [ $i -le {last_a} ]; do
            [ "$(readlink /proc/$$/fd/$i)" = '{a}' ] || {{ echo "upgrade test: fd $i" >&2; exit 1; }}
            i=$((i + 1))
        done
        [ "$(readlink /proc/$$/fd/{b_fd})" = '{b}' ] || {{ echo "upgrade test: b" >&2; exit 1; }}
        [ "$LISTEN_FDS" = {n} ] || exit 1
        [ -p /proc/$$/fd/{pipe} ] || exit 1"#,
        last_a = n + 1,
        b_fd = n + 2,
        pipe = n + 3,
        a = socket_link(&a),
        b = socket_link(&b),
    );
    let mut child = spawn(sh(&script, inherit, &[], &[])).unwrap();
    // Exit 0, not the byte: dash writes to descriptors 0 to 9 only, and the pipe may be above.
    assert_eq!(
        exited_code(child.wait_ready(in_secs(30), &StopSignal::new())),
        0
    );
}

/// sh empties its signal mask when it starts (dash does): grep, started through env (which
/// leaves the mask alone), reads its own.
#[test]
fn the_child_starts_with_an_empty_signal_mask() {
    let mut command = sh("", vec![], &[], &[]);
    command.program = Path::new("/usr/bin/env");
    command.args = ["grep", "-q", "^SigBlk:[[:space:]]*0*$", "/proc/self/status"]
        .map(OsString::from)
        .to_vec();
    // A blocked signal in the spawning thread: the child's mask must be empty all the same.
    // SAFETY: sigset calls write the sets given; pthread_sigmask changes this thread's mask.
    let old = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        let mut old = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), old.as_mut_ptr());
        old
    };
    let spawned = spawn(command);
    // SAFETY: restores this thread's mask as it was.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    let mut child = spawned.unwrap();
    let readiness = child.wait_ready(in_secs(20), &StopSignal::new());
    assert_eq!(exited_code(readiness), 0, "signals blocked in the child");
}

#[test]
fn without_listeners_the_variables_are_set_empty_and_no_watchdog_pid() {
    let script = r#"fail() { echo "upgrade test: $1" >&2; exit 1; }
        [ "$LISTEN_PID" = "$$" ] || fail "LISTEN_PID=$LISTEN_PID"
        [ "$LISTEN_FDS" = 0 ] || fail "LISTEN_FDS=$LISTEN_FDS"
        [ "${LISTEN_FDNAMES-unset}" = "" ] || fail "LISTEN_FDNAMES=${LISTEN_FDNAMES-unset}"
        [ -z "${WATCHDOG_PID+set}" ] || fail "WATCHDOG_PID=$WATCHDOG_PID"
        [ "$LIFECYCLE_UPGRADE_FD" = 3 ] || fail "LIFECYCLE_UPGRADE_FD=$LIFECYCLE_UPGRADE_FD"
        printf R >&3"#;
    let command = sh(script, vec![], &["WATCHDOG_USEC"], &[("WATCHDOG_PID", "1")]);
    let mut child = spawn(command).unwrap();
    let readiness = child.wait_ready(in_secs(20), &StopSignal::new());
    assert!(matches!(readiness, Readiness::Ready), "{readiness:?}");
    assert!(child.kill(Duration::from_secs(5)).is_ok());
}

#[test]
fn a_child_that_exits_before_ready_is_reaped_with_its_status() {
    let mut child = spawn(sh("exit 3", vec![], &[], &[])).unwrap();
    assert_eq!(
        exited_code(child.wait_ready(in_secs(20), &StopSignal::new())),
        3
    );
    // Reaped: its status again, and no signal sent.
    assert_eq!(child.kill(Duration::ZERO).unwrap().code(), Some(3));
    assert_eq!(child.kill(Duration::ZERO).unwrap().code(), Some(3));
    assert_eq!(
        exited_code(child.wait_ready(in_secs(20), &StopSignal::new())),
        3
    );
}

#[test]
fn a_program_that_cannot_be_executed_exits_127() {
    let mut command = sh("", vec![], &[], &[]);
    command.program = Path::new("/nonexistent/lifecycle-upgrade-test");
    let mut child = spawn(command).unwrap();
    assert_eq!(
        exited_code(child.wait_ready(in_secs(20), &StopSignal::new())),
        127
    );
}

#[test]
fn a_child_not_ready_in_time_times_out_and_dies_of_sigterm() {
    let mut child = spawn(sh("exec sleep 60", vec![], &[], &[])).unwrap();
    let deadline = Instant::now() + Duration::from_millis(200);
    let readiness = child.wait_ready(deadline, &StopSignal::new());
    assert!(matches!(readiness, Readiness::TimedOut), "{readiness:?}");
    assert!(Instant::now() >= deadline);
    let status = child.kill(Duration::from_secs(10)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert_eq!(child.kill(Duration::ZERO).unwrap(), status);
}

#[test]
fn a_child_that_ignores_sigterm_gets_sigkill_after_the_grace() {
    let script = "trap '' TERM; printf R >&3; exec sleep 60";
    let mut child = spawn(sh(script, vec![], &[], &[])).unwrap();
    let readiness = child.wait_ready(in_secs(20), &StopSignal::new());
    assert!(matches!(readiness, Readiness::Ready), "{readiness:?}");
    let start = Instant::now();
    let status = child.kill(Duration::from_millis(200)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[test]
fn a_stop_ends_the_wait_and_drop_kills_the_child() {
    let mut child = spawn(sh("exec sleep 60", vec![], &[], &[])).unwrap();
    let stop = StopSignal::new();
    let start = Instant::now();
    let readiness = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            stop.stop();
        });
        child.wait_ready(in_secs(30), &stop)
    });
    assert!(matches!(readiness, Readiness::Stopped), "{readiness:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let pid = child.pid() as libc::pid_t;
    drop(child);
    // Killed and reaped: no such process (its id is not reused this soon).
    // SAFETY: kill(2) with signal 0 only checks.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    let e = std::io::Error::last_os_error();
    assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
}

#[test]
fn a_child_that_closes_the_pipe_and_lives_on_is_killed() {
    let script = "exec 3>&-; exec sleep 60";
    let mut child = spawn(sh(script, vec![], &[], &[])).unwrap();
    let start = Instant::now();
    let readiness = child.wait_ready(in_secs(30), &StopSignal::new());
    let Readiness::Exited(status) = readiness else {
        panic!("{readiness:?}");
    };
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[test]
fn a_released_child_lives_on() {
    let mut child = spawn(sh("printf R >&3; exec sleep 60", vec![], &[], &[])).unwrap();
    let readiness = child.wait_ready(in_secs(20), &StopSignal::new());
    assert!(matches!(readiness, Readiness::Ready), "{readiness:?}");
    let pid = child.pid() as libc::pid_t;
    child.release();
    // SAFETY: kill(2) takes no pointers; the child is not reaped, so `pid` is still it.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut status = 0;
    // SAFETY: waitpid(2) writes the status into `status`; bounded, the child got SIGKILL.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status));
}

#[test]
fn invalid_names_and_nul_bytes_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let inherit = vec![Inherit {
        name: "a:b",
        fd: listener.as_fd(),
    }];
    let e = spawn(sh("exit 0", inherit, &[], &[])).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = spawn(sh("exit\0 0", vec![], &[], &[])).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = spawn(sh("exit 0", vec![], &[], &[("A\0B", "1")])).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn pids_are_written_in_decimal() {
    for (value, text) in [(0, "0"), (7, "7"), (42, "42"), (u32::MAX, "4294967295")] {
        let mut out = [0; 10];
        let len = decimal(value, &mut out);
        assert_eq!(&out[..len], text.as_bytes());
    }
}

#[test]
fn the_program_path_is_absolute_and_without_deleted() {
    let program = current_program().unwrap();
    assert!(program.is_absolute() && program.exists(), "{program:?}");
    assert_eq!(current_program().unwrap(), program);
    let stripped = strip_deleted(Path::new("/usr/bin/demo (deleted)"));
    assert_eq!(stripped, Path::new("/usr/bin/demo"));
    assert_eq!(
        strip_deleted(Path::new("/usr/bin/demo")),
        Path::new("/usr/bin/demo")
    );
}

/// Set in the environment of this test binary started again by `upgrade_round_trip`.
const AS_CHILD: &str = "LIFECYCLE_TEST_UPGRADED_CHILD";

/// The round trip with the real child side: this test binary, started again as the new
/// process, runs only `as_upgraded_child`, which takes the socket and tells it is ready.
#[test]
fn upgrade_round_trip() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let command = Command {
        program: current_program().unwrap(),
        args: [
            "--exact",
            "upgrade::spawn::tests::as_upgraded_child",
            "--quiet",
        ]
        .map(OsString::from)
        .to_vec(),
        arg0: std::env::args_os().next().unwrap(),
        env: std::env::vars_os()
            .chain([(
                AS_CHILD.into(),
                listener.local_addr().unwrap().to_string().into(),
            )])
            .collect(),
        listeners: vec![Inherit {
            name: "probe",
            fd: listener.as_fd(),
        }],
    };
    let mut child = spawn(command).unwrap();
    let readiness = child.wait_ready(in_secs(30), &StopSignal::new());
    assert!(matches!(readiness, Readiness::Ready), "{readiness:?}");
    let status = child.reap_within(Duration::from_secs(30)).unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The new process of `upgrade_round_trip` (elsewhere it does nothing).
#[test]
fn as_upgraded_child() {
    let Some(addr) = std::env::var_os(AS_CHILD) else {
        return;
    };
    let parent = crate::upgrade::parent().expect("started by an upgrade");
    assert_eq!(parent.pid(), std::os::unix::process::parent_id());
    let listener = crate::systemd::take_listener("probe").unwrap().unwrap();
    assert_eq!(listener.local_addr().unwrap().to_string().as_str(), addr);
    parent.tell_ready().unwrap();
    parent.tell_ready().unwrap();
}

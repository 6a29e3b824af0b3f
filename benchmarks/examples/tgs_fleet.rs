//! The tokio-graceful-shutdown counterpart of `examples/fleet.rs` and `fleet/raw_threads.rs`,
//! for the whole-process measurement in BENCHMARKS.md ("Whole process: N services"): N
//! trivial subsystems that each wait for the shutdown, one `ready` line on standard output once
//! all of them run, and on SIGINT or SIGTERM (`Toplevel::catch_signals`) a graceful shutdown,
//! then exit code 0. No logging (tracing without a subscriber).
//!
//! ```text
//! cargo build --release -p lifecycle-benchmarks --example tgs_fleet
//! tgs_fleet --services N [--chain]
//! ```
//!
//! - By default the subsystems are independent: the root subsystem starts all N as its
//!   children, at once (the crate's idiom; `benches/runner.rs` does the same in-process).
//! - `--chain`: nested subsystems, each starting the next as its child once it runs itself, so
//!   they start one after another. The shutdown request reaches all of them at once (a child's
//!   token is a child of its parent's) and each returns at once, but the crate finishes a
//!   subsystem only once its children are finished, so they are finished child first, the last
//!   one started first: `fleet --chain`'s order. (A subsystem with work of its own to do on the
//!   shutdown would `wait_for_children()` first, for that work to follow its child's; these
//!   have none, so they don't.)
//!
//! The crate has no notion of a subsystem being ready: each subsystem bumps a shared counter
//! as the first thing it does, and the one that brings it to N wakes the main task, which
//! prints `ready`. That is when every subsystem's own code is running, as in `raw_threads`
//! (each thread sends its ready message) and `fleet` (each worker's thread has started).
//! The signal handlers are registered before the main task waits for that, so a SIGTERM sent
//! right after `ready` is always a graceful shutdown.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};

const USAGE: &str = "usage: tgs_fleet --services N [--chain]";

/// How long the shutdown may take before `handle_shutdown_requests` gives up (an error, exit
/// code 1): far more than any N here needs.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// What the subsystems share: how many have started, and the main task's wake-up once all N
/// have.
struct Started {
    count: AtomicUsize,
    n: usize,
    all: Notify,
}

impl Started {
    /// Called first thing by each subsystem.
    fn one(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // Stores a permit if the main task is not waiting yet: no wake-up is lost.
            self.all.notify_one();
        }
    }
}

/// An independent subsystem: runs until the shutdown is requested.
async fn service(subsys: &mut SubsystemHandle, started: Arc<Started>) -> Result<(), Infallible> {
    started.one();
    subsys.on_shutdown_requested().await;
    Ok(())
}

/// Link `i` of the chain: starts link `i + 1` as its child, then runs until the shutdown is
/// requested (the crate finishes it once its child is finished).
async fn link(
    subsys: &mut SubsystemHandle,
    i: usize,
    started: Arc<Started>,
) -> Result<(), Infallible> {
    started.one();
    if i + 1 < started.n {
        start_link(subsys, i + 1, started);
    }
    subsys.on_shutdown_requested().await;
    Ok(())
}

/// Starts link `i` as a child of `subsys`.
fn start_link(subsys: &SubsystemHandle, i: usize, started: Arc<Started>) {
    subsys.start(SubsystemBuilder::new(
        format!("link-{i}"),
        async move |s: &mut SubsystemHandle| link(s, i, started).await,
    ));
}

/// Parses `--services N` (or `--services=N`) and `--chain`.
fn parse_args(mut it: impl Iterator<Item = String>) -> Option<(usize, bool)> {
    let (mut n, mut chain) = (None, false);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--chain" => chain = true,
            "--services" => n = it.next()?.parse().ok(),
            _ => n = arg.strip_prefix("--services=")?.parse().ok(),
        }
    }
    n.filter(|&n| n > 0).map(|n| (n, chain))
}

// The multi-thread runtime with its defaults (`#[tokio::main]`: one worker thread per core).
#[tokio::main]
async fn main() -> ExitCode {
    let Some((n, chain)) = parse_args(std::env::args().skip(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let started = Arc::new(Started {
        count: AtomicUsize::new(0),
        n,
        all: Notify::new(),
    });

    let toplevel = {
        let started = started.clone();
        Toplevel::new(async move |s: &mut SubsystemHandle| {
            if chain {
                start_link(s, 0, started);
            } else {
                for i in 0..n {
                    let started = started.clone();
                    s.start(SubsystemBuilder::new(
                        format!("service-{i}"),
                        async move |s: &mut SubsystemHandle| service(s, started).await,
                    ));
                }
            }
        })
    }
    .catch_signals();

    let shutdown = toplevel.handle_shutdown_requests(SHUTDOWN_TIMEOUT);
    tokio::pin!(shutdown);
    // Prints `ready` once all N have started; ends without printing if a shutdown comes first.
    let result = tokio::select! {
        result = &mut shutdown => result,
        () = started.all.notified() => {
            println!("ready");
            shutdown.await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tgs_fleet: {e:?}");
            ExitCode::FAILURE
        }
    }
}

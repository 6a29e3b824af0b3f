//! Helpers shared by the test binaries. Every test file does `mod common;` and uses what it
//! needs; what one binary leaves unused is not a warning there.
//!
//! - [`eventually`] and [`WATCHDOG`]: waiting, bounded, for a condition nothing signals.
//! - [`http`]: a minimal HTTP/1.1 client over raw sockets.
//! - [`load`]: a bounded load of keep-alive and fresh-connection clients, counting failures.
//! - [`procfs`]: what `/proc/self` says: threads, memory, the fd limit.
//! - [`fake`]: a health reporter the test controls, and waits for the checker's events.
//! - [`fixture`]: a started checker and endpoint on 127.0.0.1:0.
//! - [`flaky`]: restartable workers that fail when told, for the supervision tests.
//! - [`prom`]: an exposition parsed by Python's `prometheus_client`.
//! - [`process`]: an example run as a child process, under the watchdog.
//! - `notify` (Linux): a real datagram socket for a child's `NOTIFY_SOCKET`, and what it
//!   received, in order.
//! - [`recorder`]: services that record their lifecycle in order.
//! - `upgrading` (Linux, feature `metrics`): the upgrade tests' child program (its roles, services, logger) and
//!   the `Family` of processes an upgrade makes.
//! - [`child_role`]: the start of a test binary's `child` entry, run again as a child process.
#![allow(dead_code)]

pub mod fake;
pub mod fixture;
pub mod flaky;
pub mod http;
pub mod load;
pub mod notify;
pub mod process;
pub mod procfs;
pub mod prom;
pub mod recorder;
#[cfg(target_os = "linux")]
#[cfg(feature = "metrics")]
pub mod upgrading;

use std::time::{Duration, Instant};

/// Bound for anything a test waits on: a watchdog, not a speed requirement.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, asking again after a short pause each time; panics naming `what`
/// if it does not hold within [`WATCHDOG`].
///
/// For conditions that nothing signals (a thread count, a socket the server closes, a cached
/// answer); where a channel or an event says when something happened, wait on that instead.
#[track_caller]
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "not within the {WATCHDOG:?} watchdog: {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// In a test binary's `child` entry (the binary run again as a child process): the value of
/// the variable `var`, which says the child's role, having installed `logger` (at level info)
/// for the child's log; `None`, installing nothing, in a plain test run, where `var` is unset.
pub fn child_role(var: &str, logger: impl log::Log + 'static) -> Option<String> {
    let role = std::env::var(var).ok()?;
    log::set_boxed_logger(Box::new(logger)).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    Some(role)
}

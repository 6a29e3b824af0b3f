//! Clients that attack the health endpoint, and the kubelet-like probes that must get through
//! meanwhile: for the tests that run at the endpoint's default options.
//!
//! - [`probe`]: one probe as a kubelet sends it (a fresh connection, one `GET`, `Connection:
//!   close`, a 1 s timeout), and a [`Tally`] of many.
//! - [`Attack`]: attacker threads that run until told to end, reporting once they are in place:
//!   a [`slowloris`], a [`crowd`] of idle keep-alive clients, a connect-and-close [`flood`].
//!
//! Every wait is bounded: a probe by its timeout, an attacker's socket calls by short timeouts,
//! the start of an attack by the watchdog. The pauses between probes or between an attacker's
//! rounds pace the load; nothing waits on a sleep to know that something has happened.
#![allow(dead_code, unused_imports)]

pub mod crowd;
pub mod flood;
pub mod probe;
pub mod slowloris;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::common::WATCHDOG;

pub use self::probe::{probe, probes, Tally, PROBE_TIMEOUT};

/// What one attacker thread tells the test when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    /// Connections opened, the first ones included.
    pub opened: u64,
    /// Of those, the ones opened again because the server had dropped one.
    pub reopened: u64,
}

impl std::ops::Add for Report {
    type Output = Report;
    fn add(self, other: Report) -> Report {
        Report {
            opened: self.opened + other.opened,
            reopened: self.reopened + other.reopened,
        }
    }
}

/// Attacker threads, running until [`finish`](Attack::finish) (or drop) tells them to end.
pub struct Attack {
    end: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Report>>,
}

impl Attack {
    /// Starts `threads` attacker threads, each running `attacker(i, end, ready)`: it must send
    /// on `ready` once it is in place, and return soon after `end` is set. Returns once every
    /// thread is in place; panics if that takes longer than the watchdog.
    pub fn start<F>(threads: usize, attacker: F) -> Attack
    where
        F: Fn(usize, &AtomicBool, &Sender<()>) -> Report + Send + Sync + 'static,
    {
        let end = Arc::new(AtomicBool::new(false));
        let attacker = Arc::new(attacker);
        let (ready, in_place) = mpsc::channel();
        let handles = (0..threads)
            .map(|i| {
                let (end, ready, attacker) =
                    (Arc::clone(&end), ready.clone(), Arc::clone(&attacker));
                std::thread::Builder::new()
                    .name(format!("attacker {i}"))
                    .spawn(move || attacker(i, &end, &ready))
                    .expect("spawn an attacker")
            })
            .collect();
        let attack = Attack {
            end,
            threads: handles,
        };
        for _ in 0..threads {
            in_place
                .recv_timeout(WATCHDOG)
                .expect("every attacker in place within the watchdog");
        }
        attack
    }

    /// How many threads the attack runs.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Ends the attack: tells every thread to end, joins them and sums their reports.
    pub fn finish(mut self) -> Report {
        self.end_and_join()
            .into_iter()
            .map(|r| r.expect("an attacker thread panicked"))
            .fold(Report::default(), |a, b| a + b)
    }

    /// Ends the attack and joins its threads, waiting for them at most the watchdog: a thread
    /// still running then fails the test (from `finish`) or is left to end with the process
    /// (from a drop, which must not panic).
    fn end_and_join(&mut self) -> Vec<std::thread::Result<Report>> {
        self.end.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + WATCHDOG;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (ended, running): (Vec<_>, Vec<_>) =
            self.threads.drain(..).partition(JoinHandle::is_finished);
        if !running.is_empty() && !std::thread::panicking() {
            panic!("watchdog: {} attacker thread(s) did not end", running.len());
        }
        ended.into_iter().map(JoinHandle::join).collect()
    }
}

impl Drop for Attack {
    /// Ends the attack if the test did not (it failed): the threads are joined all the same,
    /// within the watchdog.
    fn drop(&mut self) {
        let _ = self.end_and_join();
    }
}

/// Splits `total` over `parts` as evenly as can be: part `i`'s count.
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

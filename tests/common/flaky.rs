//! Restartable workers the tests of supervision control over channels (`supervise*.rs`): each
//! instance reports when it is built and runs, then waits for an order (fail, finish) or its
//! stop signal; and the runs' helpers, every wait bounded by the watchdog.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lifecycle::{
    HealthReporter, Result, RunHandle, RunReport, Runner, Service, ServiceOptions, StartContext,
    StateMachine, Worker,
};

use super::WATCHDOG;

pub const MS: Duration = Duration::from_millis(1);

/// What the test tells an instance's closure.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// Return an error.
    Fail,
    /// Return `Ok` before being stopped.
    Finish,
}

/// What an instance tells the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Instance `k` (from 0) of the service was built by the factory.
    Built(&'static str, usize),
    /// Instance `k` (from 0) of the service runs.
    Running(&'static str, usize),
    /// Instance `k` returned from its closure, at this instant.
    Ended(&'static str, usize, Instant),
}

/// A factory of workers named `name`: instance `k` reports on `notes`, then waits for an
/// order on `orders` or its stop signal; instances whose number `fails_at_once` accepts fail
/// at once instead of waiting.
pub fn factory(
    name: &'static str,
    notes: &Sender<Note>,
    orders: &Receiver<Order>,
    fails_at_once: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> impl Fn() -> Worker + Send + Sync + 'static {
    let count = Arc::new(AtomicUsize::new(0));
    let (notes, orders) = (notes.clone(), orders.clone());
    move || {
        let k = count.fetch_add(1, Ordering::SeqCst);
        let _ = notes.send(Note::Built(name, k));
        let (notes, orders) = (notes.clone(), orders.clone());
        let at_once = fails_at_once(k);
        Worker::new(name, move |stop| {
            let _ = notes.send(Note::Running(name, k));
            let order = if at_once {
                Some(Order::Fail)
            } else {
                crossbeam_channel::select! {
                    recv(orders) -> order => order.ok(),
                    recv(stop.receiver()) -> _ => None,
                    default(2 * WATCHDOG) => None,
                }
            };
            let _ = notes.send(Note::Ended(name, k, Instant::now()));
            match order {
                Some(Order::Fail) => Err(format!("instance {k} fails").into()),
                Some(Order::Finish) | None => Ok(()),
            }
        })
    }
}

/// The next note, within the watchdog.
#[track_caller]
pub fn next(notes: &Receiver<Note>) -> Note {
    notes
        .recv_timeout(WATCHDOG)
        .expect("a note within the watchdog")
}

/// Waits for instance `k` of `name` to run, skipping other notes.
#[track_caller]
pub fn wait_running(notes: &Receiver<Note>, name: &'static str, k: usize) {
    loop {
        if next(notes) == Note::Running(name, k) {
            return;
        }
    }
}

/// Runs `runner` on a thread of its own; the report arrives on the receiver.
pub fn spawn_run(runner: Runner) -> (RunHandle, Receiver<RunReport>) {
    let handle = runner.handle();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("test run".into())
        .spawn(move || {
            let _ = tx.send(runner.run());
        })
        .unwrap();
    assert!(
        handle.wait_running(WATCHDOG),
        "the run phase within the watchdog"
    );
    (handle, rx)
}

#[track_caller]
pub fn report(reports: &Receiver<RunReport>) -> RunReport {
    reports
        .recv_timeout(WATCHDOG)
        .expect("the run ends within the watchdog")
}

pub fn fast() -> ServiceOptions {
    ServiceOptions::new().restart_backoff(MS, 4 * MS)
}

pub fn runner() -> Runner {
    Runner::new().handle_signals(false)
}

/// A service that hands the `RunHandle` its start gets to the test, and whose close waits for
/// `hold_close` (if any) to send or be dropped, within the watchdog.
pub struct Keeper {
    pub name: &'static str,
    pub sm: StateMachine,
    pub handles: Sender<RunHandle>,
    pub hold_close: Option<Receiver<()>>,
}

impl Keeper {
    pub fn new(name: &'static str, handles: &Sender<RunHandle>) -> Keeper {
        Keeper {
            name,
            sm: StateMachine::new(),
            handles: handles.clone(),
            hold_close: None,
        }
    }
}

impl HealthReporter for Keeper {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Keeper {
    fn start(&self, ctx: &StartContext) -> Result<()> {
        let handle = ctx.run_handle().cloned().expect("a runner's handle");
        self.sm.start_once(|| {
            let _ = self.handles.send(handle);
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        let hold = self.hold_close.clone();
        self.sm.close_once(move || {
            if let Some(hold) = hold {
                let _ = hold.recv_timeout(WATCHDOG);
            }
            Ok(())
        })
    }
}

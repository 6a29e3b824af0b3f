//! The `"health checker"` thread's loop: it only sends requests to the workers, waits with
//! deadlines and records results; it never calls user code.

use std::time::Instant;

use crossbeam_channel::{Receiver, Select};

use crate::stop::StopSignal;

use super::worker::PollResult;
use super::{write_log, Shared};

/// The poller loop: records results, expires calls, sends due polls and publishes, then sleeps
/// until the next deadline, a result, a wake-up or the stop signal.
pub(super) fn poll(
    shared: &Shared,
    results: &Receiver<PollResult>,
    wake: &Receiver<()>,
    stop: &StopSignal,
) {
    let interval = shared.config.interval;
    while !stop.is_stopped() {
        while wake.try_recv().is_ok() {}
        let (next, ended, lines) = {
            let mut reg = shared.registry.lock();
            let now = Instant::now();
            while let Ok(result) = results.try_recv() {
                reg.record_poll(result, now);
            }
            let ended = reg.ended_orphans();
            let next = reg.tick(Instant::now(), interval);
            (next, ended, shared.commit(&mut reg))
        };
        write_log(lines);
        for mut orphan in ended {
            // It has ended: this join does not wait for user code.
            orphan.worker.join_until(Instant::now());
            crate::relay::info!(
                "{}: the stuck worker of this unregistered check has ended",
                orphan.name
            );
        }
        let mut select = Select::new();
        select.recv(results);
        select.recv(wake);
        select.recv(stop.receiver());
        let _ = select.ready_deadline(next);
    }
}

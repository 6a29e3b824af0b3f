//! The services' closes in a shutdown: each a call `close NAME` on a thread of the run's
//! [pool](crate::pool), once every started service that needs it has closed, so independent
//! services close at the same time. Each close is bounded by the [budget](super::super::budget)'s rule; the runner thread waits
//! on one `select` over every close in progress and the earliest of their bounds.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::{Error, Phase, Result};
use crate::pool::Call;
use crate::relay;
use crate::service::close_guarded;
use crate::state::State;

use super::super::budget::Budget;
use super::super::notify::doing;
use super::in_flight::InFlight;
use super::Run;

/// A close in progress.
struct Closing {
    name: String,
    call: Call<()>,
    began: Instant,
    /// When it is abandoned.
    until: Instant,
    bound: Duration,
    timeout: Duration,
}

/// What a close sends back: its service, and what the close returned (`None`: it panicked
/// past its guard).
type Closed = (usize, Option<Result<()>>);

/// The closes in progress.
type InProgress = InFlight<Closing, Option<Result<()>>>;

impl Run {
    /// Closes the started services `order` (each after those that need it), where service
    /// `order[k]` is step `k` of `budget`.
    pub(super) fn close_services(&mut self, order: &[usize], budget: &Budget) {
        let n = self.graph.len();
        let mut step = vec![usize::MAX; n];
        for (k, &i) in order.iter().enumerate() {
            step[i] = k;
        }
        let started = |i: usize| step[i] != usize::MAX;
        // How many started services that need each one have not closed yet.
        let mut waiting: Vec<usize> = (0..n)
            .map(|i| {
                self.graph
                    .needed_by(i)
                    .iter()
                    .filter(|&&d| started(d))
                    .count()
            })
            .collect();
        let mut closable: VecDeque<usize> =
            order.iter().copied().filter(|&i| waiting[i] == 0).collect();
        let mut running = InProgress::new(n);
        // For the critical path: when each close began and ended, and which close let it begin.
        let mut spans: Vec<Option<(Instant, Instant)>> = vec![None; n];
        let mut unblocked_by: Vec<Option<usize>> = vec![None; n];
        let mut done = 0;
        loop {
            let mut ended = Vec::new();
            while let Some(index) = closable.pop_front() {
                match self.begin_close(index, step[index], budget, running.sender()) {
                    Some(closing) => running.insert(index, closing.until, closing),
                    None => ended.push((index, None)),
                }
            }
            if running.is_empty() && ended.is_empty() {
                break;
            }
            if ended.is_empty() {
                self.notify_closes(&running, done, order.len());
                ended = self.wait_for_closes(&mut running);
            }
            done += ended.len();
            for (index, span) in ended {
                spans[index] = span;
                for &j in self.graph.needs(index) {
                    if started(j) {
                        waiting[j] -= 1;
                        if waiting[j] == 0 {
                            unblocked_by[j] = Some(index);
                            closable.push_back(j);
                        }
                    }
                }
            }
        }
        self.shutdown_path = self.critical_path("shutdown", &spans, &unblocked_by);
    }

    /// Tells systemd which closes are in progress (`closing api, cache (1/5 done)`), and
    /// extends its stop timeout to the latest of their bounds.
    fn notify_closes(&mut self, running: &InProgress, done: usize, of: usize) {
        if !self.notes.is_enabled() {
            return;
        }
        let names = running.iter().map(|c| c.name.as_str());
        self.notes.status(doing("closing", names, done, of, "done"));
        if let Some(latest) = running.last_deadline() {
            self.notes.extend_until(latest);
        }
    }

    /// Begins closing service `index`, step `step` of the budget, its outcome to be sent on
    /// `results`; `None` when it cannot begin (the deadline has passed), the error recorded.
    fn begin_close(
        &mut self,
        index: usize,
        step: usize,
        budget: &Budget,
        results: &Sender<Closed>,
    ) -> Option<Closing> {
        let service = self.runner.entries[index].service.clone();
        let name = service.name().to_owned();
        let timeout = self.close_timeout(index);
        self.mark(index, State::Closing, None);
        let now = Instant::now();
        let bound = budget.bound(step, now, timeout);
        if budget.has_passed(now) {
            self.not_closed_past_deadline(&name);
            self.mark(index, State::CloseFailed, None);
            return None;
        }
        relay::info!("{name}: closing");
        let began = Instant::now();
        let sender = results.clone();
        let call = (self.calls).call(format!("{} {name}", Phase::Close), move || {
            let value = catch_unwind(AssertUnwindSafe(|| close_guarded(&*service))).ok();
            drop(service);
            let _ = sender.send((index, value));
        });
        let call = match call {
            Ok(call) => call,
            Err(e) => {
                let e = Error::from(e).in_service(&name, Phase::Close);
                relay::error!("{e}");
                self.shutdown_errors.push(e);
                self.mark(index, State::CloseFailed, None);
                return None;
            }
        };
        Some(Closing {
            name,
            call,
            began,
            until: crate::thread::later(began, bound),
            bound,
            timeout,
        })
    }

    /// Waits for a close to return or the earliest bound to pass; records what became of the
    /// closes that ended (or were abandoned), and returns their services, each with when its
    /// close began and ended.
    fn wait_for_closes(
        &mut self,
        running: &mut InProgress,
    ) -> Vec<(usize, Option<(Instant, Instant)>)> {
        let earliest = running.first().map(|(until, _)| until);
        let earliest =
            earliest.unwrap_or_else(|| crate::thread::later(Instant::now(), Duration::MAX));
        // Under systemd, woken in time to extend its stop timeout again.
        let earliest = self.notes.wake_by(earliest);
        // Every close that has returned by now, at one wake-up.
        let first = running.outcomes().recv_deadline(earliest).ok();
        let mut ended = self.take_closed(running, first);
        if !ended.is_empty() {
            return ended;
        }
        // Every close past its bound is abandoned, unless it has returned at this moment: a
        // close sends its value before it ends, so what has ended by now has sent it, and is
        // taken first; one that ended without a value (a panic past its guard) says so.
        let now = Instant::now();
        // Whether each has ended is read before the outcomes are taken: one that had ended
        // then and sent nothing by now never will.
        let due: Vec<(usize, bool)> = (running.due(now).into_iter())
            .map(|index| {
                let closing = running.get(index);
                (index, closing.is_some_and(|c| c.call.has_ended()))
            })
            .collect();
        ended = self.take_closed(running, None);
        for (index, has_ended) in due {
            if has_ended {
                if let Some(c) = running.remove(index) {
                    let took = now.saturating_duration_since(c.began);
                    self.closed(index, &c.name, None, took);
                    ended.push((index, Some((c.began, now))));
                }
                continue;
            }
            let Some(c) = running.remove(index) else {
                continue;
            };
            let e = if c.bound < c.timeout {
                // Cut short to leave the later steps their time: say so.
                Error::timed_out_noting(
                    &c.name,
                    Phase::Close,
                    c.bound,
                    format!(
                        "cut short of its close timeout of {:?} to leave the rest of the \
                         shutdown its time",
                        c.timeout
                    ),
                )
            } else {
                let note = format!("thread {:?} is left running", c.call.label());
                Error::timed_out_noting(&c.name, Phase::Close, c.bound, note)
            };
            relay::error!("{e}: abandoning its close");
            self.abandon(Some(c.call));
            self.shutdown_errors.push(e);
            self.mark(index, State::CloseFailed, None);
            ended.push((index, Some((c.began, now))));
        }
        ended
    }

    /// Records `first` (if any) and every close outcome already sent, and returns their
    /// services, each with when its close began and ended.
    fn take_closed(
        &mut self,
        running: &mut InProgress,
        first: Option<Closed>,
    ) -> Vec<(usize, Option<(Instant, Instant)>)> {
        let mut ended = Vec::new();
        let mut next = first.or_else(|| running.outcomes().try_recv().ok());
        while let Some((index, value)) = next {
            // A close abandoned earlier that has returned since: already recorded.
            if let Some(closing) = running.remove(index) {
                let now = Instant::now();
                let took = now.saturating_duration_since(closing.began);
                self.closed(index, &closing.name, value, took);
                ended.push((index, Some((closing.began, now))));
            }
            next = running.outcomes().try_recv().ok();
        }
        ended
    }

    /// Records a close that returned `value` (`None`: its thread ended without one) after
    /// `took`.
    fn closed(&mut self, index: usize, name: &str, value: Option<Result<()>>, took: Duration) {
        let state = match value {
            Some(Ok(())) => {
                relay::info!("{name}: closed in {took:?}");
                State::Closed
            }
            Some(Err(e)) => {
                relay::error!("{e}");
                self.shutdown_errors.push(e);
                State::CloseFailed
            }
            None => {
                let e =
                    Error::msg("its thread ended without a result").in_service(name, Phase::Close);
                relay::error!("{e}");
                self.shutdown_errors.push(e);
                self.mark(index, State::CloseFailed, None);
                return;
            }
        };
        self.reports[index].closed = true;
        self.reports[index].closed_in = Some(took);
        self.mark(index, state, Some(took));
    }
}

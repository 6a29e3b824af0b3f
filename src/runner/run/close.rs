//! The services' closes in a shutdown: each a call `close NAME` on a thread of the run's
//! [pool](crate::pool), once every started service that needs it has closed, so independent
//! services close at the same time. Each close is bounded by the [budget](super::super::budget)'s rule; the runner thread waits
//! on one `select` over every close in progress and the earliest of their bounds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;

use crate::error::{Error, Phase};
use crate::pool::Call;
use crate::relay;
use crate::service::close_guarded;
use crate::state::State;
use crate::thread::later;

use super::super::budget::Budget;
use super::Run;

/// A close in progress.
struct Closing {
    index: usize,
    name: String,
    call: Call<crate::error::Result<()>>,
    began: Instant,
    /// When it is abandoned.
    until: Instant,
    bound: Duration,
    timeout: Duration,
}

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
        let mut running: Vec<Closing> = Vec::new();
        // For the critical path: when each close began and ended, and which close let it begin.
        let mut spans: Vec<Option<(Instant, Instant)>> = vec![None; n];
        let mut unblocked_by: Vec<Option<usize>> = vec![None; n];
        loop {
            let mut ended = Vec::new();
            while let Some(index) = closable.pop_front() {
                match self.begin_close(index, step[index], budget) {
                    Some(closing) => running.push(closing),
                    None => ended.push((index, None)),
                }
            }
            if running.is_empty() && ended.is_empty() {
                break;
            }
            if ended.is_empty() {
                ended = self.wait_for_closes(&mut running);
            }
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

    /// Begins closing service `index`, step `step` of the budget; `None` when it cannot begin
    /// (the deadline has passed), the error recorded.
    fn begin_close(&mut self, index: usize, step: usize, budget: &Budget) -> Option<Closing> {
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
        let call = (self.calls).call(format!("{} {name}", Phase::Close), move || {
            close_guarded(&*service)
        });
        Some(Closing {
            index,
            name,
            call,
            began,
            until: later(began, bound),
            bound,
            timeout,
        })
    }

    /// Waits for the first close to return or the earliest bound to pass; records what became
    /// of the closes that ended (or were abandoned), and returns their services, each with when
    /// its close began and ended.
    fn wait_for_closes(
        &mut self,
        running: &mut Vec<Closing>,
    ) -> Vec<(usize, Option<(Instant, Instant)>)> {
        let earliest = running.iter().map(|c| c.until).min();
        let earliest = earliest.unwrap_or_else(|| later(Instant::now(), Duration::MAX));
        let mut select = Select::new();
        for c in running.iter() {
            select.recv(c.call.receiver());
        }
        let done = match select.select_deadline(earliest) {
            Ok(oper) => {
                let k = oper.index();
                let value = oper.recv(running[k].call.receiver()).ok();
                Some((k, value))
            }
            Err(_) => None,
        };
        drop(select);
        if let Some((k, value)) = done {
            let closing = running.swap_remove(k);
            let now = Instant::now();
            let took = now.saturating_duration_since(closing.began);
            let index = closing.index;
            self.closed(index, &closing.name, value, took);
            return vec![(index, Some((closing.began, now)))];
        }
        // Every close past its bound is abandoned.
        let now = Instant::now();
        let mut ended = Vec::new();
        let mut k = 0;
        while k < running.len() {
            if running[k].until > now {
                k += 1;
                continue;
            }
            let c = running.swap_remove(k);
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
            self.abandoned.push(c.call.abandon());
            self.shutdown_errors.push(e);
            self.mark(c.index, State::CloseFailed, None);
            ended.push((c.index, Some((c.began, now))));
        }
        ended
    }

    /// Records a close that returned `value` (`None`: its thread ended without one) after
    /// `took`.
    fn closed(
        &mut self,
        index: usize,
        name: &str,
        value: Option<crate::error::Result<()>>,
        took: Duration,
    ) {
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

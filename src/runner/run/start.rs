//! The start phase of a run: each service starts, a call `start NAME` on a thread of the run's
//! [pool](crate::pool), as soon as every service it needs is ready (see
//! [`Graph`](super::super::graph::Graph)), so independent services start at the same time. The
//! runner thread waits on one `select` over the channel every start sends its outcome on, the
//! signal route, the handle's requests and the earliest deadline at which a start is
//! abandoned.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, Sender};

use crate::error::{Error, ErrorKind, Phase};
use crate::pool::Call;
use crate::relay;
use crate::service::{start_until_ready, StartOutcome};
use crate::state::State;
use crate::stop::{StartContext, StopSignal};
use crate::thread::later;

use super::super::notify::doing;
use super::super::{Request, ShutdownCause, START_GRACE};
use super::in_flight::InFlight;
use super::Run;

/// A start in progress.
struct Pending {
    meta: Meta,
    /// `None` when no thread could be had for it: its failure is then on the channel.
    call: Option<Call<()>>,
}

/// What the runner knows of a start in progress, besides its call.
struct Meta {
    index: usize,
    name: String,
    began: Instant,
    /// When the start is abandoned: its start timeout, then the fixed grace.
    give_up_at: Instant,
    timeout: Duration,
    close_timeout: Duration,
    /// A restartable service's own cancellation (fired with the phase's, and when its instance
    /// reports a failure before it is ready).
    own_cancel: Option<StopSignal>,
}

/// What a start sends back: its service, and what the start returned (`None`: it panicked
/// past its guard).
type Started = (usize, Option<StartOutcome>);

/// The starts in progress, each until it is given up.
type InProgress = InFlight<Pending, Option<StartOutcome>>;

/// What the runner thread woke up for.
enum Event {
    /// A start returned (or ended without a value).
    Done(Started),
    Signal(Option<i32>),
    Request(Option<Request>),
    /// The earliest deadline to abandon a start has passed (or systemd's start timeout is to be
    /// extended).
    GiveUp,
}

impl Run {
    /// Starts every service, each once those it needs are ready; returns the cause if the start
    /// phase ended early. A failure or a shutdown asked for meanwhile cancels every start in
    /// progress and starts nothing more; the services that need a failed one are reported as
    /// skipped because of it.
    pub(super) fn start_all(&mut self) -> Option<ShutdownCause> {
        // Fired when the start phase ends early: cancels every start in progress.
        let cancel = StopSignal::new();
        let n = self.graph.len();
        let mut waiting: Vec<usize> = (0..n).map(|i| self.graph.needs(i).len()).collect();
        let mut startable: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut flight = InProgress::new(n);
        let mut failed: Vec<usize> = Vec::new();
        let mut end: Option<ShutdownCause> = None;
        while end.is_none() {
            if let Some(cause) = self.poll_request() {
                relay::info!("{cause} during start: not starting the remaining services");
                end = Some(cause);
                break;
            }
            self.cancel_failed(&flight);
            let began_some = !startable.is_empty();
            while let Some(index) = startable.pop_front() {
                let pending = self.begin_start(index, &cancel, flight.sender());
                flight.insert(index, pending.meta.give_up_at, pending);
            }
            if flight.is_empty() {
                break;
            }
            if began_some {
                self.notify_starts(&flight);
            }
            let (meta, outcome) = match self.next_event(&flight) {
                Event::Done((index, outcome)) => match flight.remove(index) {
                    Some(pending) => (pending.meta, outcome),
                    // A start given up earlier that has returned since: already recorded.
                    None => continue,
                },
                Event::Signal(signal) => {
                    end = Some(signal.map_or(ShutdownCause::Signal, |s| self.on_signal(s)));
                    break;
                }
                Event::Request(request) => {
                    // Unreachable while the runner holds a handle; taken as a request.
                    let Some(request) = request else {
                        end = Some(ShutdownCause::Requested);
                        break;
                    };
                    match self.take(request) {
                        Some(cause) => {
                            end = Some(cause);
                            break;
                        }
                        None => continue,
                    }
                }
                Event::GiveUp => {
                    let now = Instant::now();
                    let Some((give_up_at, index)) = flight.first() else {
                        continue;
                    };
                    // Woken a moment early, or to extend systemd's start timeout; or the start
                    // returned at this very moment, its outcome on its way: wait again. One
                    // that did not return is a failure, and the end of the phase cancels the
                    // others.
                    let ended = (flight.get(index))
                        .is_some_and(|p| p.call.as_ref().is_none_or(Call::has_ended));
                    if give_up_at > now || ended {
                        self.notify_starts(&flight);
                        continue;
                    }
                    let Some(Pending { meta, call }) = flight.remove(index) else {
                        continue;
                    };
                    self.abandon(call);
                    (meta, None)
                }
            };
            let index = meta.index;
            if self.finish_start(&meta, outcome, false) {
                for &d in self.graph.needed_by(index) {
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        self.unblocked_by[d] = Some(index);
                        startable.push_back(d);
                    }
                }
            } else {
                failed.push(index);
                end = Some(ShutdownCause::StartFailed);
            }
        }
        self.cancel_all(flight, &cancel, end.as_ref());
        self.mark_skipped(&failed);
        end
    }

    /// Tells systemd which starts are in progress (`starting db, cache (2/5 ready)`), and
    /// extends its start timeout to the latest bound among them (see
    /// [`Notes::extend_until`](super::super::notify::Notes::extend_until)).
    fn notify_starts(&mut self, flight: &InProgress) {
        if !self.notes.is_enabled() {
            return;
        }
        let names = flight.iter().map(|p| p.meta.name.as_str());
        let status = doing(
            "starting",
            names,
            self.started.len(),
            self.graph.len(),
            "ready",
        );
        self.notes.status(status);
        if let Some(latest) = flight.last_deadline() {
            self.notes.extend_until(latest);
        }
    }

    /// What comes first: a start's outcome, a signal, a request, or the earliest deadline to
    /// abandon a start.
    fn next_event(&self, flight: &InProgress) -> Event {
        let results = flight.outcomes();
        let mut select = Select::new();
        let done = select.recv(results);
        let signals = select.recv(&self.signals);
        let requests = select.recv(&self.runner.requests);
        let give_up = flight.first().map(|(at, _)| at);
        let give_up = give_up.unwrap_or_else(|| later(Instant::now(), Duration::MAX));
        // Under systemd, woken in time to extend its start timeout again.
        let Ok(oper) = select.select_deadline(self.notes.wake_by(give_up)) else {
            return Event::GiveUp;
        };
        match oper.index() {
            i if i == done => match oper.recv(results) {
                Ok(started) => Event::Done(started),
                // The runner holds a sender: never disconnected.
                Err(_) => Event::GiveUp,
            },
            i if i == signals => Event::Signal(oper.recv(&self.signals).ok()),
            i => {
                debug_assert_eq!(i, requests);
                Event::Request(oper.recv(&self.runner.requests).ok())
            }
        }
    }

    /// Starts service `index`, a call `start NAME` on a thread of the run's pool that sends its
    /// outcome on `results`.
    fn begin_start(
        &mut self,
        index: usize,
        cancel: &StopSignal,
        results: &Sender<Started>,
    ) -> Pending {
        let entry = &self.runner.entries[index];
        let service = entry.service.clone();
        let name = service.name().to_owned();
        let options = &entry.options;
        let timeout = options.start_timeout.unwrap_or(self.runner.start_timeout);
        let close_timeout = options.close_timeout.unwrap_or(self.runner.close_timeout);
        relay::info!("{name}: starting");
        self.mark(index, State::Starting, None);
        let began = Instant::now();
        let own_cancel = self.supervisor.is_restartable(index).then(StopSignal::new);
        let cancel = own_cancel.as_ref().unwrap_or(cancel);
        let ctx =
            StartContext::new(cancel.clone(), Some(timeout)).with_handle(self.handle_for(index));
        let sender = results.clone();
        let call = (self.calls).call(format!("start {name}"), move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| start_until_ready(&*service, &ctx)));
            drop((service, ctx));
            let _ = sender.send((index, outcome.ok()));
        });
        let call = match call {
            Ok(call) => Some(call),
            Err(e) => {
                // Nothing can run it: it fails now, as a start whose thread cannot be spawned.
                let e = Error::from(e).in_service(&name, Phase::Start);
                let failed = StartOutcome {
                    started: false,
                    result: Err(e),
                };
                let _ = results.send((index, Some(failed)));
                None
            }
        };
        Pending {
            meta: Meta {
                index,
                name,
                began,
                // The start gives up by itself at the deadline; the fixed grace covers a start
                // that ignores its context, and the error says so.
                give_up_at: later(later(began, timeout), START_GRACE),
                timeout,
                close_timeout,
                own_cancel,
            },
            call,
        }
    }

    /// Cancels the start of each restartable service whose instance reported a failure before
    /// it was ready: it is then taken as up, to be restarted once the run phase begins (see
    /// [`failed_as_it_started`](Run::failed_as_it_started)).
    fn cancel_failed(&self, flight: &InProgress) {
        for p in flight.iter() {
            if let Some(own) = &p.meta.own_cancel {
                if self.failed_as_it_started(p.meta.index) {
                    own.stop();
                }
            }
        }
    }

    /// Whether the current instance of service `index` reported a failure in the start phase.
    fn failed_as_it_started(&self, index: usize) -> bool {
        let generation = self.supervisor.generation(index);
        (self.early.iter()).any(|r| {
            matches!(r, Request::Failed { index: i, generation: g, .. } if *i == index && *g == generation)
        })
    }

    /// Records what became of a start (`None`: it was abandoned, or its call ended without a
    /// value); `interrupted` when the start phase had already ended (a shutdown asked for, or
    /// another service failed) and the start was cancelled. Returns whether it is ready.
    fn finish_start(
        &mut self,
        meta: &Meta,
        outcome: Option<StartOutcome>,
        interrupted: bool,
    ) -> bool {
        let (index, name) = (meta.index, &meta.name);
        match outcome {
            Some(StartOutcome {
                started,
                result: Ok(()),
            }) => {
                self.reports[index].started = started;
                self.started.push(index);
                if interrupted {
                    self.mark(index, State::Started, None);
                    return false;
                }
                let now = Instant::now();
                let took = now.saturating_duration_since(meta.began);
                self.start_spans[index] = Some((meta.began, now));
                self.reports[index].ready_in = Some(took);
                self.mark(index, State::Started, Some(took));
                relay::info!("{name}: ready in {took:?}");
                true
            }
            Some(StartOutcome {
                started: true,
                result: Err(e),
            }) if !interrupted && self.failed_as_it_started(index) => {
                // Started, then failed (its start cancelled for it): up as far as the start
                // phase goes, restarted once the run phase begins.
                self.reports[index].started = true;
                self.started.push(index);
                let took = Instant::now().saturating_duration_since(meta.began);
                self.mark(index, State::Started, Some(took));
                relay::info!(
                    "{name}: failed as it started ({e}); restarted once every service is up"
                );
                true
            }
            Some(StartOutcome {
                started,
                result: Err(e),
            }) => {
                self.reports[index].started = started;
                if started {
                    // Started but never became ready: it still needs closing.
                    self.started.push(index);
                }
                // A start cut short by a shutdown is no failure: a service that did not start
                // counts as closed, one that did is closed like the others.
                let state = match (interrupted, started) {
                    (true, false) => State::Closed,
                    (true, true) => State::Started,
                    (false, _) => State::StartFailed,
                };
                self.mark(index, state, None);
                if interrupted && e.has_kind(ErrorKind::Cancelled) {
                    relay::info!("{name}: start interrupted: {e}");
                } else {
                    // A start that failed on its own, cancelled or not, is an error of the run.
                    relay::error!("{e}");
                    self.start_errors.push(e);
                }
                false
            }
            None if interrupted => {
                // Cancelled (a shutdown, or another start failed) and not returned within its
                // grace: abandoned, named in the report's abandoned threads.
                self.mark(index, State::StartFailed, None);
                relay::warn!(
                    "{name}: its start was cancelled and did not return in time: abandoned"
                );
                false
            }
            None => {
                self.mark(index, State::StartFailed, None);
                let e = Error::timed_out_noting(
                    name,
                    Phase::Start,
                    meta.timeout,
                    format!("abandoned {START_GRACE:?} later: its start did not return"),
                );
                relay::error!("{e}");
                self.start_errors.push(e);
                false
            }
        }
    }

    /// The start phase ended early (because of `cause`): cancels every start in progress, and
    /// waits for each at most its grace (see
    /// [`interrupted_start_grace`](Run::interrupted_start_grace)), all at once. For systemd,
    /// the shutdown begins here (`STOPPING=1`, `cancelling db, cache (2/5 ready): signal`).
    fn cancel_all(
        &mut self,
        mut flight: InProgress,
        cancel: &StopSignal,
        cause: Option<&ShutdownCause>,
    ) {
        if flight.is_empty() {
            return;
        }
        cancel.stop();
        for p in flight.iter() {
            if let Some(own) = &p.meta.own_cancel {
                own.stop();
            }
        }
        if self.notes.is_enabled() {
            let names: Vec<&str> = flight.iter().map(|p| p.meta.name.as_str()).collect();
            let (ready, n) = (self.started.len(), self.graph.len());
            let mut status = doing("cancelling", names, ready, n, "ready");
            if let Some(cause) = cause {
                status = format!("{status}: {cause}");
            }
            self.notes.stopping(status);
        }
        let now = Instant::now();
        let mut until: Vec<(Instant, usize)> = Vec::new();
        for p in flight.iter() {
            let grace = self.interrupted_start_grace(p.meta.close_timeout, p.meta.give_up_at);
            until.push((later(now, grace), p.meta.index));
        }
        until.sort_unstable();
        if let Some(&(latest, _)) = until.last() {
            self.notes.extend_until(latest);
        }
        let results = flight.outcomes().clone();
        for (until, index) in until {
            // Every start that returns meanwhile is taken as it comes.
            while flight.get(index).is_some() {
                match results.recv_deadline(until) {
                    Ok((i, outcome)) => {
                        if let Some(Pending { meta, .. }) = flight.remove(i) {
                            self.finish_start(&meta, outcome, true);
                        }
                    }
                    Err(_) => break,
                }
            }
            // Past its grace: its outcome, if it ended at this moment, is on the channel;
            // otherwise it is abandoned.
            while let Ok((i, outcome)) = results.try_recv() {
                if let Some(Pending { meta, .. }) = flight.remove(i) {
                    self.finish_start(&meta, outcome, true);
                }
            }
            if let Some(Pending { meta, call }) = flight.remove(index) {
                self.abandon(call);
                self.finish_start(&meta, None, true);
            }
        }
    }

    /// A shutdown was asked for during a start, or another start failed: the shutdown's
    /// deadline begins now, and a start, once cancelled, is waited for at most its close
    /// timeout, at most until it would have been abandoned anyway, and at most half the
    /// shutdown timeout, so that the closes keep the rest.
    fn interrupted_start_grace(
        &mut self,
        close_timeout: Duration,
        give_up_at: Instant,
    ) -> Duration {
        let now = Instant::now();
        self.deadline
            .get_or_insert_with(|| later(now, self.runner.shutdown_timeout));
        (close_timeout)
            .min(give_up_at.saturating_duration_since(now))
            .min(self.runner.shutdown_timeout / 2)
    }

    /// Gives up on a call: one still running is named among the abandoned threads; one no
    /// thread had taken is dropped (it never runs).
    pub(super) fn abandon(&mut self, call: Option<Call<()>>) {
        let Some(call) = call else {
            return;
        };
        let label = call.label().to_owned();
        match call.abandon() {
            Some(running) => self.abandoned.push(running),
            None => relay::warn!("{label:?} never began: no thread was free to run it"),
        }
    }

    /// Marks every service never started that needs one of `failed` (directly or not) as
    /// skipped because of it (the first failed one, when several are).
    fn mark_skipped(&mut self, failed: &[usize]) {
        for &f in failed {
            let cause = self.reports[f].name.clone();
            for d in self.graph.dependants(f) {
                let report = &mut self.reports[d];
                if report.state == State::Unstarted && report.skipped_because.is_none() {
                    report.skipped_because = Some(cause.clone());
                }
            }
        }
        let skipped = (self.reports.iter()).filter(|r| r.skipped_because.is_some());
        for report in skipped {
            relay::info!(
                "{}: not started: it needs {}, which failed to start",
                report.name,
                report.skipped_because.as_deref().unwrap_or_default()
            );
        }
    }
}

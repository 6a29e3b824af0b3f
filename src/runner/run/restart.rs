//! The run phase of a run: the runner waits for a signal, a shutdown request or a fatal error,
//! and meanwhile restarts the restartable services whose instances fail (see
//! [`Supervisor`](crate::supervise::Supervisor) for the decisions). A restart closes the failed
//! instance (a call `close NAME` on the run's pool, within its close timeout), waits its
//! backoff, then builds a fresh instance and starts it (a call `start NAME`, within its start
//! timeout and the grace). The runner thread waits on one `select` over the signals, the
//! requests, every call in progress, the liveness events and the earliest timer, so it never
//! waits on user code, and a shutdown asked for during a backoff begins at once.

mod stages;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::checker::{HealthEvent, Probe, Status};
use crate::error::{Error, Phase, Result};
use crate::pool::Call;
use crate::relay;
use crate::service::{Service, StartOutcome};
use crate::stop::StopSignal;
use crate::supervise::{Decision, Exit};
use crate::thread::later;

use super::super::table::RestartStage;
use super::super::{Request, ShutdownCause};
use super::Run;

/// What a restart's start call came to.
struct Built {
    /// The fresh instance, if the factory built one of the service's name.
    instance: Option<Arc<dyn Service>>,
    outcome: StartOutcome,
    /// The name of an instance the factory built under another name.
    misnamed: Option<String>,
}

/// A restart in progress, of one service.
struct Restart {
    attempt: u32,
    /// The generation of the instance it starts.
    generation: u64,
    /// When its backoff ends.
    at: Instant,
    stage: Stage,
}

/// What a restart's call sends back, with its service and the generation of the restart.
enum Outcome {
    /// The failed instance's close returned this (`None`: it panicked past its guard).
    Closed(Option<Result<()>>),
    /// The fresh instance's build and start came to this (`None`: they panicked past their
    /// guards).
    Built(Option<Built>),
}

/// The restarts' calls' outcomes: one channel for them all, so that the runner thread's
/// `select` has one operation for every call in progress.
pub(super) struct Outcomes {
    tx: Sender<(usize, u64, Outcome)>,
    rx: Receiver<(usize, u64, Outcome)>,
}

impl Outcomes {
    pub(super) fn new() -> Outcomes {
        let (tx, rx) = crossbeam_channel::unbounded();
        Outcomes { tx, rx }
    }
}

/// Where a restart is.
enum Stage {
    /// The failed instance (or one restarted along with another) is up, and closes once every
    /// restarting service that needs it has closed.
    Queued,
    /// The failed instance closes.
    Closing {
        call: Call<()>,
        began: Instant,
        until: Instant,
        timeout: Duration,
    },
    /// The backoff runs.
    Waiting,
    /// The fresh instance starts.
    Starting {
        call: Call<()>,
        cancel: StopSignal,
        began: Instant,
        give_up_at: Instant,
        /// A failure its instance reported before it was ready: its start is cancelled.
        failed: Option<Error>,
        /// Its instance reported it had finished (its run ended) before it was ready.
        finished: bool,
    },
}

impl Restart {
    /// When the runner must act on it, unless a call returns first: abandon the close, begin
    /// the start, abandon the start.
    fn due(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Queued => None,
            Stage::Closing { until, .. } => Some(*until),
            Stage::Waiting => Some(self.at),
            Stage::Starting { give_up_at, .. } => Some(*give_up_at),
        }
    }
}

/// The restarts in progress, by service.
type Restarts = Vec<Option<Restart>>;

/// What the runner thread woke up for in the run phase.
enum Event {
    Signal(Option<i32>),
    Request(Option<Request>),
    /// A call of restart `.1` of service `.0` returned.
    Call(usize, u64, Outcome),
    Health(Option<HealthEvent>),
    /// SIGHUP asked for an upgrade.
    Hangup,
    /// The upgrade in progress came to this (`None`: its thread panicked).
    #[cfg(target_os = "linux")]
    Upgraded(Option<super::upgrade::Outcome>),
    /// The earliest timer passed.
    Due,
}

impl Run {
    /// Waits in the run phase until a signal, a request, a fatal error or a spent restart
    /// budget, restarting failed instances meanwhile; once the loop ends, ends the restarts in
    /// progress (see [`end_restarts`](Run::end_restarts)).
    pub(super) fn wait_for_end(&mut self) -> ShutdownCause {
        let mut restarts: Restarts = (0..self.graph.len()).map(|_| None).collect();
        let mut health = self.liveness();
        let mut end = None;
        for request in std::mem::take(&mut self.early) {
            if end.is_none() {
                end = self.on_request(request, &mut restarts);
            }
        }
        while end.is_none() {
            end = match self.next_run_event(&restarts, health.as_ref()) {
                Event::Signal(signal) => {
                    Some(signal.map_or(ShutdownCause::Signal, |s| self.on_signal(s)))
                }
                // Unreachable while the runner holds a handle; taken as a request.
                Event::Request(None) => Some(ShutdownCause::Requested),
                Event::Request(Some(request)) => self.on_request(request, &mut restarts),
                Event::Call(index, generation, outcome) => {
                    // An outcome of a call given up earlier: already recorded.
                    let current = restarts.get(index).and_then(Option::as_ref);
                    match (current.filter(|r| r.generation == generation), outcome) {
                        (None, outcome) => {
                            self.discard(index, outcome);
                            None
                        }
                        (Some(_), Outcome::Closed(value)) => {
                            self.failed_instance_closed(index, value, &mut restarts);
                            None
                        }
                        (Some(_), Outcome::Built(built)) => {
                            self.restart_started(index, built, &mut restarts)
                        }
                    }
                }
                Event::Health(Some(event)) => self.on_health(&event, &mut restarts),
                Event::Health(None) => {
                    health = None;
                    None
                }
                Event::Hangup => {
                    self.upgrade_asked("SIGHUP");
                    None
                }
                #[cfg(target_os = "linux")]
                Event::Upgraded(outcome) => self.upgrade_ended(outcome),
                Event::Due => self.on_due(&mut restarts),
            };
        }
        if let Some(route) = &self.route {
            route.open_upgrades(false);
        }
        #[cfg(target_os = "linux")]
        self.cancel_upgrade();
        let cause = end.unwrap_or(ShutdownCause::Requested);
        if restarts.iter().any(Option::is_some) {
            // The shutdown shows before the restarts in progress are waited for: readiness
            // fails (the drain begins now), a shutdown is seen asked for, systemd is told.
            self.runner.handle.shutting_down.stop();
            self.notes.stopping(format!("shutting down ({cause})"));
            if let Some(h) = &self.health {
                h.set_running(false);
            }
            self.drain_began = Some(Instant::now());
        }
        self.end_restarts(restarts);
        cause
    }

    /// An outcome of a restart's call given up earlier: a fresh instance it built is closed and
    /// dropped on the pool, never on the runner thread (a worker's drop joins its thread).
    fn discard(&mut self, index: usize, outcome: Outcome) {
        let Outcome::Built(Some(Built {
            instance: Some(instance),
            ..
        })) = outcome
        else {
            return;
        };
        let name = self.reports[index].name.clone();
        relay::warn!("{name}: a restart given up on has returned since: closing its instance");
        let label = format!("{} {name}", crate::error::Phase::Close);
        if let Err(e) = (self.calls).call(label, move || {
            let _ = crate::service::close_guarded(&*instance);
        }) {
            relay::warn!("{name}: cannot close the instance of a restart given up on: {e}");
        }
    }

    /// The checker's events, when a service is restarted on failed health polls.
    fn liveness(&self) -> Option<Receiver<HealthEvent>> {
        let wanted = (0..self.graph.len())
            .any(|i| (self.supervisor.options(i)).is_some_and(|o| o.unhealthy_polls.is_some()));
        let health = self.health.as_ref().filter(|_| wanted)?;
        Some(health.checker().subscribe())
    }

    /// What comes first: a signal, a request, a call's return, a liveness event, or the
    /// earliest timer.
    fn next_run_event(&self, restarts: &Restarts, health: Option<&Receiver<HealthEvent>>) -> Event {
        let mut select = Select::new();
        let calls = select.recv(&self.restart_calls.rx);
        let signals = select.recv(&self.signals);
        let requests = select.recv(&self.runner.requests);
        let events = health.map(|h| select.recv(h));
        let hangups = select.recv(&self.hangups);
        #[cfg(target_os = "linux")]
        let upgrade = self
            .upgrading
            .as_ref()
            .map(|u| (select.recv(u.outcome()), u));
        let due = (restarts.iter().enumerate())
            .filter_map(|(i, r)| Some((i, r.as_ref()?)))
            .filter(|(i, r)| {
                !matches!(r.stage, Stage::Waiting) || !self.needs_restarting(*i, restarts)
            })
            .filter_map(|(_, r)| r.due())
            .min();
        let due = due.unwrap_or_else(|| later(Instant::now(), Duration::MAX));
        let Ok(oper) = select.select_deadline(due) else {
            return Event::Due;
        };
        match oper.index() {
            i if i == calls => match oper.recv(&self.restart_calls.rx) {
                Ok((index, generation, outcome)) => Event::Call(index, generation, outcome),
                // Unreachable: the run holds a sender.
                Err(_) => Event::Due,
            },
            i if i == signals => Event::Signal(oper.recv(&self.signals).ok()),
            i if i == requests => Event::Request(oper.recv(&self.runner.requests).ok()),
            i if Some(i) == events => match health {
                Some(h) => Event::Health(oper.recv(h).ok()),
                None => Event::Due,
            },
            i if i == hangups => match oper.recv(&self.hangups) {
                Ok(()) => Event::Hangup,
                // Unreachable: the route holds a sender while the run holds it.
                Err(_) => Event::Due,
            },
            #[cfg(target_os = "linux")]
            i if upgrade.is_some_and(|(u, _)| u == i) => match upgrade {
                Some((_, u)) => Event::Upgraded(oper.recv(u.outcome()).ok()),
                None => Event::Due,
            },
            _ => Event::Due,
        }
    }

    /// A request of the run phase: the cause that ends it, if it does.
    fn on_request(&mut self, request: Request, restarts: &mut Restarts) -> Option<ShutdownCause> {
        match request {
            Request::Shutdown => Some(ShutdownCause::Requested),
            Request::Fatal(e) => Some(self.fatal(e)),
            Request::Upgrade => {
                self.upgrade_asked("RunHandle::upgrade");
                None
            }
            Request::Failed {
                index,
                generation,
                error,
            } => match restarts.get_mut(index) {
                Some(Some(restart)) => {
                    // The instance now starting failed: its start is cancelled, and fails.
                    if let Stage::Starting { cancel, failed, .. } = &mut restart.stage {
                        if generation == restart.generation && failed.is_none() {
                            cancel.stop();
                            *failed = Some(error);
                        }
                    }
                    // Else the instance that is being replaced, again: nothing more.
                    None
                }
                Some(None) => self.instance_ended(index, generation, Exit::Failed(error), restarts),
                None => None,
            },
            Request::Finished { index, generation } => match restarts.get_mut(index) {
                Some(None) => self.instance_ended(index, generation, Exit::Finished, restarts),
                Some(Some(restart)) => {
                    // The instance now starting finished already: decided once its start
                    // returns.
                    if let Stage::Starting { finished, .. } = &mut restart.stage {
                        if generation == restart.generation {
                            *finished = true;
                        }
                    }
                    None
                }
                None => None,
            },
        }
    }

    /// Instance `generation` of service `index` ended as `exit`: restarts it, or not, as the
    /// supervisor decides; the cause that ends the run phase, if it does.
    fn instance_ended(
        &mut self,
        index: usize,
        generation: u64,
        exit: Exit,
        restarts: &mut Restarts,
    ) -> Option<ShutdownCause> {
        let now = Instant::now();
        let name = self.reports[index].name.clone();
        let said = exit.to_string();
        match self.supervisor.ended(index, generation, exit, now) {
            Decision::Stale => {
                relay::debug!("{name}: a report of an instance replaced since: {said}");
                None
            }
            Decision::Stays => {
                relay::info!("{name}: finished; it is restarted only when it fails");
                None
            }
            Decision::Fatal(e) => Some(self.fatal(e)),
            Decision::Exhausted(e) => {
                relay::error!("{e}");
                self.run_errors.push(e);
                Some(ShutdownCause::RestartBudgetSpent)
            }
            Decision::Restart {
                attempt,
                delay,
                generation,
            } => {
                self.table.count_restart(index);
                let n = self.table.restarts(index);
                relay::warn!(
                    "{name}: restarting in {delay:.1?} (attempt {attempt}, restart {n} of the \
                     run): {said}"
                );
                self.notes
                    .status(format!("running; restarting {name} (attempt {attempt})"));
                let at = later(now, delay);
                let mut group = vec![(index, generation, attempt, at)];
                if self.supervisor.options(index).is_some_and(|o| o.dependants) {
                    group.extend(self.restart_dependants(index, now, restarts));
                }
                for (i, generation, attempt, at) in group {
                    // This restart closes the instance: the shutdown does not any more.
                    let up = self.started.iter().position(|&k| k == i);
                    let stage = match up.map(|k| self.started.remove(k)) {
                        Some(_) => Stage::Queued,
                        None => Stage::Waiting,
                    };
                    let shown = match stage {
                        Stage::Queued => RestartStage::Closing,
                        _ => RestartStage::Waiting,
                    };
                    self.table.restarting(i, attempt, shown, at);
                    restarts[i] = Some(Restart {
                        attempt,
                        generation,
                        at,
                        stage,
                    });
                }
                self.begin_closes(restarts);
                None
            }
        }
    }

    /// Service `index` restarts with its dependants (rest_for_one): every restartable service
    /// that needs it, directly or not, is up and not restarting already, restarts along (its
    /// restart, without a backoff, begins now). Returns each one's index, generation, attempt and
    /// when its start may begin.
    fn restart_dependants(
        &mut self,
        index: usize,
        now: Instant,
        restarts: &Restarts,
    ) -> Vec<(usize, u64, u32, Instant)> {
        let name = self.reports[index].name.clone();
        let mut along = Vec::new();
        for d in self.graph.dependants(index) {
            let up = self.started.contains(&d) && restarts[d].is_none();
            if !up || !self.supervisor.is_restartable(d) {
                continue;
            }
            let dname = self.reports[d].name.clone();
            let cause = Error::msg(format!("restarted with {name}")).in_service(&dname, Phase::Run);
            let Some(generation) = self.supervisor.restart_along(d, cause) else {
                continue;
            };
            self.table.count_restart(d);
            relay::warn!("{dname}: restarting with {name}, which it needs");
            along.push((d, generation, self.supervisor.attempt(d), now));
        }
        along
    }

    /// Begins the close of each queued instance whose restarting dependants have all closed
    /// (dependants first, as in a shutdown).
    fn begin_closes(&mut self, restarts: &mut Restarts) {
        for i in 0..restarts.len() {
            if !matches!(restarts[i].as_ref().map(|r| &r.stage), Some(Stage::Queued)) {
                continue;
            }
            let closing = |d: &usize| {
                let stage = restarts.get(*d).and_then(Option::as_ref).map(|r| &r.stage);
                matches!(stage, Some(Stage::Queued | Stage::Closing { .. }))
            };
            if self.graph.dependants(i).iter().any(closing) {
                continue;
            }
            let Some(restart) = restarts[i].as_ref() else {
                continue;
            };
            let (generation, attempt, at) = (restart.generation, restart.attempt, restart.at);
            let stage = self.close_failed_instance(i, generation);
            let shown = match stage {
                Stage::Closing { .. } => RestartStage::Closing,
                _ => RestartStage::Waiting,
            };
            self.table.restarting(i, attempt, shown, at);
            if let Some(restart) = restarts[i].as_mut() {
                restart.stage = stage;
            }
        }
    }

    /// A change of a check's status: a service restarted on failed health polls whose health
    /// now fails (after its threshold of polls in a row) is restarted.
    fn on_health(&mut self, event: &HealthEvent, restarts: &mut Restarts) -> Option<ShutdownCause> {
        if event.probe() != Probe::Health || event.new_status() != Status::Failing {
            return None;
        }
        let index = self.reports.iter().position(|r| r.name == event.check())?;
        let polls = self.supervisor.options(index)?.unhealthy_polls?;
        if restarts.get(index)?.is_some() || !self.started.contains(&index) {
            return None;
        }
        // Sent before the fresh instance was ready: about the one it replaced.
        if self.ready_again_at[index].is_some_and(|ready| event.at() < ready) {
            return None;
        }
        let reason = (event.reason()).map_or_else(|| "failing".to_owned(), ToString::to_string);
        let e = Error::msg(format!(
            "its health failed {polls} poll(s) in a row: {reason}"
        ))
        .in_service(&self.reports[index].name, Phase::Health);
        let generation = self.supervisor.generation(index);
        self.instance_ended(index, generation, Exit::Failed(e), restarts)
    }
}

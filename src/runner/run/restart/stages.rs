//! The stages of a restart, each a call on the run's pool or a timer: the failed instance's
//! close (abandoned past its close timeout), the backoff, the fresh instance's build and
//! start (abandoned past its start timeout and the grace); and, once a shutdown has begun, the
//! end of the restarts in progress.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::error::{Error, Phase, Result};
use crate::pool::Call;
use crate::relay;
use crate::service::{close_guarded, start_until_ready, StartOutcome};
use crate::state::State;
use crate::stop::{StartContext, StopSignal};
use crate::supervise::Exit;
use crate::thread::later;

use super::super::super::table::RestartStage;
use super::super::super::{Factory, ShutdownCause, START_GRACE};
use super::super::Run;
use super::{Built, Outcome, Restart, Restarts, Stage};

/// Builds an instance with `factory` and starts it until it is ready, on a thread of the pool.
fn build_and_start(factory: Option<Factory>, name: &str, ctx: &StartContext) -> Built {
    let failed = |e: Error, misnamed| Built {
        instance: None,
        outcome: StartOutcome {
            started: false,
            result: Err(e),
        },
        misnamed,
    };
    let Some(factory) = factory else {
        return failed(
            Error::msg("it has no factory").in_service(name, Phase::Start),
            None,
        );
    };
    let instance = match catch_unwind(AssertUnwindSafe(|| factory())) {
        Ok(instance) => instance,
        Err(panic) => return failed(Error::panicked(name, Phase::Start, &*panic), None),
    };
    if instance.name() != name {
        let other = instance.name().to_owned();
        let e = Error::invalid_input(
            name,
            format!(
                "its factory built an instance named {other:?}: every instance of a \
                 restartable service must bear the name of the first"
            ),
        );
        return failed(e, Some(other));
    }
    let outcome = start_until_ready(&*instance, ctx);
    Built {
        instance: Some(instance),
        outcome,
        misnamed: None,
    }
}

impl Run {
    /// Begins closing service `index`'s failed instance, within its close timeout.
    pub(super) fn close_failed_instance(&mut self, index: usize, generation: u64) -> Stage {
        let service = self.runner.entries[index].service.clone();
        let name = self.reports[index].name.clone();
        let timeout = self.close_timeout(index);
        self.mark(index, State::Closing, None);
        relay::info!("{name}: closing the failed instance");
        let began = Instant::now();
        let results = self.restart_calls.tx.clone();
        let call = (self.calls).call(format!("{} {name}", Phase::Close), move || {
            let value = catch_unwind(AssertUnwindSafe(|| close_guarded(&*service))).ok();
            drop(service);
            let _ = results.send((index, generation, Outcome::Closed(value)));
        });
        match call {
            Ok(call) => Stage::Closing {
                call,
                began,
                until: later(began, timeout),
                timeout,
            },
            Err(e) => {
                // Nothing can run it: the instance is left as it is, the restart goes on.
                let e = Error::from(e).in_service(&name, Phase::Close);
                relay::error!("{e}: the failed instance is not closed");
                self.mark(index, State::CloseFailed, None);
                Stage::Waiting
            }
        }
    }

    /// Gives up on a call of a restart: one still running is named among the abandoned
    /// threads; one no thread had taken is dropped (it never runs).
    fn give_up<T>(&mut self, call: Call<T>) {
        let label = call.label().to_owned();
        match call.abandon() {
            Some(running) => self.abandoned.push(running),
            None => relay::warn!("{label:?} never began: no thread was free to run it"),
        }
    }

    /// Records how the close of service `index`'s failed instance ended (`None`: without a
    /// value); its backoff runs on.
    pub(super) fn failed_instance_closed(
        &mut self,
        index: usize,
        value: Option<Result<()>>,
        restarts: &mut Restarts,
    ) {
        let Some(restart) = restarts.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let Stage::Closing { began, .. } = &restart.stage else {
            return;
        };
        let took = began.elapsed();
        let name = &self.reports[index].name;
        let state = match value {
            Some(Ok(())) => {
                relay::info!("{name}: the failed instance closed in {took:?}");
                State::Closed
            }
            Some(Err(e)) => {
                relay::warn!("{name}: the failed instance's close failed: {e}");
                State::CloseFailed
            }
            None => {
                relay::warn!("{name}: the failed instance's close ended without a result");
                State::CloseFailed
            }
        };
        restart.stage = Stage::Waiting;
        // Closed as far as the report goes, unless a fresh instance starts (and closes) later.
        self.reports[index].closed = true;
        self.reports[index].closed_in = Some(took);
        let (attempt, at) = (restart.attempt, restart.at);
        self.mark(index, state, None);
        self.table
            .restarting(index, attempt, RestartStage::Waiting, at);
        self.begin_closes(restarts);
    }

    /// The timers that passed: a close abandoned, a start begun, a start abandoned; the cause
    /// that ends the run phase, if one does.
    pub(super) fn on_due(&mut self, restarts: &mut Restarts) -> Option<ShutdownCause> {
        let now = Instant::now();
        for index in 0..restarts.len() {
            let due = |r: &mut Restart| r.due().is_some_and(|d| d <= now);
            let Some(restart) = restarts[index].take_if(due) else {
                continue;
            };
            let Restart {
                attempt,
                generation,
                at,
                stage,
            } = restart;
            let name = self.reports[index].name.clone();
            let stage = match stage {
                // Not due: it waits for the closes of the services that need it.
                Stage::Queued => Stage::Queued,
                Stage::Closing {
                    call,
                    began,
                    timeout,
                    ..
                } if call.has_ended() => {
                    // Its value is on its way: taken at the next wait.
                    restarts[index] = Some(Restart {
                        attempt,
                        generation,
                        at,
                        stage: Stage::Closing {
                            call,
                            began,
                            until: later(now, Duration::from_millis(1)),
                            timeout,
                        },
                    });
                    continue;
                }
                Stage::Closing { call, timeout, .. } => {
                    let note = format!("thread {:?} is left running", call.label());
                    let e = Error::timed_out_noting(&name, Phase::Close, timeout, note);
                    relay::error!("{e}: abandoning the failed instance's close");
                    self.give_up(call);
                    self.mark(index, State::CloseFailed, None);
                    self.table
                        .restarting(index, attempt, RestartStage::Waiting, at);
                    restarts[index] = Some(Restart {
                        attempt,
                        generation,
                        at,
                        stage: Stage::Waiting,
                    });
                    self.begin_closes(restarts);
                    continue;
                }
                Stage::Waiting if self.needs_restarting(index, restarts) => Stage::Waiting,
                Stage::Waiting => match self.start_fresh_instance(index, generation, attempt) {
                    Ok(stage) => {
                        self.table
                            .restarting(index, attempt, RestartStage::Starting, at);
                        stage
                    }
                    Err(e) => {
                        let exit = Exit::Failed(e);
                        if let Some(cause) = self.instance_ended(index, generation, exit, restarts)
                        {
                            return Some(cause);
                        }
                        continue;
                    }
                },
                Stage::Starting {
                    call,
                    cancel,
                    began,
                    failed,
                    finished,
                    ..
                } if call.has_ended() => {
                    restarts[index] = Some(Restart {
                        attempt,
                        generation,
                        at,
                        stage: Stage::Starting {
                            call,
                            cancel,
                            began,
                            give_up_at: later(now, START_GRACE),
                            failed,
                            finished,
                        },
                    });
                    continue;
                }
                Stage::Starting { call, cancel, .. } => {
                    cancel.stop();
                    self.give_up(call);
                    let timeout = self.start_timeout(index);
                    let e = Error::timed_out_noting(
                        &name,
                        Phase::Start,
                        timeout,
                        format!("abandoned {START_GRACE:?} later: its start did not return"),
                    );
                    self.mark(index, State::StartFailed, None);
                    if let Some(cause) =
                        self.instance_ended(index, generation, Exit::Failed(e), restarts)
                    {
                        return Some(cause);
                    }
                    continue;
                }
            };
            restarts[index] = Some(Restart {
                attempt,
                generation,
                at,
                stage,
            });
        }
        None
    }

    /// Whether a service that service `index` needs is restarting: its fresh instance then
    /// starts, once its backoff is over, when they are all up again, as in the start phase.
    pub(super) fn needs_restarting(&self, index: usize, restarts: &Restarts) -> bool {
        // Through services that are not restarting too (a service that cannot restart, up).
        let mut seen = vec![false; restarts.len()];
        let mut next: Vec<usize> = self.graph.needs(index).to_vec();
        while let Some(n) = next.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            if restarts.get(n).is_some_and(Option::is_some) {
                return true;
            }
            next.extend_from_slice(self.graph.needs(n));
        }
        false
    }

    /// Service `index`'s start timeout.
    fn start_timeout(&self, index: usize) -> Duration {
        let options = &self.runner.entries[index].options;
        options.start_timeout.unwrap_or(self.runner.start_timeout)
    }

    /// Builds and starts instance `generation` of service `index`, a call `start NAME` on the
    /// pool, within its start timeout (the factory's call included).
    fn start_fresh_instance(
        &mut self,
        index: usize,
        generation: u64,
        attempt: u32,
    ) -> Result<Stage> {
        let factory = self.runner.entries[index].factory.clone();
        let name = self.reports[index].name.clone();
        let timeout = self.start_timeout(index);
        relay::info!("{name}: starting a fresh instance (attempt {attempt})");
        self.reports[index].closed = false;
        self.reports[index].closed_in = None;
        self.mark(index, State::Starting, None);
        let cancel = StopSignal::new();
        let handle = self.runner.handle.scoped(index, generation);
        let ctx = StartContext::new(cancel.clone(), Some(timeout)).with_handle(handle);
        let began = Instant::now();
        let label = format!("{} {name}", Phase::Start);
        let called = name.clone();
        let results = self.restart_calls.tx.clone();
        let call = (self.calls).call(label, move || {
            let built = catch_unwind(AssertUnwindSafe(|| build_and_start(factory, &called, &ctx)));
            drop(ctx);
            let _ = results.send((index, generation, Outcome::Built(built.ok())));
        });
        // Nothing can run it: a failed restart.
        let call = call.map_err(|e| Error::from(e).in_service(&name, Phase::Start))?;
        Ok(Stage::Starting {
            call,
            cancel,
            began,
            give_up_at: later(later(began, timeout), START_GRACE),
            failed: None,
            finished: false,
        })
    }

    /// The start of service `index`'s fresh instance returned `built` (`None`: without a
    /// value): it is ready, or its restart failed; the cause that ends the run phase, if one
    /// does.
    pub(super) fn restart_started(
        &mut self,
        index: usize,
        built: Option<Built>,
        restarts: &mut Restarts,
    ) -> Option<ShutdownCause> {
        let restart = restarts.get_mut(index)?.take()?;
        let Restart {
            attempt,
            generation,
            stage:
                Stage::Starting {
                    began,
                    failed,
                    finished,
                    ..
                },
            ..
        } = restart
        else {
            restarts[index] = Some(restart);
            return None;
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(began);
        let name = self.reports[index].name.clone();
        let error = match built {
            Some(Built {
                misnamed: Some(_),
                outcome,
                ..
            }) => {
                // Restarting it again would build the same: the program shuts down.
                self.table.restarted(index);
                self.mark(index, State::StartFailed, None);
                let e = outcome.result.err()?;
                return Some(self.fatal(e));
            }
            Some(Built {
                instance: Some(instance),
                outcome,
                ..
            }) => {
                if outcome.started {
                    // Up, ready or not: the shutdown (or the next restart) closes it.
                    self.runner.entries[index].service = instance.clone();
                    self.instances[index].set(instance);
                    self.started.push(index);
                }
                match (outcome.result, failed) {
                    (Ok(()), None) => {
                        self.supervisor.ready(index, generation, now);
                        self.table.started_in(index, took);
                        self.mark(index, State::Started, None);
                        self.table.restarted(index);
                        if let Some(health) = &self.health {
                            self.ready_again_at[index] = Some(std::time::SystemTime::now());
                            health.restarted(index);
                        }
                        relay::info!("{name}: restarted, ready in {took:?} (attempt {attempt})");
                        if finished {
                            // Its run ended while it started: as if it had ended now.
                            return self.instance_ended(
                                index,
                                generation,
                                Exit::Finished,
                                restarts,
                            );
                        }
                        if restarts.iter().all(Option::is_none) {
                            self.notes.status("running".to_owned());
                        }
                        return None;
                    }
                    // A failure it reported while starting comes first: the start's own error
                    // is then its cancellation.
                    (_, Some(e)) | (Err(e), None) => e,
                }
            }
            Some(Built { outcome, .. }) => outcome.result.err().unwrap_or_else(|| {
                Error::msg("its factory built no instance").in_service(&name, Phase::Start)
            }),
            None => Error::msg("its start's thread ended without a result")
                .in_service(&name, Phase::Start),
        };
        relay::warn!("{name}: its restart failed: {error}");
        if !self.started.contains(&index) {
            self.mark(index, State::StartFailed, None);
        }
        self.instance_ended(index, generation, Exit::Failed(error), restarts)
    }

    /// The shutdown has begun: no restart begins any more. A backoff in progress ends (nothing
    /// of that service is up); a close of a failed instance is waited for within its bound, a
    /// start in progress is cancelled and waited for as in the start phase (at most its close
    /// timeout), each at most half the shutdown timeout from now; a fresh instance that started
    /// is closed by the shutdown with the others.
    pub(super) fn end_restarts(&mut self, restarts: Restarts) {
        let now = Instant::now();
        let timeout = self.runner.shutdown_timeout;
        let most = later(now, timeout / 2);
        // The calls in progress, each with how long it is waited for.
        let mut waiting: Vec<(usize, Restart, Instant)> = Vec::new();
        for (index, restart) in restarts.into_iter().enumerate() {
            let Some(restart) = restart else {
                continue;
            };
            self.deadline.get_or_insert_with(|| later(now, timeout));
            self.table.restarted(index);
            let until = match &restart.stage {
                Stage::Queued => {
                    // Still up: the shutdown closes it with the others.
                    self.started.push(index);
                    continue;
                }
                Stage::Waiting => {
                    let name = &self.reports[index].name;
                    relay::info!("{name}: not restarted: shutting down");
                    continue;
                }
                Stage::Closing { until, .. } => (*until).min(most),
                Stage::Starting {
                    cancel, give_up_at, ..
                } => {
                    cancel.stop();
                    let close = later(now, self.close_timeout(index));
                    close.min(*give_up_at).min(most)
                }
            };
            waiting.push((index, restart, until));
        }
        while let Some(first) = waiting.iter().map(|w| w.2).min() {
            match self.restart_calls.rx.recv_deadline(first) {
                Ok((index, generation, outcome)) => {
                    let k = waiting
                        .iter()
                        .position(|(i, r, _)| *i == index && r.generation == generation);
                    if let Some(k) = k {
                        waiting.swap_remove(k);
                        self.ended_in_shutdown(index, outcome);
                    } else {
                        // A call given up on earlier: what it built is closed on the pool.
                        self.discard(index, outcome);
                    }
                }
                Err(_) => {
                    let now = Instant::now();
                    let (due, rest) = waiting.into_iter().partition(|w| w.2 <= now);
                    waiting = rest;
                    for (index, restart, _) in due {
                        self.given_up_in_shutdown(index, restart.stage);
                    }
                }
            }
        }
    }

    /// Records how a restart's call ended once the shutdown had begun: a fresh instance that
    /// started is closed by the shutdown with the others.
    fn ended_in_shutdown(&mut self, index: usize, outcome: Outcome) {
        let name = self.reports[index].name.clone();
        match outcome {
            Outcome::Closed(value) => {
                self.reports[index].closed = value.is_some();
                let ok = matches!(value, Some(Ok(())));
                let state = if ok {
                    State::Closed
                } else {
                    State::CloseFailed
                };
                self.mark(index, state, None);
            }
            Outcome::Built(Some(Built {
                instance: Some(instance),
                outcome: StartOutcome { started: true, .. },
                ..
            })) => {
                self.runner.entries[index].service = instance.clone();
                self.instances[index].set(instance);
                self.started.push(index);
                self.mark(index, State::Started, None);
            }
            other @ Outcome::Built(_) => {
                relay::info!("{name}: its restart was interrupted by the shutdown");
                // An instance built but not started is dropped on the pool too.
                self.discard(index, other);
                self.mark(index, State::Closed, None);
            }
        }
    }

    /// A restart's call that did not return in time once the shutdown had begun: abandoned.
    fn given_up_in_shutdown(&mut self, index: usize, stage: Stage) {
        let name = self.reports[index].name.clone();
        match stage {
            Stage::Closing { call, .. } => {
                let e = Error::timed_out(&name, Phase::Close, self.close_timeout(index));
                relay::error!("{e}: abandoning the failed instance's close");
                self.give_up(call);
                self.shutdown_errors.push(e);
                self.mark(index, State::CloseFailed, None);
            }
            Stage::Starting { call, .. } => {
                relay::warn!(
                    "{name}: its restart was cancelled and did not return in time: abandoned"
                );
                self.give_up(call);
                self.mark(index, State::StartFailed, None);
            }
            Stage::Waiting | Stage::Queued => {}
        }
    }
}

//! Test services that record "NAME started", "NAME closed", "NAME start failure", ... in the
//! order they happen, like the seed's example services.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lifecycle::{HealthReporter, Result, Service, StartContext, StateMachine};
use parking_lot::Mutex;

/// An ordered log of lifecycle events, shared by the services of one test.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<String>>>);

impl Events {
    pub fn push(&self, event: String) {
        self.0.lock().push(event);
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// How a [`Recorder`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Healthy,
    CloseFailure,
    WontStart,
    PanicOnStart,
    PanicOnClose,
}

/// A service that records its start and close in [`Events`] and counts its start and close
/// bodies. Its errors name the phase, not the service: whoever calls it (a `MultiStart`, the
/// runner) names it.
pub struct Recorder {
    name: String,
    behavior: Behavior,
    events: Events,
    sm: StateMachine,
    pub starts: AtomicUsize,
    pub closes: AtomicUsize,
}

impl Recorder {
    pub fn new(name: &str, behavior: Behavior, events: &Events) -> Arc<Recorder> {
        Arc::new(Recorder {
            name: name.to_owned(),
            behavior,
            events: events.clone(),
            sm: StateMachine::new(),
            starts: AtomicUsize::new(0),
            closes: AtomicUsize::new(0),
        })
    }

    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    pub fn closes(&self) -> usize {
        self.closes.load(Ordering::SeqCst)
    }
}

impl HealthReporter for Recorder {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Recorder {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            self.starts.fetch_add(1, Ordering::SeqCst);
            match self.behavior {
                Behavior::WontStart => {
                    self.events.push(format!("{} start failure", self.name));
                    Err("start failure".into())
                }
                Behavior::PanicOnStart => {
                    self.events.push(format!("{} start panic", self.name));
                    panic!("{} panicked starting", self.name)
                }
                _ => {
                    self.events.push(format!("{} started", self.name));
                    Ok(())
                }
            }
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.closes.fetch_add(1, Ordering::SeqCst);
            match self.behavior {
                Behavior::CloseFailure => {
                    self.events.push(format!("{} close failure", self.name));
                    Err("close failure".into())
                }
                Behavior::PanicOnClose => {
                    self.events.push(format!("{} close panic", self.name));
                    panic!("{} panicked closing", self.name)
                }
                _ => {
                    self.events.push(format!("{} closed", self.name));
                    Ok(())
                }
            }
        })
    }
}

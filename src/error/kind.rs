//! [`Phase`] and [`ErrorKind`]: where an [`Error`](super::Error) happened and what it is.

use std::fmt;

#[cfg(doc)]
use super::Error;

/// The phase of a service's life in which an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Starting the service ([`Service::start`](crate::Service::start)).
    Start,
    /// Closing the service ([`Service::close`](crate::Service::close)).
    Close,
    /// Asking whether the service is ready ([`HealthReporter::ready`](crate::HealthReporter::ready)).
    Ready,
    /// Asking for the service's health
    /// ([`HealthReporter::health_report`](crate::HealthReporter::health_report)).
    Health,
    /// While the service runs, between a successful start and close.
    Run,
    /// A cleanup function the runner runs after the services have closed.
    Cleanup,
    /// The program's shutdown as a whole (for example its overall deadline).
    Shutdown,
}

impl Phase {
    /// The phase's name in lower case, as used in messages: `"start"`, `"close"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Close => "close",
            Phase::Ready => "ready",
            Phase::Health => "health",
            Phase::Run => "run",
            Phase::Cleanup => "cleanup",
            Phase::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of error an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The service's own code returned an error; [`Error::find`] reaches the cause's own type.
    Failed,
    /// The service's code panicked; the error carries the panic message.
    Panicked,
    /// A deadline passed before the phase finished.
    TimedOut,
    /// The phase was cancelled (a shutdown was requested).
    Cancelled,
    /// `start` was called on a service that has already been started once.
    AlreadyStarted,
    /// `close` was called on a service that is already closing or closed.
    AlreadyClosed,
    /// The service is not started: it cannot be closed, and it is neither ready nor healthy.
    NotStarted,
    /// The service is in a state from which the operation cannot proceed (for example closing a
    /// service whose start failed, or a [`StateMachine`](crate::StateMachine) method called from
    /// inside that machine's own start or close).
    InvalidState,
    /// Several errors joined into one; [`Error::errors`] gives every one of them.
    Joined,
    /// A name is already registered (for example a second health check with the same name).
    DuplicateName,
    /// No component of that name is registered.
    NotRegistered,
    /// An argument was rejected: an empty name, a metric name that Prometheus would not accept,
    /// a timeout out of range.
    InvalidInput,
}

//! Placeholder; crate docs written below.
mod checker;
mod error;
mod error_buffer;
mod multi;
mod service;
mod state;
mod stop;

pub use crate::checker::{
    CheckOptions, CheckStatus, HealthChecker, HealthCheckerBuilder, HealthEvent, Probe,
    ProbeStatus, Reporter, Snapshot, Status, Verdict, DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_EVENT_CAPACITY, DEFAULT_INTERVAL, DEFAULT_TIMEOUT,
};
pub use crate::error::{BoxError, Error, ErrorKind, Phase, Result};
pub use crate::error_buffer::{ErrorBuffer, DEFAULT_ERROR_BUFFER_CAP};
pub use crate::multi::{close_all, MultiStart};
pub use crate::service::{HealthReport, HealthReporter, Service};
pub use crate::state::{State, StateMachine};
pub use crate::stop::{StartContext, StopSignal};

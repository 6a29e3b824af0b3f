//! Run the long-lived parts of a synchronous program: start them in order, roll back cleanly
//! when one fails, report their health, and close them gracefully.
//!
//! `lifecycle` is thread-based and has no async runtime. Services start threads in `start` and
//! join them in `close`; every wait in the crate has a bound.
//!
//! # The parts and how they fit
//!
//! - [`Service`] is what you implement: a blocking [`start`](Service::start) that honours a
//!   [`StartContext`] (cancelled on shutdown or at its deadline), a blocking
//!   [`close`](Service::close), and health through its supertrait [`HealthReporter`]
//!   (`name`, `ready`, and a [`HealthReport`] of itself and its parts). Services are shared as
//!   `Arc<dyn Service>`.
//! - [`StateMachine`] is what a service embeds so that its start runs once, its close runs once,
//!   and guarded work runs only while it is started. Its [`ErrorBuffer`] keeps the service's
//!   recent non-fatal errors for its health report.
//! - [`StopSignal`] is the cloneable, idempotent signal a service's worker thread waits on;
//!   `close` fires it and joins the thread (see its docs for the canonical service).
//! - [`MultiStart`] starts services in order; when one fails it closes the started ones in
//!   reverse and returns every error. It closes in reverse on demand and on drop.
//!   [`close_all`] closes independent services concurrently.
//! - [`Error`] is the crate's one error type: it names the service and the [`Phase`], joins
//!   several errors without losing any, and carries panics from user code as errors.
//! - [`HealthChecker`] polls every registered [`HealthReporter`] on a thread of its own, with a
//!   timeout, and serves readiness and health from a cached [`Snapshot`] that a slow or hung
//!   check can never block; services can also push changes, and subscribers get events.
//! - [`HealthEndpoint`] serves that cache over HTTP for Kubernetes probes, load balancers and
//!   people (`/livez`, `/readyz`, `/healthz`), on a hardened connection front of its own.
//! - [`metrics::Metrics`] (feature `metrics`, on by default) serves Prometheus metrics at
//!   `/metrics` on that endpoint: the lifecycle's own (service states, durations, check
//!   status), the program's, and producers evaluated at scrape time within a bound.
//! - [`Runner`] is the main job: it handles SIGINT and SIGTERM, starts the services in order
//!   (each ready before the next starts), serves health, waits, then drains and closes in
//!   reverse within deadlines, and returns a [`RunReport`] that `main` can return as its exit
//!   code.
//!
//! `ARCHITECTURE.md` in the repository maps the modules and the flow of a run.
//!
//! # Example
//!
//! A pool that two workers depend on, started in dependency order and closed in reverse:
//!
//! ```
//! use std::sync::Arc;
//! use lifecycle::{HealthReporter, MultiStart, Result, Service, StartContext, StateMachine};
//!
//! struct Component { name: &'static str, sm: StateMachine }
//!
//! impl HealthReporter for Component {
//!     fn name(&self) -> &str { self.name }
//!     fn ready(&self) -> Result<()> { self.sm.ready() }
//! }
//!
//! impl Service for Component {
//!     fn start(&self, ctx: &StartContext) -> Result<()> {
//!         ctx.check(self.name)?; // give up at once if a shutdown is already under way
//!         self.sm.start_once(self.name, || Ok(()))
//!     }
//!     fn close(&self) -> Result<()> {
//!         self.sm.stop_once(self.name, || Ok(()))
//!     }
//! }
//!
//! let component = |name| Arc::new(Component { name, sm: StateMachine::new() });
//! let (pool, ingest, api) = (component("pool"), component("ingest"), component("api"));
//!
//! let mut services = MultiStart::new();
//! services.start(
//!     &StartContext::background(),
//!     [pool.clone() as Arc<dyn Service>, ingest.clone(), api.clone()],
//! )?;
//! assert!(pool.ready().is_ok() && api.ready().is_ok());
//!
//! services.close()?; // api, then ingest, then pool
//! assert!(pool.ready().is_err());
//! # Ok::<(), lifecycle::Error>(())
//! ```
//!
//! # Panics
//!
//! A panic inside a service's `start` or `close` called through this crate is caught and becomes
//! an [`Error`] of kind [`ErrorKind::Panicked`] naming the service: it never aborts a rollback
//! or a shutdown, and never leaves a [`StateMachine`] stuck or a lock poisoned. (With
//! `panic = "abort"` nothing can be caught.)

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

mod checker;
mod endpoint;
mod error;
mod error_buffer;
pub mod health;
mod http;
#[cfg(feature = "metrics")]
pub mod metrics;
mod multi;
mod runner;
mod service;
mod state;
mod stop;
pub mod testing;
mod thread;
mod worker;

pub use crate::checker::HealthChecker;
pub use crate::endpoint::HealthEndpoint;
pub use crate::error::{BoxError, Error, ErrorKind, Phase, Result};
pub use crate::error_buffer::ErrorBuffer;
pub use crate::multi::{close_all, MultiStart};
pub use crate::runner::{
    RunHandle, RunPhase, RunReport, Runner, ServiceOptions, ServiceReport, ShutdownCause,
};
pub use crate::service::{HealthReport, HealthReporter, Service};
pub use crate::state::{State, StateMachine};
pub use crate::stop::{StartContext, StopSignal};
pub use crate::worker::Worker;

/// The README's examples, compiled and run as doc tests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

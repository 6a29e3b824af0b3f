//! Run the long-lived parts of a synchronous program: start them in order, roll back cleanly
//! when one fails, report their health, and close them gracefully on a signal.
//!
//! `lifecycle` is thread-based and has no async runtime. A service's threads are named, owned
//! and joined; the runner bounds every call into a service with a timeout.
//!
//! # Hello, services
//!
//! A worker from a closure, run until SIGINT or SIGTERM (here, until the handle asks):
//!
//! ```
//! use std::time::Duration;
//! use lifecycle::{Runner, Worker};
//!
//! let heartbeat = Worker::new("heartbeat", |stop| {
//!     while !stop.wait_timeout(Duration::from_millis(10)) {
//!         // beat
//!     }
//!     Ok(())
//! });
//! let runner = Runner::new().handle_signals(false).service(heartbeat);
//! let handle = runner.handle();
//! let report = std::thread::scope(|s| {
//!     s.spawn(|| {
//!         handle.wait_running(Duration::from_secs(10));
//!         handle.shutdown(); // a signal does this in a real program
//!     });
//!     runner.run() // starts, waits, closes; `main` can return it as its exit code
//! });
//! assert!(report.is_success(), "{report:?}");
//! ```
//!
//! # Anatomy of the crate
//!
//! **Services.** A [`Service`] is started once and closed once, and is a [`HealthReporter`]
//! (name, readiness, a [`HealthReport`] of itself and its parts). Most services need no trait
//! impl: a [`Worker`] runs a closure on a thread of its own until its [`StopSignal`] fires, or
//! sets up first (binds, connects) and then serves. A hand-written service embeds a
//! [`StateMachine`] (whose [`State`] says where it is) so that its start and close run once,
//! honours the [`StartContext`] its start gets, and keeps recent non-fatal errors in an
//! [`ErrorBuffer`] for its health.
//!
//! **Running them.** The [`Runner`] owns `main()`: it starts each service once those it needs
//! are ready (the ones added before it, unless its [`ServiceOptions`] say otherwise;
//! independent ones at once), serves health, waits for a signal or a [`RunHandle`] request
//! (restarting meanwhile, with backoff and within a budget, the services it was given as
//! [restartable](Runner::restartable) factories whose instances fail, and, on SIGHUP,
//! [upgrading the program in place](Runner#upgrades) without refusing a connection), then
//! closes each after
//! those that need it, within deadlines, and returns a [`RunReport`] (a
//! [`ShutdownCause`], errors per [`RunPhase`], a [`ServiceReport`] per service, the critical
//! path of the start and of the shutdown as [`PathStep`]s). [`MultiStart`] starts services
//! in order with rollback on its own (in a parent service, say); [`close_all`] closes
//! independent services at once.
//!
//! **Health.** The [`HealthChecker`] polls every reporter on threads of its own and answers
//! from a cache that a hung check cannot block; the [`HealthEndpoint`] serves it to probes
//! (`/livez`, `/readyz`, `/healthz`) on a hardened HTTP front. The [`health`] module holds
//! their options and views (snapshots, checks, verdicts, events), checks from closures, and
//! the routes for a program that already runs tiny_http (feature `tiny_http`).
//!
//! **Errors.** One [`Error`] type (a [`Result`] alias; [`BoxError`] for closures) names the
//! service and the [`Phase`], says its [`ErrorKind`], and joins several errors without losing
//! any cause or kind. Panics in user code become errors.
//!
//! **Metrics** (feature `metrics`, on by default): the [`metrics`] module serves Prometheus
//! metrics at `/metrics` on the endpoint.
//!
//! **systemd.** The [`systemd`] module tells systemd how the program is doing (`sd_notify`:
//! ready, shutting down, status, the watchdog) and hands over the listening sockets it was
//! started with (socket activation), by name; the [`HealthEndpoint`] takes the one named
//! `health`. An upgrade hands the same sockets to the new process in the same format, and
//! [`systemd::upgraded_from`] tells a process that an upgrade started it.
//!
//! **Tests.** The [`testing`] module's harness starts services for a test, waits until they
//! are ready, fails the test if one turns unhealthy, and closes them at the end.
//!
//! `ARCHITECTURE.md` in the repository maps the modules and the flow of a run.
//!
//! # Vocabulary
//!
//! A service is *started* and *closed* ([`Service::close`], [`StateMachine::close_once`],
//! [`State::Closed`], close timeouts); the program *shuts down* ([`RunHandle::shutdown`],
//! [`Runner::shutdown_timeout`], [`ShutdownCause`]); a worker's thread is told to *stop* by its
//! [`StopSignal`]. A test in the repository keeps it so.
//!
//! # Features
//!
//! - `metrics` (default): [`metrics`], `/metrics`, on `prometheus-client`.
//! - `tiny_http`: [`health::TinyHttpRoutes`](crate::health), the health routes answered from
//!   the program's own tiny_http server.
//!
//! # Panics
//!
//! A panic inside a service's `start`, `close`, `ready` or `health_report` called through this
//! crate is caught and becomes an [`Error`] of kind [`ErrorKind::Panicked`] naming the service,
//! with the panic's message: it never aborts a rollback or a shutdown, and never leaves a
//! [`StateMachine`] stuck or a lock poisoned. (With `panic = "abort"` nothing can be caught.)

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
mod pool;
mod relay;
mod runner;
mod service;
mod state;
mod stop;
mod supervise;
pub mod systemd;
pub mod testing;
mod thread;
#[cfg(unix)]
mod upgrade;
mod worker;

pub use crate::checker::HealthChecker;
pub use crate::endpoint::HealthEndpoint;
pub use crate::error::{BoxError, Error, ErrorKind, Phase, Result};
pub use crate::error_buffer::ErrorBuffer;
pub use crate::multi::{close_all, MultiStart};
pub use crate::runner::{
    PathStep, RunHandle, RunPhase, RunReport, Runner, ServiceOptions, ServiceReport, ShutdownCause,
};
pub use crate::service::{HealthReport, HealthReporter, Service};
pub use crate::state::{State, StateMachine};
pub use crate::stop::{StartContext, StopSignal};
pub use crate::worker::Worker;

/// The README's examples, compiled and run as doc tests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

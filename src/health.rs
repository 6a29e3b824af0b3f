//! Health: the [`HealthChecker`](crate::HealthChecker)'s options and views, checks from
//! closures, and the endpoint's options.
//!
//! - Options: [`HealthCheckerBuilder`] (from [`HealthChecker::builder`](crate::HealthChecker::builder)),
//!   [`CheckOptions`] (per check), [`EndpointOptions`] (for the
//!   [`HealthEndpoint`](crate::HealthEndpoint)).
//! - Views: a [`Snapshot`] of every [`Check`], each with a [`ProbeStatus`] per [`Probe`] (a
//!   [`Status`]), and the [`Verdict`] of an aggregate; the [`HealthEvent`]s subscribers get.
//! - Pushing: the [`Reporter`] that registering a check returns.
//! - Checks that are not services: [`from_fn`].
#![cfg_attr(
    feature = "tiny_http",
    doc = "- Serving the health routes from the program's own tiny_http server: [`TinyHttpRoutes`]."
)]
//!
//! # Probes
//!
//! What each route of the [`HealthEndpoint`](crate::HealthEndpoint) counts, what it is for,
//! which Kubernetes probe to point at it, and what it answers under a
//! [`Runner`](crate::Runner) in each phase of a run: *start* (the services start in order, each
//! ready before the next), *run*, *drain* (a shutdown has begun and its
//! [termination delay](crate::Runner::termination_delay) passes: nothing is closed yet), and
//! *close* (the services close in reverse order; the endpoint closes after all of them, and only
//! then are connections refused). The program's own tiny_http port, with `TinyHttpRoutes`
//! (feature `tiny_http`), answers the same while its server runs.
//!
//! | route | counts | for | Kubernetes probe | start | run | drain | close |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | `/livez` | the process answers, its checker polls, and the health of each [liveness check](CheckOptions::liveness) (none by default) | restarting what a restart would fix | `livenessProbe` (and a `startupProbe`, if any) | 200 while no liveness check fails | the same | the same | the same |
//! | `/readyz` | every check's readiness, [traffic gates](CheckOptions::traffic_gate) included: the runner's own `runner` check is one, ready in the run phase only | sending traffic: load balancers, a Service's endpoints | `readinessProbe` | 503 | 200 while every check is ready | 503 | 503 |
//! | `/healthz` | every check's readiness and health, but not the traffic gates | "is anything wrong?": people, dashboards, monitoring | none (see below) | 503 | 200 while every check is ready and healthy | 200, as in the run | 503 from the first close |
//! | `/readyz/NAME` | NAME's readiness | one part, for people and tools | none | 503 until NAME is ready (`runner`: until every service is) | NAME's | NAME's (`runner`: 503) | 503 from NAME's close |
//! | `/healthz/NAME` | NAME's readiness and health; `404` for a traffic gate | one part, for people and tools | none | 503 until NAME is ready | NAME's | NAME's | 503 from NAME's close |
//!
//! - `/livez` depends on no check but the liveness checks, and those say only whether this
//!   process is wedged (a worker loop that stopped ticking, a deadlock detector), never how a
//!   dependency is: a failing dependency (a database down) must never get the process
//!   restarted, where a restart would not bring the database back and every copy restarting
//!   at once would make an outage a restart storm. A liveness check counts toward `/readyz` and
//!   `/healthz` too, as any check does; `/livez` asks its health alone (after its failure
//!   threshold), so `/livez` fails while it fails and passes again once it passes, and the
//!   [`Runner`](crate::Runner)'s systemd watchdog follows (see
//!   [`Snapshot::is_live`]). With no liveness check, `/livez` passes whenever the checker polls.
//! - No `startupProbe` is needed: `/livez` passes from the moment the endpoint listens, before
//!   any service starts, however long the starts take (a liveness check not polled yet does not
//!   fail it), so a liveness probe never kills a slow
//!   start; the runner bounds each start itself ([`ServiceOptions::start_timeout`](crate::ServiceOptions::start_timeout)).
//!   Where a platform asks for one, point it at `/livez`.
//! - `/readyz` fails from the first moment of a shutdown, through the drain, so that traffic
//!   goes elsewhere while the program still serves what reaches it.
//! - `/healthz` answers as kube-apiserver's does: it passes during the drain, since only
//!   `/readyz` counts traffic gates, so a liveness probe pointed at it (a common setup) does not
//!   kill a program that is draining. It still makes a poor liveness probe, since it fails with
//!   any dependency; and it fails once the services close (a closed service is not ready).
//! - Status `200` means passing, `503` failing; an [informational](CheckOptions::informational)
//!   check never changes the status code (a failing one makes the JSON's `status` `warn`).
//!   `?verbose` gives the Kubernetes text form and `?exclude=NAME` leaves a check out of one
//!   answer (see [`HealthEndpoint`](crate::HealthEndpoint#routes-get-and-head)).

use crate::error::Result;
use crate::service::HealthReporter;

pub use crate::checker::{
    Check, CheckOptions, HealthCheckerBuilder, HealthEvent, Probe, ProbeStatus, Reporter, Snapshot,
    Status, Verdict,
};
pub use crate::endpoint::EndpointOptions;
#[cfg(feature = "tiny_http")]
pub use crate::endpoint::TinyHttpRoutes;

/// A health check from a closure: a reporter called `name` whose readiness and health are what
/// `check` returns. For what the program depends on but does not run (a remote database, a
/// disk), registered with [`HealthChecker::register`](crate::HealthChecker::register).
///
/// The checker calls `check` on a thread of the check's own, within the check's timeout: it
/// may block briefly (a ping), never for long. It is called twice per poll, once for readiness
/// and once for health (whose default report asks readiness again).
///
/// ```
/// use std::time::Duration;
/// use lifecycle::{health, HealthChecker, Service, StartContext};
///
/// let checker = HealthChecker::new("1.0.0", "abc123");
/// checker.register(health::from_fn("disk", || {
///     let free = 10; // ask the filesystem
///     if free > 5 { Ok(()) } else { Err("disk almost full".into()) }
/// }))?;
/// checker.start(&StartContext::background())?;
/// assert!(checker.wait_for_poll(Duration::from_secs(5))?.is_healthy().is_passing());
/// checker.close()?;
/// # Ok::<(), lifecycle::Error>(())
/// ```
pub fn from_fn<F>(name: impl Into<String>, check: F) -> impl HealthReporter
where
    F: Fn() -> Result<()> + Send + Sync + 'static,
{
    FnCheck {
        name: name.into(),
        check,
    }
}

struct FnCheck<F> {
    name: String,
    check: F,
}

impl<F: Fn() -> Result<()> + Send + Sync> HealthReporter for FnCheck<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn ready(&self) -> Result<()> {
        (self.check)()
    }
}

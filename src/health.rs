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

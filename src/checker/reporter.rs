//! [`Reporter`]: the handle with which a registered service pushes its own status.

use std::fmt;
use std::sync::{Arc, Weak};

use crate::error::Result;
#[cfg(doc)]
use crate::{ErrorKind, HealthChecker};

use super::{not_registered, Probe, Shared};

/// A cloneable handle with which a registered service pushes changes of its own status at once,
/// between polls (an *active* report).
///
/// Returned by [`HealthChecker::register`]. It does not keep the checker alive; once the check is
/// unregistered (even if one of the same name is registered again) or the checker is gone, its
/// reports fail with [`ErrorKind::NotRegistered`].
#[derive(Clone)]
pub struct Reporter {
    pub(super) shared: Weak<Shared>,
    pub(super) id: u64,
    pub(super) name: Arc<str>,
}

impl Reporter {
    /// The name of the check this handle reports on.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pushes a status for `probe` of this check at once, without waiting for the next poll (an
    /// *active* report). It takes effect immediately, whatever the check's failure threshold,
    /// emits an event if the status changes, and lasts until the next poll of the check says
    /// otherwise.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRegistered`] if the check was unregistered or the checker is gone.
    pub fn report(&self, probe: Probe, status: Result<()>) -> Result<()> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| not_registered(&self.name))?;
        shared.push(&self.name, Some(self.id), probe, status)
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("name", &self.name)
            .finish()
    }
}

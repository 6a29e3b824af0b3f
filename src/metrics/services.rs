//! [`ServiceTable`]: the lifecycle state and start and close durations of a runner's services,
//! written by the runner as they change and read by scrapes without a lock.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use crate::state::State;

const NONE: u64 = u64::MAX;

/// One row per service, in the runner's start order.
#[derive(Debug)]
pub(crate) struct ServiceTable {
    rows: Vec<Row>,
}

#[derive(Debug)]
pub(super) struct Row {
    pub(super) name: String,
    state: AtomicU8,
    start_nanos: AtomicU64,
    close_nanos: AtomicU64,
}

impl Row {
    pub(super) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(super) fn start_duration(&self) -> Option<Duration> {
        load(&self.start_nanos)
    }

    pub(super) fn close_duration(&self) -> Option<Duration> {
        load(&self.close_nanos)
    }
}

fn load(nanos: &AtomicU64) -> Option<Duration> {
    match nanos.load(Ordering::Acquire) {
        NONE => None,
        n => Some(Duration::from_nanos(n)),
    }
}

fn store(nanos: &AtomicU64, d: Duration) {
    let n = u64::try_from(d.as_nanos()).unwrap_or(NONE - 1);
    nanos.store(n, Ordering::Release);
}

impl ServiceTable {
    /// A table of `names`, every service [`State::Unstarted`].
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ServiceTable {
        ServiceTable {
            rows: names
                .into_iter()
                .map(|name| Row {
                    name: name.to_owned(),
                    state: AtomicU8::new(State::Unstarted as u8),
                    start_nanos: AtomicU64::new(NONE),
                    close_nanos: AtomicU64::new(NONE),
                })
                .collect(),
        }
    }

    pub(super) fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Service `index` is now in `state`.
    pub(crate) fn set_state(&self, index: usize, state: State) {
        if let Some(row) = self.rows.get(index) {
            row.state.store(state as u8, Ordering::Release);
        }
    }

    /// Service `index` became ready `took` after its start was called.
    pub(crate) fn started_in(&self, index: usize, took: Duration) {
        if let Some(row) = self.rows.get(index) {
            store(&row.start_nanos, took);
        }
    }

    /// Service `index`'s close returned `took` after it was called.
    pub(crate) fn closed_in(&self, index: usize, took: Duration) {
        if let Some(row) = self.rows.get(index) {
            store(&row.close_nanos, took);
        }
    }
}

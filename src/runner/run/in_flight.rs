//! [`InFlight`]: the calls of one phase in progress (the starts, or the closes), by service,
//! with the earliest of their deadlines at hand and the one channel they all send their
//! outcomes on, so that a wake-up of the runner thread costs the same however many calls are in
//! progress.

use std::collections::BTreeSet;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

/// The calls in progress: `T` what the runner keeps of each, `O` what each sends back with its
/// service's index.
pub(super) struct InFlight<T, O> {
    slots: Vec<Option<(Instant, T)>>,
    by_deadline: BTreeSet<(Instant, usize)>,
    sender: Sender<(usize, O)>,
    outcomes: Receiver<(usize, O)>,
}

impl<T, O> InFlight<T, O> {
    /// No call in progress among `n` services.
    pub(super) fn new(n: usize) -> InFlight<T, O> {
        let (sender, outcomes) = crossbeam_channel::unbounded();
        InFlight {
            slots: (0..n).map(|_| None).collect(),
            by_deadline: BTreeSet::new(),
            sender,
            outcomes,
        }
    }

    /// Where a call sends its outcome.
    pub(super) fn sender(&self) -> &Sender<(usize, O)> {
        &self.sender
    }

    /// Where the outcomes arrive.
    pub(super) fn outcomes(&self) -> &Receiver<(usize, O)> {
        &self.outcomes
    }

    /// Service `index`'s call is in progress until `deadline`.
    pub(super) fn insert(&mut self, index: usize, deadline: Instant, call: T) {
        self.by_deadline.insert((deadline, index));
        self.slots[index] = Some((deadline, call));
    }

    /// Service `index`'s call, no longer in progress (`None` if it was not).
    pub(super) fn remove(&mut self, index: usize) -> Option<T> {
        let (deadline, call) = self.slots.get_mut(index)?.take()?;
        self.by_deadline.remove(&(deadline, index));
        Some(call)
    }

    /// Service `index`'s call, if it is in progress.
    pub(super) fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index)?.as_ref().map(|(_, call)| call)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_deadline.is_empty()
    }

    /// The calls in progress, in the order of the services.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|(_, call)| call)
    }

    /// The earliest deadline, and its service.
    pub(super) fn first(&self) -> Option<(Instant, usize)> {
        self.by_deadline.first().copied()
    }

    /// The latest deadline.
    pub(super) fn last_deadline(&self) -> Option<Instant> {
        self.by_deadline.last().map(|&(deadline, _)| deadline)
    }

    /// The services whose deadline is `now` or earlier, earliest first.
    pub(super) fn due(&self, now: Instant) -> Vec<usize> {
        (self.by_deadline.iter())
            .take_while(|&&(deadline, _)| deadline <= now)
            .map(|&(_, index)| index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn calls_come_out_by_deadline_and_by_service() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut f: InFlight<&str, ()> = InFlight::new(4);
        f.insert(2, now + 3 * s, "c");
        f.insert(0, now + s, "a");
        f.insert(3, now + 2 * s, "d");
        assert_eq!(f.iter().copied().collect::<Vec<_>>(), ["a", "c", "d"]);
        assert_eq!(f.first(), Some((now + s, 0)));
        assert_eq!(f.last_deadline(), Some(now + 3 * s));
        assert_eq!(f.due(now + 2 * s), [0, 3]);
        assert_eq!(f.remove(0), Some("a"));
        assert_eq!(f.remove(0), None);
        assert_eq!(f.get(3), Some(&"d"));
        assert_eq!(f.first(), Some((now + 2 * s, 3)));
        f.remove(2);
        f.remove(3);
        assert!(f.is_empty());
    }
}

//! [`ErrorBuffer`]: the most recent errors of a service, for its health report.

use std::collections::VecDeque;
use std::fmt;

use parking_lot::Mutex;

use crate::error::Error;

/// How many errors an [`ErrorBuffer`] keeps unless told otherwise.
const DEFAULT_ERROR_BUFFER_CAP: usize = 50;

/// Keeps the most recent errors of a service so that it can report them through its health and
/// then forget them.
///
/// A service appends the non-fatal errors it meets while running; its health report
/// [`flush`](ErrorBuffer::flush)es them as one joined error. When more errors arrive than the
/// buffer holds, the oldest are dropped and counted.
///
/// ```
/// use lifecycle::{Error, ErrorBuffer};
///
/// let buf = ErrorBuffer::with_cap(2);
/// buf.append(Error::msg("one"));
/// buf.append(Error::msg("two"));
/// buf.append(Error::msg("three"));
/// assert_eq!(buf.dropped(), 1);
/// assert_eq!(buf.flush().unwrap().to_string(), "two; three");
/// assert!(buf.flush().is_none());
/// ```
pub struct ErrorBuffer {
    inner: Mutex<Buffer>,
}

struct Buffer {
    cap: usize,
    errors: VecDeque<Error>,
    dropped: u64,
}

impl ErrorBuffer {
    /// An empty buffer that keeps the 50 most recent errors.
    pub fn new() -> ErrorBuffer {
        ErrorBuffer::with_cap(DEFAULT_ERROR_BUFFER_CAP)
    }

    /// An empty buffer that keeps the `cap` most recent errors (at least one).
    pub fn with_cap(cap: usize) -> ErrorBuffer {
        ErrorBuffer {
            inner: Mutex::new(Buffer {
                cap: cap.max(1),
                errors: VecDeque::new(),
                dropped: 0,
            }),
        }
    }

    /// Changes how many errors the buffer keeps (at least one), dropping the oldest ones above
    /// the new cap.
    pub fn set_cap(&self, cap: usize) {
        let mut b = self.inner.lock();
        b.cap = cap.max(1);
        b.trim();
    }

    /// Adds an error, dropping the oldest one if the buffer is full.
    pub fn append(&self, error: impl Into<Error>) {
        let error = error.into();
        let mut b = self.inner.lock();
        b.errors.push_back(error);
        b.trim();
    }

    /// Takes every buffered error out, as one joined error (oldest first); `None` if there was
    /// none. The buffer is empty afterwards.
    pub fn flush(&self) -> Option<Error> {
        let errors = std::mem::take(&mut self.inner.lock().errors);
        Error::join(errors)
    }

    /// How many errors the buffer holds now.
    pub fn len(&self) -> usize {
        self.inner.lock().errors.len()
    }

    /// Whether the buffer holds no error.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many errors have been dropped, over the buffer's life, because it was full.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().dropped
    }
}

impl Buffer {
    fn trim(&mut self) {
        while self.errors.len() > self.cap {
            self.errors.pop_front();
            self.dropped += 1;
        }
    }
}

impl Default for ErrorBuffer {
    fn default() -> ErrorBuffer {
        ErrorBuffer::new()
    }
}

impl fmt::Debug for ErrorBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.inner.lock();
        f.debug_struct("ErrorBuffer")
            .field("cap", &b.cap)
            .field("len", &b.errors.len())
            .field("dropped", &b.dropped)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_cap_drops_oldest() {
        let buf = ErrorBuffer::new();
        for i in 0..5 {
            buf.append(Error::msg(format!("e{i}")));
        }
        buf.set_cap(2);
        assert_eq!(buf.len(), 2);
        assert_eq!(buf.dropped(), 3);
        assert_eq!(buf.flush().unwrap().to_string(), "e3; e4");
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_cap_keeps_one() {
        let buf = ErrorBuffer::with_cap(0);
        buf.append("a");
        buf.append("b");
        assert_eq!(buf.flush().unwrap().to_string(), "b");
    }
}

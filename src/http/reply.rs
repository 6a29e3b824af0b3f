//! [`Reply`]: a response now, or one that another thread sends later through a [`Responder`].

use std::fmt;
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;

use super::response::Response;

/// What a [`Handler`](super::Handler) returns for a request.
pub(crate) enum Reply {
    /// The response, rendered on the event loop.
    Now(Response),
    /// The response comes later. The event loop calls the function at once, on its own thread,
    /// with the [`Responder`] through which the response is to be sent; the function must not
    /// block (it hands the responder to another thread). Until the response arrives nothing more
    /// is parsed from the connection, so pipelined requests are answered in order; a response
    /// that does not arrive within [`Limits::answer_timeout`](super::Limits::answer_timeout)
    /// closes the connection.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    Later(Box<dyn FnOnce(Responder) + Send>),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Now(response)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(&r.status()).finish(),
            Reply::Later(_) => f.write_str("Later"),
        }
    }
}

/// A response that reached an event loop from another thread, for one of its connections.
pub(super) struct Answer {
    pub(super) index: usize,
    pub(super) id: u64,
    pub(super) response: Response,
}

/// Sends the response to one request that was answered [`Reply::Later`], from any thread, and
/// wakes the connection's event loop. Dropped without sending (for example by a panic), it sends
/// a `500`, so that the connection never waits for an answer that will not come.
pub(crate) struct Responder {
    answers: Sender<Answer>,
    waker: Arc<Waker>,
    index: usize,
    id: u64,
    sent: bool,
}

impl Responder {
    pub(super) fn new(answers: Sender<Answer>, waker: Arc<Waker>, index: usize, id: u64) -> Self {
        Responder {
            answers,
            waker,
            index,
            id,
            sent: false,
        }
    }

    /// Sends the response. Never blocks; if the connection or the server is gone, the response
    /// is dropped.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn send(mut self, response: Response) {
        self.deliver(response);
    }

    fn deliver(&mut self, response: Response) {
        self.sent = true;
        let answer = Answer {
            index: self.index,
            id: self.id,
            response,
        };
        if self.answers.send(answer).is_ok() {
            if let Err(e) = self.waker.wake() {
                // The loop still looks at its answers within its longest poll wait.
                crate::relay::debug!("health endpoint: waking an event loop for an answer: {e}");
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.sent {
            self.deliver(Response::text(500, "no answer was produced\n"));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("connection", &self.index)
            .field("sent", &self.sent)
            .finish()
    }
}

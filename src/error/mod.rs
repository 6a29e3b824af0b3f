//! The crate's one error type: [`Error`] here, its [`Phase`] and [`ErrorKind`] in `kind.rs`.

mod kind;

use std::any::Any;
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::state::State;

pub use self::kind::{ErrorKind, Phase};

/// A boxed error from user code: anything `?` can turn into an error.
///
/// Closures handed to [`StateMachine::start_once`](crate::StateMachine::start_once) and
/// [`StateMachine::close_once`](crate::StateMachine::close_once) return this, so `?` works on
/// any error type inside them.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result<T, lifecycle::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error type of this crate.
///
/// An `Error` names the service and the [`Phase`] it comes from where those are known, says what
/// kind of failure it is ([`ErrorKind`]) and keeps its cause. Errors from several services join
/// into one ([`Error::join`]) that keeps and displays every cause.
///
/// It is cheap to clone (one reference count), so a health cache can hand the same error to many
/// readers.
///
/// Errors from user code enter through [`Error::other`], [`Error::msg`] or the `From`
/// conversions; the crate adds the service name and the phase when it learns them.
///
/// # Causes, `Display` and `source`
///
/// An error made from a cause shows the cause's message in its own (`"api: start failed: port
/// taken"`), so [`source`](StdError::source) skips it and returns the cause's own source, as
/// `std::io::Error` does for the error it wraps: a chain printer (anyhow, eyre) shows every
/// message once. [`find`](Error::find) reaches the cause itself, by type, and
/// [`has_kind`](Error::has_kind) asks about kinds: both look through joined errors, attached
/// errors and source chains.
///
/// ```
/// use lifecycle::{Error, ErrorKind, Phase};
///
/// let start = Error::msg("port in use").in_service("api", Phase::Start);
/// let close = Error::msg("flush failed").in_service("db", Phase::Close);
/// let both = Error::join([start, close]).unwrap();
///
/// assert_eq!(both.kind(), ErrorKind::Joined);
/// assert_eq!(both.to_string(), "api: start failed: port in use; db: close failed: flush failed");
/// let services: Vec<_> = both.errors().map(|e| e.service().unwrap()).collect();
/// assert_eq!(services, ["api", "db"]);
///
/// let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "port taken");
/// let e = Error::join([both, Error::from(io).in_service("web", Phase::Start)]).unwrap();
/// assert!(e.has_kind(ErrorKind::Failed));
/// assert_eq!(e.find::<std::io::Error>().unwrap().kind(), std::io::ErrorKind::AddrInUse);
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    service: Option<Cow<'static, str>>,
    phase: Option<Phase>,
    detail: Detail,
}

#[derive(Clone)]
enum Detail {
    None,
    Message(Cow<'static, str>),
    Source(Arc<dyn StdError + Send + Sync + 'static>),
    /// A deadline, and the last error seen before it passed (a start's last readiness error).
    Timeout(Duration, Option<Error>),
    /// A deadline, and what became of the call (its thread left running, say).
    TimeoutNote(Duration, Cow<'static, str>),
    State(State),
    Joined(Vec<Error>),
}

impl Error {
    fn new(kind: ErrorKind, detail: Detail) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                service: None,
                phase: None,
                detail,
            }),
        }
    }

    /// An error of kind [`ErrorKind::Failed`] with a plain message.
    pub fn msg(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::Failed, Detail::Message(message.into()))
    }

    /// An error of kind [`ErrorKind::Failed`] caused by `source`.
    ///
    /// A `source` that is already a [`lifecycle::Error`](Error) is returned as it is rather than
    /// wrapped again.
    pub fn other(source: impl Into<BoxError>) -> Error {
        let source: BoxError = source.into();
        match source.downcast::<Error>() {
            Ok(own) => *own,
            Err(source) => Error::new(ErrorKind::Failed, Detail::Source(Arc::from(source))),
        }
    }

    /// An error of kind [`ErrorKind::Panicked`] from the payload that
    /// [`std::panic::catch_unwind`] returned.
    pub fn panicked(service: &str, phase: Phase, payload: &(dyn Any + Send)) -> Error {
        Error::panicked_in(phase, payload).in_service(service, phase)
    }

    /// Like [`panicked`](Error::panicked), for the caller to name.
    pub(crate) fn panicked_in(phase: Phase, payload: &(dyn Any + Send)) -> Error {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            Cow::Borrowed(*s)
        } else if let Some(s) = payload.downcast_ref::<String>() {
            Cow::Owned(s.clone())
        } else {
            Cow::Borrowed("(non-string panic payload)")
        };
        Error::new(ErrorKind::Panicked, Detail::Message(message)).in_phase(phase)
    }

    /// An error of kind [`ErrorKind::TimedOut`]: `phase` of `service` did not finish within
    /// `after`.
    pub fn timed_out(service: &str, phase: Phase, after: Duration) -> Error {
        Error::new(ErrorKind::TimedOut, Detail::Timeout(after, None)).in_service(service, phase)
    }

    /// Like [`timed_out`](Error::timed_out), with the last error seen before the deadline (a
    /// start's last readiness error): still of kind [`ErrorKind::TimedOut`].
    pub(crate) fn timed_out_after(
        service: &str,
        phase: Phase,
        after: Duration,
        last: Error,
    ) -> Error {
        Error::new(ErrorKind::TimedOut, Detail::Timeout(after, Some(last)))
            .in_service(service, phase)
    }

    /// Like [`timed_out`](Error::timed_out), with a note on what became of the call.
    pub(crate) fn timed_out_noting(
        service: &str,
        phase: Phase,
        after: Duration,
        note: impl Into<Cow<'static, str>>,
    ) -> Error {
        Error::new(ErrorKind::TimedOut, Detail::TimeoutNote(after, note.into()))
            .in_service(service, phase)
    }

    /// An error of kind [`ErrorKind::Cancelled`]: `phase` of `service` was cancelled.
    pub fn cancelled(service: &str, phase: Phase) -> Error {
        Error::new(ErrorKind::Cancelled, Detail::None).in_service(service, phase)
    }

    /// An error of `kind` about `service` in `phase`, found in `state`.
    pub(crate) fn state(kind: ErrorKind, service: &str, phase: Phase, state: State) -> Error {
        Error::unnamed_state(kind, phase, state).in_service(service, phase)
    }

    /// Like [`Error::state`] for a caller that does not know the service's name: the name is
    /// added later by whoever does (see [`Error::in_service`]).
    pub(crate) fn unnamed_state(kind: ErrorKind, phase: Phase, state: State) -> Error {
        Error::new(kind, Detail::State(state)).in_phase(phase)
    }

    /// An error of kind [`ErrorKind::InvalidState`] with `message`, in `phase`, for the caller to
    /// name.
    pub(crate) fn invalid_state(phase: Phase, message: &'static str) -> Error {
        Error::new(
            ErrorKind::InvalidState,
            Detail::Message(Cow::Borrowed(message)),
        )
        .in_phase(phase)
    }

    /// An error of `kind` about the component `name`, outside any phase: used for registration
    /// errors ([`ErrorKind::DuplicateName`], [`ErrorKind::NotRegistered`]).
    pub(crate) fn registration(kind: ErrorKind, name: &str) -> Error {
        Error::new(kind, Detail::None).named(name)
    }

    /// An error of kind [`ErrorKind::InvalidInput`] about the component `name`, outside any phase.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn invalid_input(name: &str, message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(ErrorKind::InvalidInput, Detail::Message(message.into())).named(name)
    }

    fn named(mut self, name: &str) -> Error {
        Arc::make_mut(&mut self.inner).service = Some(Cow::Owned(name.to_owned()));
        self
    }

    /// Joins errors into one, keeping every cause in order.
    ///
    /// Joined errors inside `errors` are flattened. Returns `None` when there is no error, the
    /// error itself when there is exactly one, and an error of kind [`ErrorKind::Joined`]
    /// otherwise.
    pub fn join(errors: impl IntoIterator<Item = Error>) -> Option<Error> {
        let mut all = Vec::new();
        for e in errors {
            match &e.inner.detail {
                Detail::Joined(inner) => all.extend(inner.iter().cloned()),
                _ => all.push(e),
            }
        }
        match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(Error::new(ErrorKind::Joined, Detail::Joined(all))),
        }
    }

    /// Names the service and phase this error comes from, unless it names them already.
    ///
    /// The parts of a joined error keep their own names; the ones that have none get these.
    #[must_use]
    pub fn in_service(self, service: &str, phase: Phase) -> Error {
        self.fill(Some(service), phase)
    }

    /// Names the phase this error comes from, unless it names one already, for the caller to
    /// name the service.
    pub(crate) fn in_phase(self, phase: Phase) -> Error {
        self.fill(None, phase)
    }

    fn fill(mut self, service: Option<&str>, phase: Phase) -> Error {
        let needs = |i: &Inner| (service.is_some() && i.service.is_none()) || i.phase.is_none();
        if let Detail::Joined(parts) = &self.inner.detail {
            if parts.iter().any(|p| needs(&p.inner)) {
                let parts = parts
                    .iter()
                    .map(|p| p.clone().fill(service, phase))
                    .collect();
                return Error::new(ErrorKind::Joined, Detail::Joined(parts));
            }
            return self;
        }
        if needs(&self.inner) {
            let inner = Arc::make_mut(&mut self.inner);
            if let (None, Some(service)) = (&inner.service, service) {
                inner.service = Some(Cow::Owned(service.to_owned()));
            }
            if inner.phase.is_none() {
                inner.phase = Some(phase);
            }
        }
        self
    }

    /// What kind of error this is. A joined error is of kind [`ErrorKind::Joined`]: ask
    /// [`has_kind`](Error::has_kind) about its parts.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The name of the service the error comes from, if known.
    pub fn service(&self) -> Option<&str> {
        self.inner.service.as_deref()
    }

    /// The phase the error comes from, if known.
    pub fn phase(&self) -> Option<Phase> {
        self.inner.phase
    }

    /// Whether this error, or any error it holds, is of `kind`: it looks through the parts of a
    /// joined error, the error attached to a timeout, and the source chain of a cause (for a
    /// `lifecycle::Error` in it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lifecycle::{Error, ErrorKind, Phase};
    ///
    /// let timeout = Error::timed_out("db", Phase::Start, Duration::from_secs(1));
    /// let both = Error::join([Error::msg("other"), timeout]).unwrap();
    /// assert_eq!(both.kind(), ErrorKind::Joined);
    /// assert!(both.has_kind(ErrorKind::TimedOut) && both.is_timeout());
    /// assert!(!both.has_kind(ErrorKind::Panicked));
    /// ```
    pub fn has_kind(&self, kind: ErrorKind) -> bool {
        self.any(&mut |e| e.kind() == kind)
    }

    /// The first error of type `E` this error holds: itself, its cause or anything in the
    /// cause's source chain, the error attached to a timeout, or any part of a joined error,
    /// in that order.
    pub fn find<E: StdError + 'static>(&self) -> Option<&E> {
        if let Some(e) = (self as &(dyn StdError + 'static)).downcast_ref::<E>() {
            return Some(e);
        }
        match &self.inner.detail {
            Detail::Source(source) => walk(&**source, &mut |e| {
                e.downcast_ref::<E>()
                    .or_else(|| e.downcast_ref::<Error>().and_then(Error::find::<E>))
            }),
            Detail::Timeout(_, Some(last)) => last.find(),
            Detail::Joined(parts) => parts.iter().find_map(Error::find),
            _ => None,
        }
    }

    /// Whether `f` holds for this error or any `lifecycle::Error` it holds (see
    /// [`has_kind`](Error::has_kind)).
    fn any(&self, f: &mut dyn FnMut(&Error) -> bool) -> bool {
        if f(self) {
            return true;
        }
        match &self.inner.detail {
            Detail::Source(source) => walk(&**source, &mut |e| {
                e.downcast_ref::<Error>()
                    .is_some_and(|own| own.any(f))
                    .then_some(())
            })
            .is_some(),
            Detail::Timeout(_, Some(last)) => last.any(f),
            Detail::Joined(parts) => parts.iter().any(|p| p.any(f)),
            _ => false,
        }
    }

    /// Whether this is, or holds, an error of kind [`ErrorKind::TimedOut`]
    /// (see [`has_kind`](Error::has_kind)).
    pub fn is_timeout(&self) -> bool {
        self.has_kind(ErrorKind::TimedOut)
    }

    /// Whether this is, or holds, an error of kind [`ErrorKind::Panicked`]
    /// (see [`has_kind`](Error::has_kind)).
    pub fn is_panic(&self) -> bool {
        self.has_kind(ErrorKind::Panicked)
    }

    /// Every error this one holds: the parts of a joined error, in order, or this error alone.
    pub fn errors(&self) -> std::slice::Iter<'_, Error> {
        match &self.inner.detail {
            Detail::Joined(parts) => parts.iter(),
            _ => std::slice::from_ref(self).iter(),
        }
    }

    /// Writes the error; `named` says whether to begin with the service's name.
    fn describe(&self, f: &mut fmt::Formatter<'_>, named: bool) -> fmt::Result {
        let i = &*self.inner;
        if let (true, Some(service)) = (named, &i.service) {
            write!(f, "{service}: ")?;
        }
        let phase = i.phase.map_or("", Phase::as_str);
        let sep = if phase.is_empty() { "" } else { " " };
        match (i.kind, &i.detail) {
            (ErrorKind::Failed, Detail::Message(m)) if phase.is_empty() => f.write_str(m),
            (ErrorKind::Failed, Detail::Message(m)) => write!(f, "{phase} failed: {m}"),
            (ErrorKind::Failed, Detail::Source(s)) if phase.is_empty() => write!(f, "{s}"),
            (ErrorKind::Failed, Detail::Source(s)) => write!(f, "{phase} failed: {s}"),
            (ErrorKind::Panicked, Detail::Message(m)) => write!(f, "panicked in {phase}: {m}"),
            (ErrorKind::TimedOut, Detail::Timeout(d, last)) => {
                write!(f, "{phase}{sep}timed out after {d:?}")?;
                match last {
                    // The attached error is about the same service: not named again.
                    Some(last) if last.service() == i.service.as_deref() => {
                        f.write_str(", last error: ")?;
                        last.describe(f, false)
                    }
                    Some(last) => write!(f, ", last error: {last}"),
                    None => Ok(()),
                }
            }
            (ErrorKind::TimedOut, Detail::TimeoutNote(d, note)) => {
                write!(f, "{phase}{sep}timed out after {d:?}, {note}")
            }
            (ErrorKind::Cancelled, _) => write!(f, "{phase}{sep}cancelled"),
            (ErrorKind::AlreadyStarted, Detail::State(s)) => {
                write!(f, "already started once (state: {s})")
            }
            (ErrorKind::AlreadyClosed, Detail::State(s)) => {
                write!(f, "already closed (state: {s})")
            }
            (ErrorKind::NotStarted, Detail::State(s)) if i.phase == Some(Phase::Close) => {
                write!(
                    f,
                    "cannot close a service that was never started (state: {s})"
                )
            }
            (ErrorKind::NotStarted, Detail::State(s)) => write!(f, "not started (state: {s})"),
            (ErrorKind::InvalidState, Detail::State(s)) => {
                write!(f, "cannot {phase} in state {s}")
            }
            (ErrorKind::InvalidState, Detail::Message(m)) => write!(f, "cannot {phase}: {m}"),
            (ErrorKind::DuplicateName, _) => f.write_str("already registered"),
            (ErrorKind::NotRegistered, _) => f.write_str("not registered"),
            (_, Detail::Message(m)) => f.write_str(m),
            (kind, _) => write!(f, "{kind:?}"),
        }
    }
}

impl fmt::Display for Error {
    /// One line; the parts of a joined error are separated by `"; "`.
    /// The alternate form (`{:#}`) puts each part on a line of its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.detail {
            Detail::Joined(parts) => {
                for (n, part) in parts.iter().enumerate() {
                    if n > 0 {
                        f.write_str(if f.alternate() { "\n" } else { "; " })?;
                    }
                    part.describe(f, true)?;
                }
                Ok(())
            }
            _ => self.describe(f, true),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Detail::Joined(parts) = &self.inner.detail {
            return f.debug_list().entries(parts).finish();
        }
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(s) = &self.inner.service {
            d.field("service", s);
        }
        if let Some(p) = &self.inner.phase {
            d.field("phase", p);
        }
        d.field("message", &format_args!("{self}"));
        d.finish()
    }
}

impl StdError for Error {
    /// The source of this error's cause, never the cause itself, whose message this error's
    /// `Display` already shows (see [`Error`]); `None` for a joined error, whose parts
    /// [`errors`](Error::errors) gives.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.detail {
            Detail::Source(s) => s.source(),
            Detail::Timeout(_, Some(last)) => last.source(),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::other(e)
    }
}

impl From<BoxError> for Error {
    fn from(e: BoxError) -> Error {
        Error::other(e)
    }
}

impl From<&'static str> for Error {
    fn from(message: &'static str) -> Error {
        Error::msg(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::msg(message)
    }
}

/// Calls `visit` on `error` and on every error of its source chain, until it returns `Some`.
/// The error an `std::io::Error` wraps is visited too: its `source()` skips it.
fn walk<'a, T>(
    error: &'a (dyn StdError + 'static),
    visit: &mut dyn FnMut(&'a (dyn StdError + 'static)) -> Option<T>,
) -> Option<T> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = visit(e) {
            return Some(found);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(found) = wrapped.and_then(|w| walk(w as &(dyn StdError + 'static), visit)) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Turns the outcome of `catch_unwind` around a service call into a `Result` that names the
/// service and phase, whatever happened.
pub(crate) fn flatten_call<T>(
    service: &str,
    phase: Phase,
    outcome: std::thread::Result<Result<T>>,
) -> Result<T> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.in_service(service, phase)),
        Err(payload) => Err(Error::panicked(service, phase, &*payload)),
    }
}

/// Checks a name given to the runner, a [`MultiStart`](crate::MultiStart) or the health
/// checker: it must not be empty, nor hold control characters (it is written in log lines,
/// probe answers and metric labels).
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`], saying why.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "a name must not be empty"
    } else if name.bytes().any(|b| b < 0x20 || b == 0x7f)
        || (!name.is_ascii() && name.chars().any(char::is_control))
    {
        "a name must not hold control characters"
    } else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        Detail::Message(Cow::Owned(format!("invalid name {name:?}: {why}"))),
    ))
}

#[cfg(test)]
mod tests;

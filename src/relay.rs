//! The crate's log lines, written by a thread of their own so that nothing of the crate ever
//! waits on a log sink.
//!
//! A `log` sink can block: `env_logger` writes to standard error, and a standard error that is a
//! pipe nobody reads (a stuck log shipper) blocks the writer once the pipe is full, and every
//! other writer behind the sink's lock. The crate's event loops, the checker's poller, the
//! runner's shutdown and the signal path must never wait on that. So every line of the crate
//! goes through the macros of this module ([`error!`], [`warn!`], [`info!`], [`debug!`]):
//!
//! - a line below the `log` crate's maximum level costs one atomic load and is never formatted;
//! - an enabled line is formatted where it is logged and queued on a bounded queue
//!   ([`QUEUE_LINES`] lines), without waiting: when the queue is full, the line is dropped and
//!   counted, and once the sink takes lines again the count is logged at warn level;
//! - one thread, `lifecycle log`, hands the queued lines to the program's logger
//!   (`log::logger()`), in order. It is started when a line is queued and none runs, and it ends
//!   after [`IDLE_EXIT`] without lines (the next start joins it), so a program that logs nothing
//!   (or a test) never has it, and no thread stays behind after the crate goes quiet;
//! - [`flush`] waits, with a deadline, until the lines queued before it are written: the runner
//!   flushes at the end of a run (so its last lines are out before `main` returns) within what
//!   is left of its shutdown timeout, and the second-signal exit flushes briefly before it exits.
//!
//! A program's own lines keep their order among themselves, and the crate's among themselves;
//! a line of the crate may be written slightly after a line the program logged later.
//!
//! [`error!`]: crate::relay::error
//! [`warn!`]: crate::relay::warn
//! [`info!`]: crate::relay::info
//! [`debug!`]: crate::relay::debug

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;

/// The most lines queued for the sink; more are dropped (and counted) until it catches up.
pub(crate) const QUEUE_LINES: usize = 1024;
/// How long the relay thread waits for a line before it ends.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(1);
/// The relay thread's name.
pub(crate) const THREAD_NAME: &str = "lifecycle log";

/// A queued line, or a flush marker.
enum Message {
    Line {
        level: log::Level,
        target: &'static str,
        file: &'static str,
        line: u32,
        text: String,
    },
    /// Answered once every line queued before it has been handed to the logger.
    Flush(Sender<()>),
}

struct Relay {
    sender: Sender<Message>,
    receiver: Receiver<Message>,
    /// Whether a relay thread runs (or is about to end and has checked the queue is empty).
    running: AtomicBool,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
    /// The last relay thread, joined by the next start, and when a start last failed.
    thread: Mutex<Spawner>,
}

/// What starting the relay thread needs to remember.
#[derive(Default)]
struct Spawner {
    /// The last relay thread (it has ended, or is ending, when the next one starts).
    handle: Option<JoinHandle<()>>,
    /// When spawning it last failed: the next attempt waits [`RESPAWN_AFTER`].
    failed_at: Option<Instant>,
}

/// How long after a failed spawn (the process is out of threads) the next one is tried: lines
/// wait in the queue (and are dropped once it is full) meanwhile.
const RESPAWN_AFTER: Duration = Duration::from_millis(100);

fn relay() -> &'static Relay {
    static RELAY: OnceLock<Relay> = OnceLock::new();
    RELAY.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE_LINES);
        Relay {
            sender,
            receiver,
            running: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Spawner::default()),
        }
    })
}

/// Whether a line at `level` would be logged at all: one atomic load, the `log` crate's own
/// filter (the logger's finer filter applies when the line is written).
#[inline]
pub(crate) fn enabled(level: log::Level) -> bool {
    level <= log::STATIC_MAX_LEVEL && level <= log::max_level()
}

/// Queues a line without waiting (see the module docs); the macros call it.
pub(crate) fn line(
    level: log::Level,
    target: &'static str,
    file: &'static str,
    line: u32,
    args: fmt::Arguments<'_>,
) {
    let text = match args.as_str() {
        Some(s) => s.to_owned(),
        None => args.to_string(),
    };
    send(Message::Line {
        level,
        target,
        file,
        line,
        text,
    });
}

/// Queues `message` without waiting, starting the relay thread if none runs. Returns whether
/// it was queued.
fn send(message: Message) -> bool {
    let relay = relay();
    match relay.sender.try_send(message) {
        // Orders the send before the load of `running` below, whatever the channel does inside.
        Ok(()) => fence(Ordering::SeqCst),
        Err(TrySendError::Full(Message::Line { .. })) => {
            relay.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Err(_) => return false,
    }
    // SeqCst pairs with the relay thread's store of `false` then its check of the queue: either
    // this load sees `true` and the thread will see the message, or it sees `false` and a thread
    // is started here.
    if !relay.running.load(Ordering::SeqCst) {
        start(relay);
    }
    true
}

/// Starts the relay thread unless one runs; returns whether one runs.
fn start(relay: &'static Relay) -> bool {
    let mut spawner = relay.thread.lock();
    if relay.running.load(Ordering::SeqCst) {
        return true;
    }
    let now = Instant::now();
    if (spawner.failed_at).is_some_and(|t| now.duration_since(t) < RESPAWN_AFTER) {
        return false;
    }
    if let Some(old) = spawner.handle.take() {
        // It has set `running` to false, so it logs nothing more and is ending: the join only
        // waits for it to return.
        let _ = old.join();
    }
    relay.running.store(true, Ordering::SeqCst);
    match std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || serve(relay))
    {
        Ok(handle) => {
            spawner.handle = Some(handle);
            spawner.failed_at = None;
            true
        }
        Err(_) => {
            // No thread for the lines (the process is out of threads): they wait in the queue
            // (dropped once it is full) until a later line starts one.
            relay.running.store(false, Ordering::SeqCst);
            spawner.failed_at = Some(now);
            false
        }
    }
}

/// The relay thread: writes lines until it has been idle for [`IDLE_EXIT`].
fn serve(relay: &'static Relay) {
    loop {
        match relay.receiver.recv_timeout(IDLE_EXIT) {
            Ok(message) => write(relay, message),
            Err(RecvTimeoutError::Timeout) => {
                let _spawner = relay.thread.lock();
                relay.running.store(false, Ordering::SeqCst);
                // Orders the store before the check of the queue (see `send`).
                fence(Ordering::SeqCst);
                if relay.receiver.is_empty() {
                    return;
                }
                // A line came in between: keep serving.
                relay.running.store(true, Ordering::SeqCst);
            }
            // The relay is a static: its sender is never dropped.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn write(relay: &Relay, message: Message) {
    match message {
        Message::Line {
            level,
            target,
            file,
            line,
            text,
        } => {
            report_dropped(relay);
            emit(level, target, file, line, format_args!("{text}"));
        }
        Message::Flush(done) => {
            report_dropped(relay);
            let _ = std::panic::catch_unwind(|| log::logger().flush());
            let _ = done.send(());
        }
    }
}

/// Logs how many lines were dropped since the last report, if any.
fn report_dropped(relay: &Relay) {
    let dropped = relay.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        emit(
            log::Level::Warn,
            module_path!(),
            file!(),
            line!(),
            format_args!(
                "{dropped} log line(s) of lifecycle dropped: the log sink was not taking them"
            ),
        );
    }
}

/// Hands one line to the program's logger. A logger that panics loses that line, never the
/// relay thread.
fn emit(level: log::Level, target: &str, file: &str, line: u32, args: fmt::Arguments<'_>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log_record(level, target, file, line, args)
    }));
}

fn log_record(level: log::Level, target: &str, file: &str, line: u32, args: fmt::Arguments<'_>) {
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(target)
            .module_path(Some(target))
            .file(Some(file))
            .line(Some(line))
            .args(args)
            .build(),
    );
}

/// Waits until every line queued before the call has been handed to the logger and the logger
/// flushed (`Log::flush`), or until `deadline`. Returns whether they were. It returns at once
/// when nothing is queued, and when no relay thread can be started.
pub(crate) fn flush(deadline: Instant) -> bool {
    let relay = relay();
    // A running thread may be writing a line it has taken from the queue: wait for it too.
    if !relay.running.load(Ordering::SeqCst) && relay.receiver.is_empty() {
        return true;
    }
    let (done, wait) = crossbeam_channel::bounded(1);
    let mut marker = Message::Flush(done);
    // The marker must not be dropped like a line when the queue is full: retry until the
    // deadline.
    loop {
        match relay.sender.try_send(marker) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                marker = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
    if !relay.running.load(Ordering::SeqCst) && !start(relay) {
        // No thread to write them: waiting would only use up the deadline.
        return false;
    }
    wait.recv_deadline(deadline).is_ok()
}

/// Logs through the relay at `level`; the level macros expand to this.
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {{
        let level: ::log::Level = $level;
        if $crate::relay::enabled(level) {
            $crate::relay::line(level, module_path!(), file!(), line!(), format_args!($($arg)+));
        }
    }};
}

/// `log::error!`, through the relay.
macro_rules! error {
    ($($arg:tt)+) => { $crate::relay::log_at!(::log::Level::Error, $($arg)+) };
}

/// `log::warn!`, through the relay (exported as `warn`, a name the built-in attribute takes).
macro_rules! warning {
    ($($arg:tt)+) => { $crate::relay::log_at!(::log::Level::Warn, $($arg)+) };
}

/// `log::info!`, through the relay.
macro_rules! info {
    ($($arg:tt)+) => { $crate::relay::log_at!(::log::Level::Info, $($arg)+) };
}

/// `log::debug!`, through the relay.
macro_rules! debug {
    ($($arg:tt)+) => { $crate::relay::log_at!(::log::Level::Debug, $($arg)+) };
}

pub(crate) use {debug, error, info, log_at, warning as warn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_with_nothing_queued_returns_at_once() {
        assert!(flush(Instant::now()));
    }
}

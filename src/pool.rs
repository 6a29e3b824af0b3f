//! [`CallPool`]: threads reused for calls into user code, so that a call costs a hand-over
//! rather than a thread spawned and joined, while a call that hangs is still abandoned at its
//! bound.
//!
//! A call is queued; an idle thread of the pool takes it. The pool never makes its caller wait
//! for a thread: its `lifecycle pool` thread, the manager, spawns the threads. Up to a floor
//! (the machine's parallelism, at least 2 and at most 8) a thread is spawned as soon as a call
//! finds none idle. Past the floor, the pool grows only when calls wait and no thread has taken
//! one for [`SPAWN_DELAY`] (every thread is in a long call): then one more thread, and while that
//! goes on, every further [`SPAWN_DELAY`] twice as many as the last (1, 2, 4, … 64), so calls
//! that all block (starts that each wait for a database) soon run at once, while short calls
//! (the common case) share the floor's threads however many are queued. A call
//! that hangs keeps its thread; the others are served by the rest, and the pool grows past it.
//! A thread whose call ends goes back to the pool, abandoned or not.
//!
//! On Linux each thread carries the name of its call while it runs it (`start db`, `close
//! api`), as a thread spawned for the call would, and the pool's name while idle.
//!
//! A thread above the floor that has waited idle for 10 s ends, so a burst of long calls leaves
//! no threads behind. Closing the pool (dropping it) ends its idle threads and joins them; a
//! thread still in a call (an abandoned one) is left to end when its call returns, as an
//! abandoned thread is.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Condvar, Mutex};

use crate::thread::{thread_name, Abandoned};

/// How long a call waits without a thread, past the floor, before the pool grows.
pub(crate) const SPAWN_DELAY: Duration = Duration::from_millis(1);

/// The most threads spawned at once when calls keep waiting.
const MAX_BURST: usize = 64;

/// How long the manager waits before trying again after a thread could not be spawned.
const SPAWN_RETRY: Duration = Duration::from_millis(100);

/// How long a thread above the floor waits idle before it ends (shorter in the unit tests).
#[cfg(not(test))]
const IDLE_RETIRE: Duration = Duration::from_secs(10);
#[cfg(test)]
const IDLE_RETIRE: Duration = Duration::from_millis(200);

type Job = Box<dyn FnOnce() + Send>;

/// Threads for calls into user code, owned by one owner (a run, a checker) and reused.
pub(crate) struct CallPool {
    shared: Arc<Shared>,
    manager: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// The threads' name while idle, and the manager's.
    name: String,
    floor: usize,
    state: Mutex<State>,
    /// A call was queued, or the pool closes: for the idle threads.
    work: Condvar,
    /// Calls wait without a thread, or the pool closes: for the manager.
    tend: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Threads waiting for a call.
    idle: usize,
    /// Threads spawned that have not yet looked for a call: they will take one each.
    starting: usize,
    /// Threads running (spawned, not ended by retiring).
    live: usize,
    /// Every thread spawned and not yet joined.
    threads: Vec<Worker>,
    closing: bool,
    /// How many threads the manager spawns at its next turn past the floor.
    burst: usize,
    /// When the manager last spawned threads (or failed to).
    last_spawn: Option<Instant>,
    /// When a thread last took a call.
    last_take: Option<Instant>,
    spawn_failed: bool,
}

struct Queued {
    job: Job,
    at: Instant,
}

struct Worker {
    handle: JoinHandle<()>,
    in_call: Arc<AtomicBool>,
}

/// A call handed to a [`CallPool`]: its value arrives on its channel, or it sends its outcome
/// itself.
pub(crate) struct Call<T> {
    label: String,
    result: Receiver<T>,
    ended: Arc<AtomicBool>,
    /// [`QUEUED`], then [`RUNNING`] once a thread has taken it, or [`DROPPED`] if it was
    /// abandoned first (it then never runs).
    phase: Arc<AtomicU8>,
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DROPPED: u8 = 2;

/// Set when a call's function has returned (or unwound), or when the call is dropped unrun.
struct EndGuard(Arc<AtomicBool>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl CallPool {
    /// An empty pool whose threads are called `name` while idle; no thread is spawned before
    /// the first call.
    pub(crate) fn new(name: &str) -> CallPool {
        let floor = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        CallPool {
            shared: Arc::new(Shared {
                name: thread_name(name.to_owned()),
                floor,
                state: Mutex::new(State {
                    burst: 1,
                    ..State::default()
                }),
                work: Condvar::new(),
                tend: Condvar::new(),
            }),
            manager: Mutex::new(None),
        }
    }

    /// Queues `f`, the call `label` (`start db`), and returns at once.
    ///
    /// Wrap user code in `catch_unwind` inside `f`: a panic only loses the value, which the
    /// owner then sees as a call that ended without one. The value is sent after `f` and
    /// everything it captured are gone. A call queued after the pool has begun to close is
    /// dropped unrun: it ends without a value.
    ///
    /// # Errors
    ///
    /// When the pool has no manager thread yet and the system refuses to spawn one: nothing
    /// would ever run the call. (Once the manager runs, a call that finds no thread waits
    /// while the manager tries again, within its owner's bound.)
    pub(crate) fn call<T: Send + 'static>(
        &self,
        label: String,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<Call<T>> {
        self.ensure_manager()?;
        let label = thread_name(label);
        let (tx, result) = crossbeam_channel::bounded(1);
        let ended = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(QUEUED));
        let guard = EndGuard(Arc::clone(&ended));
        let (name, taken) = (label.clone(), Arc::clone(&phase));
        let job: Job = Box::new(move || {
            let begins =
                taken.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
            if begins.is_err() {
                // Abandoned before a thread was free for it: it never runs.
                return;
            }
            set_os_name(&name);
            let value = f();
            drop(guard);
            // The receiver may be gone (an abandoned call): the value is dropped with the error.
            let _ = tx.send(value);
        });
        {
            let mut state = self.shared.state.lock();
            if !state.closing {
                state.queue.push_back(Queued {
                    job,
                    at: Instant::now(),
                });
                if state.idle > 0 {
                    self.shared.work.notify_one();
                }
                if state.queue.len() > state.idle {
                    self.shared.tend.notify_one();
                }
            }
        }
        Ok(Call {
            label,
            result,
            ended,
            phase,
        })
    }

    /// How many threads the pool has running (idle or in a call).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.shared.state.lock().live
    }

    /// Spawns the manager thread if it is not running yet.
    fn ensure_manager(&self) -> io::Result<()> {
        let mut manager = self.manager.lock();
        if manager.is_some() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name(self.shared.name.clone())
            .spawn(move || shared.manage())?;
        *manager = Some(handle);
        Ok(())
    }
}

impl Drop for CallPool {
    /// Ends the idle threads and the manager, and joins them; a thread in a call is left to end
    /// when its call returns. Calls still queued are dropped unrun.
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.state.lock();
            state.closing = true;
            std::mem::take(&mut state.queue)
        };
        self.shared.work.notify_all();
        self.shared.tend.notify_all();
        // Dropping a queued call runs no user code of its own: its captures are the owner's.
        drop(queued);
        // The manager first: it may be spawning threads, which it adds to the list.
        if let Some(manager) = self.manager.get_mut().take() {
            let _ = manager.join();
        }
        let threads = std::mem::take(&mut self.shared.state.lock().threads);
        for worker in threads {
            // A thread not in a call is idle or about to be: it ends without running user code.
            if !worker.in_call.load(Ordering::Acquire) {
                let _ = worker.handle.join();
            }
        }
    }
}

impl Shared {
    /// The manager's loop: spawns threads for calls that wait without one.
    fn manage(self: Arc<Shared>) {
        let mut state = self.state.lock();
        loop {
            if state.closing {
                return;
            }
            reap(&mut state.threads);
            let backlog = (state.queue.len())
                .saturating_sub(state.idle)
                .saturating_sub(state.starting);
            if backlog == 0 {
                state.burst = 1;
                self.tend.wait(&mut state);
                continue;
            }
            let live = state.live;
            let now = Instant::now();
            let due = if state.spawn_failed {
                state.last_spawn.map_or(now, |t| t + SPAWN_RETRY)
            } else if live < self.floor {
                now
            } else {
                // Calls wait, and none was taken for a while: every thread is in a long call.
                let oldest = state.queue.front().map_or(now, |q| q.at);
                let since = [state.last_spawn, state.last_take]
                    .into_iter()
                    .flatten()
                    .fold(oldest, Instant::max);
                since + SPAWN_DELAY
            };
            if due > now {
                let _ = self.tend.wait_until(&mut state, due);
                continue;
            }
            let count = if live < self.floor {
                (self.floor - live).min(backlog)
            } else {
                let count = state.burst.min(backlog);
                state.burst = (state.burst * 2).min(MAX_BURST);
                count
            };
            state.last_spawn = Some(now);
            state.spawn_failed = false;
            // Counted before they run, so that the next turn does not spawn for the same calls.
            state.starting += count;
            state.live += count;
            // Spawned without the lock: callers queue meanwhile, and the threads take calls.
            let spawned = parking_lot::MutexGuard::unlocked(&mut state, || self.spawn(count));
            let missing = count - spawned.len();
            state.starting -= missing;
            state.live -= missing;
            state.spawn_failed = missing > 0;
            state.threads.extend(spawned);
        }
    }

    /// Spawns up to `count` threads; fewer if the system refuses one (logged).
    fn spawn(self: &Arc<Shared>, count: usize) -> Vec<Worker> {
        let mut spawned = Vec::with_capacity(count);
        for _ in 0..count {
            let shared = Arc::clone(self);
            let in_call = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&in_call);
            match std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || shared.serve(&flag))
            {
                Ok(handle) => spawned.push(Worker { handle, in_call }),
                Err(e) => {
                    crate::relay::warn!("{}: cannot spawn a thread: {e}", self.name);
                    break;
                }
            }
        }
        spawned
    }

    /// A thread's loop: takes calls until the pool closes, or until it has waited idle for
    /// [`IDLE_RETIRE`] while the pool has more threads than its floor.
    fn serve(&self, in_call: &AtomicBool) {
        let mut state = self.state.lock();
        state.starting -= 1;
        loop {
            if let Some(queued) = state.queue.pop_front() {
                in_call.store(true, Ordering::Release);
                state.last_take = Some(Instant::now());
                drop(state);
                // The job catches nothing itself: the caller's function does (see `call`).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(queued.job));
                set_os_name(&self.name);
                in_call.store(false, Ordering::Release);
                state = self.state.lock();
                continue;
            }
            if state.closing {
                return;
            }
            state.idle += 1;
            let waited = self.work.wait_for(&mut state, IDLE_RETIRE);
            state.idle -= 1;
            if waited.timed_out() && state.queue.is_empty() && state.live > self.floor {
                // Joined by the manager's next turn, or when the pool closes.
                state.live -= 1;
                return;
            }
        }
    }
}

/// Joins the threads that have ended (retired): their joins do not wait.
fn reap(threads: &mut Vec<Worker>) {
    if threads.iter().any(|w| w.handle.is_finished()) {
        for worker in std::mem::take(threads) {
            if worker.handle.is_finished() {
                let _ = worker.handle.join();
            } else {
                threads.push(worker);
            }
        }
    }
}

impl<T> Call<T> {
    /// The call's label (`start db`), which its thread carries while it runs it.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The channel the value arrives on; it disconnects when the call has ended without a value.
    #[cfg(test)]
    pub(crate) fn receiver(&self) -> &Receiver<T> {
        &self.result
    }

    /// The value, if the call returns before `deadline` (`None`: it ended without one); the
    /// call back if not.
    pub(crate) fn wait_until(self, deadline: Instant) -> Result<Option<T>, Call<T>> {
        match self.result.recv_deadline(deadline) {
            Ok(value) => Ok(Some(value)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => Err(self),
        }
    }

    /// Whether the call has ended (its function returned or unwound, or it was dropped unrun).
    /// Never blocks.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Gives up waiting. A call still running user code that did not return in time is
    /// handed back, to be named in reports and joined if it ends later; one that no thread had
    /// taken yet (every thread busy, none could be spawned) is dropped, never to run: `None`.
    pub(crate) fn abandon(self) -> Option<Abandoned> {
        let dropped =
            self.phase
                .compare_exchange(QUEUED, DROPPED, Ordering::AcqRel, Ordering::Acquire);
        match dropped {
            Ok(_) => None,
            Err(_) => Some(Abandoned::call(self.label, self.ended)),
        }
    }
}

/// Names the calling thread `name` as the system sees it (Linux: the first 15 bytes), for
/// `top -H`, debuggers and profilers.
fn set_os_name(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let mut buf = [0u8; 16];
        let mut len = name.len().min(15);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        buf[..len].copy_from_slice(&name.as_bytes()[..len]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `buf`,
        // which outlives the call; it only renames the calling thread.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: Duration = Duration::from_secs(30);

    fn far() -> Instant {
        Instant::now() + FAR
    }

    fn call<T: Send + 'static>(
        pool: &CallPool,
        label: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Call<T> {
        pool.call(label.to_owned(), f).expect("the pool's manager")
    }

    /// A call `label` that has begun and returns `value` once `release` sends (or is dropped).
    fn held<T: Send + 'static>(
        pool: &CallPool,
        label: &str,
        value: T,
    ) -> (Call<T>, crossbeam_channel::Sender<()>) {
        let (release, hold) = crossbeam_channel::bounded::<()>(0);
        let (began_tx, began) = crossbeam_channel::bounded::<()>(1);
        let c = call(pool, label, move || {
            began_tx.send(()).unwrap();
            let _ = hold.recv_timeout(FAR);
            value
        });
        began.recv_timeout(FAR).unwrap();
        (c, release)
    }

    #[test]
    fn a_call_returns_its_value_and_calls_reuse_threads() {
        let pool = CallPool::new("pool test");
        for i in 0..50 {
            let c = call(&pool, &format!("call {i}"), move || i * 2);
            assert_eq!(c.wait_until(far()).ok(), Some(Some(i * 2)));
        }
        // Calls one after the other need no more than the floor.
        assert!(pool.threads() <= 8, "{} threads", pool.threads());
    }

    #[test]
    fn calls_that_block_each_get_a_thread() {
        // 20 calls that return only once all 20 run at once.
        let pool = CallPool::new("pool barrier");
        let n = 20;
        let barrier = Arc::new(std::sync::Barrier::new(n));
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                call(&pool, &format!("wait {i}"), move || {
                    barrier.wait();
                    i
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.wait_until(far()).ok(), Some(Some(i)));
        }
        // One thread per call that had to wait for the others, and no more: threads spawned
        // but not yet running are counted as on their way.
        let threads = pool.threads();
        assert_eq!(threads, n, "{threads} threads for {n} calls");
        // Idle above the floor, they end by themselves.
        let watchdog = far();
        while pool.threads() > pool.shared.floor {
            assert!(Instant::now() < watchdog, "{} threads left", pool.threads());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_hung_call_is_abandoned_and_its_thread_serves_again_once_it_returns() {
        let pool = CallPool::new("pool hang");
        let (hung, release) = held(&pool, "hung", 1);
        let hung = hung.wait_until(Instant::now()).unwrap_err();
        assert_eq!(hung.label(), "hung");
        let result = hung.receiver().clone();
        let mut abandoned = hung.abandon().expect("a call that runs");
        assert_eq!(abandoned.name, "hung");
        // Other calls are served meanwhile.
        let other = call(&pool, "other", || 2);
        assert_eq!(other.wait_until(far()).ok(), Some(Some(2)));
        release.send(()).unwrap();
        // The abandoned call's value is dropped (its receiver is a clone here, so it arrives).
        assert_eq!(result.recv_timeout(FAR), Ok(1));
        let watchdog = far();
        loop {
            match abandoned.try_join() {
                Ok(()) => break,
                Err(back) => {
                    assert!(Instant::now() < watchdog, "the call never ended");
                    abandoned = back;
                    std::thread::yield_now();
                }
            }
        }
    }

    #[test]
    fn a_call_abandoned_before_a_thread_took_it_never_runs() {
        let pool = CallPool::new("pool queue");
        // Every thread of the floor held, so that the next call waits in the queue.
        let floor = pool.shared.floor;
        let (release, hold) = crossbeam_channel::bounded::<()>(0);
        let (began_tx, began) = crossbeam_channel::unbounded::<()>();
        let held: Vec<_> = (0..floor)
            .map(|i| {
                let (hold, began_tx) = (hold.clone(), began_tx.clone());
                call(&pool, &format!("hold {i}"), move || {
                    began_tx.send(()).unwrap();
                    let _ = hold.recv_timeout(FAR);
                })
            })
            .collect();
        for _ in 0..floor {
            began.recv_timeout(FAR).unwrap();
        }
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let queued = call(&pool, "queued", move || flag.store(true, Ordering::SeqCst));
        // Abandoned at once: within 1 ms no thread is spawned past the floor.
        assert!(queued.abandon().is_none(), "it had not begun");
        for _ in 0..floor {
            release.send(()).unwrap();
        }
        for h in held {
            assert!(h.wait_until(far()).is_ok());
        }
        // The pool serves again, and the abandoned call was dropped, not run.
        assert_eq!(
            call(&pool, "after", || 4).wait_until(far()).ok(),
            Some(Some(4))
        );
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_call_ends_without_a_value_and_the_thread_survives() {
        let pool = CallPool::new("pool panic");
        let panicked = call(&pool, "panic", || -> u8 { panic!("boom") });
        assert!(matches!(panicked.wait_until(far()), Ok(None)));
        let after = call(&pool, "after", || 3);
        assert_eq!(after.wait_until(far()).ok(), Some(Some(3)));
    }

    #[test]
    fn closing_joins_idle_threads_and_leaves_a_hung_one() {
        let pool = CallPool::new("pool close");
        let ok = call(&pool, "ok", || ());
        assert!(ok.wait_until(far()).is_ok());
        let (hung, release) = held(&pool, "hung", ());
        let started = Instant::now();
        drop(pool);
        assert!(started.elapsed() < FAR);
        release.send(()).unwrap();
        assert!(hung.wait_until(far()).is_ok());
    }
}

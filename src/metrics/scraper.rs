//! [`Scraper`]: the endpoint's scrape thread, so that its event loops never wait for producers.

use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::thread::{later, Thread};

use super::{Format, Metrics};

/// Scrapes for the endpoint on a thread of its own (`health metrics`), so that its event loops
/// never wait for producers. Dropping it refuses the queued scrapes and joins the thread once the
/// scrape in progress is done, waiting at most the producers' longest bound and a margin: a
/// scrape stuck beyond that (in a collector of the registry, say) is abandoned, with a warning.
pub(crate) struct Scraper {
    jobs: Option<Sender<Job>>,
    stopping: Arc<AtomicBool>,
    metrics: Metrics,
    thread: Option<Thread<()>>,
}

/// What became of a scrape.
pub(crate) enum Outcome {
    /// The encoded metrics.
    Body(String),
    /// Refused: too many scrapes queued, or the endpoint is closing.
    Busy,
    /// The scrape panicked (in a metric or collector of the program's).
    Failed,
}

/// One scrape to run, and where its outcome goes.
pub(crate) struct Job {
    pub(crate) format: Format,
    pub(crate) reply: Box<dyn FnOnce(Outcome) + Send>,
}

/// Scrapes queued beyond the one in progress; more are refused.
const QUEUED_SCRAPES: usize = 4;

/// What closing waits for a scrape in progress beyond the producers' longest bound.
const SCRAPE_MARGIN: Duration = Duration::from_secs(5);

impl Scraper {
    pub(crate) fn spawn(metrics: Metrics) -> io::Result<Scraper> {
        let (jobs, incoming) = crossbeam_channel::bounded::<Job>(QUEUED_SCRAPES);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let scraped = metrics.clone();
        let thread = Thread::spawn("health metrics".to_owned(), move || {
            for job in incoming.iter() {
                if stop.load(Ordering::Acquire) {
                    (job.reply)(Outcome::Busy);
                    continue;
                }
                (job.reply)(scrape(&scraped, job.format));
            }
        })?;
        Ok(Scraper {
            jobs: Some(jobs),
            stopping,
            metrics,
            thread: Some(thread),
        })
    }

    /// Queues a scrape; gives the job back if too many are queued.
    pub(crate) fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }),
            None => Err(job),
        }
    }
}

/// Runs one scrape on the calling thread: [`Metrics::encode`], with a panic (in a metric or
/// collector of the program's) logged and turned into [`Outcome::Failed`].
pub(crate) fn scrape(metrics: &Metrics, format: Format) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| metrics.encode(format))) {
        Ok(body) => Outcome::Body(body),
        Err(_) => {
            crate::relay::error!("metrics: a scrape panicked");
            Outcome::Failed
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.jobs.take());
        let bound = self.metrics.longest_producer_bound() + SCRAPE_MARGIN;
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(thread) = thread.join_until(later(Instant::now(), bound)) {
            crate::relay::warn!(
                "thread {:?} is still in a scrape after {bound:?}; abandoning it",
                thread.name()
            );
            drop(thread.abandon());
        }
    }
}

impl fmt::Debug for Scraper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraper").finish_non_exhaustive()
    }
}

//! A log sink that blocks (a logger stuck writing to a full pipe) never blocks the library: the
//! runner starts, its endpoint answers probes, and it shuts down within its bounds; the lines
//! the sink could not take in time are dropped and counted, and the count is logged once it
//! takes lines again.
//!
//! Alone in its file, so alone in its process: it installs the process's logger.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::http::Client;
use common::{eventually, WATCHDOG};
use crossbeam_channel::{Receiver, Sender};
use lifecycle::{HealthChecker, Runner, Worker};
use log::{Log, Metadata, Record};
use parking_lot::Mutex;

/// A logger that, while stuck, blocks in `log` until released (or the watchdog passes).
struct StuckLogger {
    stuck: AtomicBool,
    release: Mutex<Option<Receiver<()>>>,
    lines: Mutex<Vec<String>>,
}

impl Log for StuckLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        if self.stuck.load(Ordering::SeqCst) {
            let release = self.release.lock().clone();
            if let Some(release) = release {
                let _ = release.recv_timeout(2 * WATCHDOG);
            }
        }
        self.lines.lock().push(record.args().to_string());
    }
    fn flush(&self) {}
}

static LOGGER: StuckLogger = StuckLogger {
    stuck: AtomicBool::new(true),
    release: Mutex::new(None),
    lines: Mutex::new(Vec::new()),
};

#[test]
fn a_stuck_log_sink_blocks_no_start_no_probe_and_no_shutdown() {
    let (release, released): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
    *LOGGER.release.lock() = Some(released);
    log::set_logger(&LOGGER).expect("the only logger of this process");
    log::set_max_level(log::LevelFilter::Debug);

    let runner = Runner::new()
        .handle_signals(false)
        .health_endpoint("127.0.0.1:0".parse().unwrap())
        .service(Worker::new("db", |stop| {
            stop.wait();
            Ok(())
        }));
    let handle = runner.handle();
    let (done, report) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done.send(runner.run());
    });
    assert!(
        handle.wait_running(WATCHDOG),
        "the runner started with the sink stuck"
    );
    let addr = handle.health_addr().expect("the endpoint listens");
    for path in ["/livez", "/readyz", "/healthz"].repeat(20) {
        assert_eq!(Client::connect(addr).get(path).status, 200, "{path}");
    }

    // More lines than the queue holds: the rest are dropped, not waited for.
    let checker = HealthChecker::new("1", "abc");
    for i in 0..1000 {
        let name = format!("check {i}");
        checker
            .register(lifecycle::health::from_fn(name.clone(), || Ok(())))
            .unwrap();
        checker.unregister(&name).unwrap();
    }

    handle.shutdown();
    let report = report
        .recv_timeout(WATCHDOG)
        .expect("the run returned with the sink stuck");
    assert!(report.is_success(), "{:?}", report.error());

    LOGGER.stuck.store(false, Ordering::SeqCst);
    drop(release);
    eventually("the dropped lines are counted in the log", || {
        LOGGER
            .lines
            .lock()
            .iter()
            .any(|l| l.contains("log line(s) of lifecycle dropped"))
    });
    // The queued lines were written in order: the run's first line is there.
    let lines = LOGGER.lines.lock();
    assert!(lines.iter().any(|l| l == "db: starting"), "{lines:#?}");
}

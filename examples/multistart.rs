//! `MultiStart` on its own, without the runner: three heartbeat workers started in order, run
//! for a while, closed in reverse.
//!
//! ```text
//! RUST_LOG=debug cargo run --example multistart
//! cargo run --example multistart -- --fail beta
//! ```
//!
//! `--fail NAME` makes that worker fail to start: the ones started before it are closed again,
//! in reverse, and the error names it.

use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lifecycle::{
    HealthReporter, MultiStart, Result, Service, StartContext, StateMachine, StopSignal,
};
use parking_lot::Mutex;

/// A worker that logs a heartbeat every 100 ms: `start` spawns its named thread, `close` stops
/// and joins it.
struct Heartbeat {
    name: &'static str,
    fail: bool,
    sm: StateMachine,
    stop: StopSignal,
    thread: Mutex<Option<JoinHandle<u32>>>,
}

impl HealthReporter for Heartbeat {
    fn name(&self) -> &str {
        self.name
    }
    fn ready(&self) -> Result<()> {
        self.sm.ready()
    }
}

impl Service for Heartbeat {
    fn start(&self, _ctx: &StartContext) -> Result<()> {
        self.sm.start_once(|| {
            if self.fail {
                return Err("injected start failure (--fail)".into());
            }
            let (name, stop) = (self.name, self.stop.clone());
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut beats = 0;
                    while !stop.wait_timeout(Duration::from_millis(100)) {
                        beats += 1;
                        log::debug!("{name}: beat {beats}");
                    }
                    beats
                })?;
            *self.thread.lock() = Some(thread);
            log::info!("{name}: started");
            Ok(())
        })
    }

    fn close(&self) -> Result<()> {
        self.sm.close_once(|| {
            self.stop.stop();
            if let Some(thread) = self.thread.lock().take() {
                let beats = thread.join().map_err(|_| "heartbeat thread panicked")?;
                log::info!("{}: closed after {beats} beats", self.name);
            }
            Ok(())
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fail = match args.as_slice() {
        [] => None,
        [flag, name] if flag == "--fail" => Some(name.clone()),
        _ => {
            eprintln!("usage: multistart [--fail alpha|beta|gamma]");
            return ExitCode::from(2);
        }
    };

    let services: Vec<Arc<dyn Service>> = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|name| {
            Arc::new(Heartbeat {
                name,
                fail: fail.as_deref() == Some(name),
                sm: StateMachine::new(),
                stop: StopSignal::new(),
                thread: Mutex::new(None),
            }) as Arc<dyn Service>
        })
        .collect();

    let group = MultiStart::new();
    if let Err(e) = group.start(&StartContext::background(), services) {
        log::error!("start failed, rolled back: {e}");
        return ExitCode::FAILURE;
    }
    std::thread::sleep(Duration::from_millis(350));
    match group.close() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("close: {e}");
            ExitCode::FAILURE
        }
    }
}

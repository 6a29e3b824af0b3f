//! A fleet of N trivial thread services run by `lifecycle::Runner`, for measuring the runner
//! from outside the process (BENCHMARKS.md, "Whole process: N services").
//!
//! ```text
//! cargo run --release --example fleet -- --services 100
//! cargo run --example fleet -- --help
//! ```
//!
//! Each service is a [`Worker`] whose thread waits on its stop signal. The program prints one
//! line, `ready`, on standard output when the run phase begins (every service started and
//! ready), and nothing else there; its log goes to standard error (`RUST_LOG`, default `warn`).
//! SIGINT or SIGTERM shuts it down: exit code 0 after a graceful shutdown, 1 if anything
//! failed, 2 for a usage error.
//!
//! By default the services are independent (`ServiceOptions::independent`): they start and
//! close in parallel. `--chain` makes them one chain, each needing the one before it (the
//! runner's rule for services that declare nothing: the list order), so they start one after
//! another and close in reverse.

use std::process::ExitCode;
use std::time::Duration;

use lifecycle::{Runner, ServiceOptions, Worker};

const USAGE: &str = "usage: fleet [--services N] [--chain] [--help]";

/// What `--help` prints after [`USAGE`].
const HELP: &str = "\
Runs N trivial thread services until SIGINT or SIGTERM, then closes them. Prints one line,
`ready`, on standard output when every service has started (its only standard output).

  --services N  how many services, each a Worker whose thread waits on its stop signal [default: 10]
  --chain       the services as one chain, each needing the one before it (started one
                after another, closed in reverse); by default they are independent and
                start and close in parallel
  -h, --help    prints this

Exit codes: 0 after a graceful shutdown, 1 if anything failed, 2 for a usage error.
RUST_LOG sets the log filter on standard error (default warn).
";

struct Args {
    services: usize,
    chain: bool,
}

/// Parses the flags (`--services N` or `--services=N`); `None` for `--help`.
fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        services: 10,
        chain: false,
    };
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--chain" if inline.is_none() => args.chain = true,
            "--services" => {
                let value: String = inline
                    .or_else(|| it.next())
                    .ok_or("--services needs a value")?;
                args.services = match value.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--services: {value:?} is not a positive integer")),
                };
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}\n\n{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fleet: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    // A service that declares nothing needs every one added before it: the chain. Independent
    // ones say so.
    let (prefix, options) = if args.chain {
        ("link", ServiceOptions::new())
    } else {
        ("service", ServiceOptions::new().independent())
    };
    let runner = (0..args.services).fold(Runner::new(), |runner, i| {
        let worker = Worker::new(format!("{prefix}-{i}"), |stop| {
            stop.wait();
            Ok(())
        });
        runner.service_with(worker, options.clone())
    });

    // Prints `ready` once the run phase begins; ends without printing if a shutdown comes first.
    let handle = runner.handle();
    let announcer = std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || loop {
            if handle.wait_running(Duration::from_secs(3600)) {
                println!("ready");
                return;
            }
            if handle.is_shutting_down() {
                return;
            }
        })
        .expect("spawn the ready thread");

    let report = runner.run();
    let _ = announcer.join();
    report.exit_code()
}

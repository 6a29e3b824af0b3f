//! `Worker`: services from closures, through the public API.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::WATCHDOG;
use crossbeam_channel::{bounded, Receiver, Sender};
use lifecycle::health::Status;
use lifecycle::{
    ErrorKind, HealthChecker, HealthReporter, MultiStart, Phase, RunPhase, Runner, Service,
    ShutdownCause, StartContext, Worker,
};

fn runner() -> Runner {
    Runner::new().handle_signals(false)
}

#[test]
fn a_worker_runs_its_closure_on_a_thread_named_after_it_until_closed() {
    let (named_tx, named) = bounded(1);
    let heartbeat = Worker::new("heartbeat", move |stop| {
        named_tx.send(std::thread::current().name().map(str::to_owned))?;
        while !stop.wait_timeout(Duration::from_millis(1)) {}
        Ok(())
    });
    let services = MultiStart::start_all([heartbeat]).unwrap();
    assert_eq!(
        named.recv_timeout(WATCHDOG).unwrap().as_deref(),
        Some("heartbeat")
    );
    services.close().unwrap();
}

#[test]
fn a_worker_is_ready_once_started_and_not_after_its_close() {
    let worker = Arc::new(Worker::new("w", |stop| {
        stop.wait();
        Ok(())
    }));
    assert_eq!(worker.ready().unwrap_err().kind(), ErrorKind::NotStarted);
    worker.start(&StartContext::background()).unwrap();
    assert!(worker.ready().is_ok());
    worker.close().unwrap();
    assert_eq!(worker.ready().unwrap_err().kind(), ErrorKind::NotStarted);
    let again = worker.close().unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyClosed);
    assert_eq!(again.service(), Some("w"));
}

#[test]
fn the_readiness_hook_holds_the_runner_until_the_worker_has_set_up() {
    let (connect_tx, connect) = bounded::<()>(0);
    let connected = Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    let consumer = Worker::new("consumer", move |stop| {
        connect.recv()?; // connecting to a broker, say
        flag.store(true, Ordering::SeqCst);
        stop.wait();
        Ok(())
    })
    .ready_when(move |_| match connected.load(Ordering::SeqCst) {
        true => Ok(()),
        false => Err("connecting".into()),
    });
    let runner = runner().service(consumer);
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        // It cannot be ready before it has connected, however long this waits.
        assert!(!handle.wait_running(Duration::from_millis(50)));
        connect_tx.send(()).unwrap();
        assert!(handle.wait_running(WATCHDOG), "ready once connected");
        handle.shutdown();
        let report = run.join().unwrap();
        assert!(report.is_success(), "{report:?}");
    });
}

#[test]
fn a_panic_in_the_run_closure_keeps_its_message_and_the_worker_fails_its_checks() {
    let (go_tx, go) = bounded::<()>(0);
    let worker = Arc::new(Worker::new("parser", move |_stop| {
        go.recv()?;
        panic!("unexpected byte 0x{:02x}", 0xff)
    }));
    let checker = HealthChecker::builder("t", "t")
        .interval(Duration::from_millis(5))
        .build();
    let events = checker.subscribe();
    checker.register(worker.clone()).unwrap();
    let services = MultiStart::start_all([worker.clone()]).unwrap();
    checker.start(&StartContext::background()).unwrap();
    go_tx.send(()).unwrap();
    // Event-driven: the checker reports the readiness it now sees failing.
    let failed = loop {
        let e = events.recv_timeout(WATCHDOG).expect("the failure is seen");
        if e.new_status() == Status::Failing {
            break e;
        }
    };
    let reason = failed.reason().unwrap();
    assert!(reason.is_panic(), "{reason}");
    assert_eq!(
        reason.to_string(),
        "parser: panicked in run: unexpected byte 0xff"
    );
    assert_eq!(worker.ready().unwrap_err().phase(), Some(Phase::Run));
    checker.close().unwrap();
    // Without a runner to report it to, the close returns the failure.
    let closed = services.close().unwrap_err();
    assert!(closed.is_panic());
    assert_eq!(closed.service(), Some("parser"));
}

#[test]
fn under_a_runner_a_failing_closure_shuts_the_program_down_with_its_error() {
    let (fail_tx, fail) = bounded::<()>(0);
    let (closed_tx, closed) = bounded::<&str>(4);
    let other_closed = closed_tx.clone();
    let pool = Worker::new("pool", move |stop| {
        stop.wait();
        other_closed.send("pool").unwrap();
        Ok(())
    });
    let ingest = Worker::new("ingest", move |stop| {
        crossbeam_channel::select! {
            recv(fail) -> _ => Err("lost the queue".into()),
            recv(stop.receiver()) -> _ => {
                closed_tx.send("ingest").unwrap();
                Ok(())
            }
        }
    });
    let runner = runner().service(pool).service(ingest);
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        assert!(handle.wait_running(WATCHDOG));
        fail_tx.send(()).unwrap();
        let report = run.join().unwrap();
        assert_eq!(report.cause(), &ShutdownCause::Fatal);
        let errors = report.errors(RunPhase::Run);
        assert_eq!(errors.len(), 1, "{report:?}");
        assert_eq!(errors[0].to_string(), "ingest: run failed: lost the queue");
        // Reported once: not again as the close's error.
        assert!(report.errors(RunPhase::Shutdown).is_empty(), "{report:?}");
        assert_eq!(closed.recv_timeout(WATCHDOG).unwrap(), "pool");
    });
}

#[test]
fn a_closure_that_finishes_its_work_is_no_failure() {
    let (done_tx, done) = bounded::<()>(1);
    let migrate = Worker::new("migrate", move |_stop| {
        done_tx.send(())?;
        Ok(())
    });
    let runner = runner().service(migrate);
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        assert!(handle.wait_running(WATCHDOG));
        done.recv_timeout(WATCHDOG).unwrap();
        handle.shutdown();
        let report = run.join().unwrap();
        assert_eq!(report.cause(), &ShutdownCause::Requested);
        assert!(report.is_success(), "{report:?}");
    });
}

/// The setup's value: records when it is dropped.
struct Listener {
    listener: TcpListener,
    log: Sender<&'static str>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.log.send("value dropped");
    }
}

fn serve(log: Sender<&'static str>) -> Worker<Listener> {
    let run_log = log.clone();
    Worker::with_setup(
        "api",
        move |_ctx| {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            Ok(Listener { listener, log })
        },
        move |value, stop| {
            for conn in value.listener.incoming() {
                if stop.is_stopped() {
                    break;
                }
                drop(conn?);
            }
            run_log.send("run returned")?;
            Ok(())
        },
    )
    .on_close(|value| {
        // accept() does not watch the stop signal: a connection wakes it.
        let _ = TcpStream::connect(value.listener.local_addr().unwrap());
    })
}

#[test]
fn setup_then_serve_wakes_the_blocking_run_and_drops_the_value_after_the_join() {
    let (log_tx, log) = bounded(8);
    let services = MultiStart::start_all([serve(log_tx)]).unwrap();
    services.close().unwrap();
    let order: Vec<_> = log.try_iter().collect();
    assert_eq!(order, ["run returned", "value dropped"]);
}

#[test]
fn a_failing_setup_is_a_start_failure_that_rolls_back() {
    let (log_tx, log): (Sender<&str>, Receiver<&str>) = bounded(8);
    let pool = Arc::new(Worker::new("pool", |stop| {
        stop.wait();
        Ok(())
    }));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let run_log = log_tx.clone();
    let api = Worker::with_setup(
        "api",
        move |_ctx| {
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}").into())
        },
        move |_listener: &TcpListener, _stop| {
            run_log.send("ran")?;
            Ok(())
        },
    );
    let services = MultiStart::new();
    services
        .start(&StartContext::background(), [pool.clone()])
        .unwrap();
    let e = services
        .start(&StartContext::background(), [api])
        .unwrap_err();
    assert_eq!((e.service(), e.phase()), (Some("api"), Some(Phase::Start)));
    assert!(e
        .to_string()
        .starts_with(&format!("api: start failed: cannot listen on {addr}")));
    assert!(pool.ready().is_err(), "the started pool was closed again");
    drop(log_tx);
    assert!(log.try_iter().next().is_none(), "the run closure never ran");
}

#[test]
fn worker_names_are_checked_before_anything_starts() {
    let (ran_tx, ran) = bounded::<()>(1);
    let unnamed = Worker::new("", |stop| {
        stop.wait();
        Ok(())
    });
    let first = Worker::new("first", move |stop| {
        ran_tx.send(())?;
        stop.wait();
        Ok(())
    });
    let report = runner().service(first).service(unnamed).run();
    let e = &report.errors(RunPhase::Start)[0];
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(ran.try_recv().is_err(), "nothing started");
}

#[test]
fn a_failure_while_the_program_shuts_down_is_kept_in_the_report() {
    let (fail_tx, fail) = bounded::<()>(1);
    // Started first, closed last: it fails while the service after it closes.
    let ingest = Arc::new(Worker::new("ingest", move |stop| {
        crossbeam_channel::select! {
            recv(fail) -> _ => Err("lost the queue while draining".into()),
            recv(stop.receiver()) -> _ => Ok(()),
        }
    }));
    let failing = ingest.clone();
    let api = Worker::new("api", move |stop| {
        stop.wait();
        fail_tx.send(())?;
        // The close of the api returns once ingest has failed, before ingest is closed (its
        // failure's report is sent before its thread ends, which its close joins).
        let deadline = std::time::Instant::now() + WATCHDOG;
        while failing.ready().is_ok() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        Ok(())
    });
    let runner = runner().service(ingest).service(api);
    let handle = runner.handle();
    std::thread::scope(|s| {
        let run = s.spawn(|| runner.run());
        assert!(handle.wait_running(WATCHDOG));
        handle.shutdown();
        let report = run.join().unwrap();
        assert_eq!(report.cause(), &ShutdownCause::Requested);
        assert!(!report.is_success(), "{report:?}");
        let errors = report.errors(RunPhase::Run);
        assert_eq!(errors.len(), 1, "{report:?}");
        assert_eq!(
            errors[0].to_string(),
            "ingest: run failed: lost the queue while draining"
        );
    });
}

#[test]
fn a_started_worker_dropped_without_a_close_is_stopped_and_joined() {
    let (ended_tx, ended) = bounded::<()>(1);
    let worker = Worker::new("forgotten", move |stop| {
        stop.wait();
        ended_tx.send(())?;
        Ok(())
    });
    worker.start(&StartContext::background()).unwrap();
    drop(worker);
    // The drop joined the thread: it has ended already, not merely been told to.
    assert!(ended.try_recv().is_ok());
}

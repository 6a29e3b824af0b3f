//! An endless header line against the health endpoint: the connection is cut after a small
//! bound, and the process's peak memory stays where it was.
//!
//! Alone in its file, so alone in its process: other tests allocating at the same time would
//! move the peak too.

mod common;

use std::io::Write;

use common::fixture::{assert_health_json, Fixture};
use common::http::{self, Client};
use common::procfs;
use lifecycle::health::EndpointOptions;

const FLOOD: usize = 256 * 1024 * 1024;

#[test]
fn an_endless_header_line_is_cut_early_and_peak_memory_stays_flat() {
    let f = Fixture::new(EndpointOptions::new());
    f.wait_ready();
    let mut c = Client::connect(f.addr());
    let mut writer = c.stream.try_clone().unwrap();
    let chunk = vec![b'a'; 64 * 1024];

    let hwm_before = procfs::status_field("VmHWM");
    let rss_before = procfs::status_field("VmRSS");
    let (written, error, reply) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut written = 0;
            let mut error = None;
            let head = b"GET /readyz HTTP/1.1\r\nHost: x\r\nX: ";
            if let Err(e) = writer.write_all(head) {
                error = Some(e);
            }
            // No line end, ever; stop at the first failed write.
            while error.is_none() && written < FLOOD {
                let n = chunk.len().min(FLOOD - written);
                match writer.write(&chunk[..n]) {
                    Ok(n) => written += n,
                    Err(e) => error = Some(e),
                }
            }
            (written, error)
        });
        // Read while it writes: a 431, or the connection closed (under the watchdog).
        let reply = c.reply();
        let (written, error) = w.join().unwrap();
        (written, error, reply)
    });
    let hwm_after = procfs::status_field("VmHWM");
    let rss_after = procfs::status_field("VmRSS");
    eprintln!(
        "endless header line: wrote {written} of {FLOOD} bytes before {error:?}; answer {:?}; \
         VmHWM {hwm_before} kB -> {hwm_after} kB (+{} kB); VmRSS {rss_before} kB -> {rss_after} kB",
        reply.as_ref().map(|r| r.status),
        hwm_after.saturating_sub(hwm_before),
    );
    if let Some(r) = &reply {
        assert_eq!(r.status, 431, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
    }
    // The server cut the connection: the writer failed long before it had written everything
    // (it got as far as the socket buffers on both sides absorb).
    let error = error.expect("the server never cut the endless header line");
    assert!(http::is_reset(&error), "the writer failed with {error}");
    assert!(written < FLOOD);
    assert!(c.until_closed().is_empty());
    // Peak memory: the flood was never buffered.
    let growth_kib = hwm_after.saturating_sub(hwm_before);
    assert!(
        growth_kib < 8 * 1024,
        "peak RSS grew by {growth_kib} kB during the flood"
    );
    let r = Client::connect(f.addr()).get("/readyz");
    assert_eq!(r.status, 200);
    assert_health_json(&r, "readiness of every check");
}

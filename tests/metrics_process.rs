//! The `process_*` families at `/metrics` over a real socket, in both formats, parsed by an
//! independent parser (Python's `prometheus_client`), named, typed and described as the
//! Prometheus client libraries export them, with values that match what this test reads from
//! `/proc/self` itself around each scrape.
//!
//! The test reads its own values from other files than the crate where it can
//! (`/proc/self/status` for threads and memory, `/proc/self/limits` for the descriptor limit,
//! `std::fs::read_dir` for the descriptors), so a wrong field, unit or page size in the crate
//! shows.
#![cfg(feature = "metrics")]

mod common;

#[cfg(target_os = "linux")]
mod linux {
    use std::time::Instant;

    use super::common::fixture::Fixture;
    use super::common::http::Client;
    use super::common::procfs::status_field;
    use super::common::prom::{self, family, value, Family};
    use super::common::WATCHDOG;
    use lifecycle::health::EndpointOptions;
    use lifecycle::metrics::Metrics;

    /// The process families: name in the parsers, type, help.
    const FAMILIES: [(&str, &str, &str); 6] = [
        (
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
        ),
    ];

    /// What the test reads from `/proc/self` itself.
    #[derive(Debug, Clone, Copy)]
    struct Proc {
        cpu_seconds: f64,
        resident_bytes: f64,
        /// `VmRSS` of `/proc/self/status`: the exact count of resident pages.
        status_resident_bytes: f64,
        virtual_bytes: f64,
        open_fds: f64,
        max_fds: f64,
        threads: f64,
    }

    /// `utime` + `stime` of `/proc/self/stat`, in seconds.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        // Fields 14 and 15; field 3 is the first after the command name.
        let ticks: u64 =
            fields[14 - 3].parse::<u64>().unwrap() + fields[15 - 3].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ticks as f64 / hz as f64
    }

    /// `rss` of `/proc/self/stat` (field 24) times the page size: the kernel's approximate count
    /// of resident pages, which the client libraries report.
    fn stat_resident_bytes() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let pages: f64 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(24 - 3)
            .unwrap()
            .parse()
            .unwrap();
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64
    }

    /// The soft limit of `Max open files` in `/proc/self/limits`.
    fn max_fds() -> f64 {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files");
        line["Max open files".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn read() -> Proc {
        Proc {
            cpu_seconds: cpu_seconds(),
            resident_bytes: stat_resident_bytes(),
            status_resident_bytes: (status_field("VmRSS") * 1024) as f64,
            virtual_bytes: (status_field("VmSize") * 1024) as f64,
            // Counted as the client libraries count: the descriptor reading the directory too.
            open_fds: std::fs::read_dir("/proc/self/fd").unwrap().count() as f64,
            max_fds: max_fds(),
            threads: status_field("Threads") as f64,
        }
    }

    /// Scrapes `/metrics` on `client` in `format`, checks the answer's content type and the
    /// families' descriptor lines as written, and parses it.
    fn scrape(client: &mut Client, format: &str) -> (String, Option<Vec<Family>>) {
        let accept = match format {
            "openmetrics" => "application/openmetrics-text;version=1.0.0",
            _ => "text/plain;version=0.0.4",
        };
        client.send(format!(
            "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: {accept}\r\n\r\n"
        ));
        let reply = client.reply().expect("the scrape's answer");
        assert_eq!(reply.status, 200, "{reply:?}");
        let content_type = reply.header("content-type").unwrap_or("");
        assert!(content_type.starts_with(match format {
            "openmetrics" => "application/openmetrics-text; version=1.0.0",
            _ => "text/plain; version=0.0.4",
        }));
        let text = reply.body;
        // As client_golang writes them in 0.0.4; OpenMetrics names the counter family without
        // `_total` and gives units.
        let cpu = match format {
            "openmetrics" => {
                "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n\
                 process_cpu_seconds_total "
            }
            _ => {
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in \
                 seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "
            }
        };
        assert!(text.contains(cpu), "{text}");
        for (name, typ, help) in &FAMILIES[1..] {
            let descriptor = format!("# HELP {name} {help}\n# TYPE {name} {typ}\n");
            assert!(text.contains(&descriptor), "{descriptor:?} in:\n{text}");
        }
        if format == "openmetrics" {
            for name in [
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes",
            ] {
                assert!(text.contains(&format!("# UNIT {name} bytes\n")), "{text}");
            }
        } else {
            assert!(!text.contains("# UNIT"), "{text}");
        }
        let parsed = prom::parse(format, &text);
        (text, parsed)
    }

    /// Asserts that `scraped` lies between what the test read before and after the scrape,
    /// widened by `slack` on both sides.
    #[track_caller]
    fn between(what: &str, scraped: f64, before: f64, after: f64, slack: f64) {
        let (low, high) = (before.min(after) - slack, before.max(after) + slack);
        assert!(
            (low..=high).contains(&scraped),
            "{what}: scraped {scraped}, read {before} before and {after} after (slack {slack})"
        );
    }

    #[test]
    fn process_metrics_match_proc_in_both_formats() {
        // A test process that has just started may have used no whole clock tick of CPU yet:
        // use some, so that the counter must be positive.
        let began = Instant::now();
        let mut spin = 0_u64;
        while cpu_seconds() == 0.0 {
            assert!(began.elapsed() < WATCHDOG, "no CPU time counted");
            spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(1));
        }

        let served = Fixture::new(EndpointOptions::new().metrics(Metrics::new()));
        served.wait_ready();
        // One keep-alive connection, accepted before the first read: its two sockets (ours and
        // the endpoint's) are open through every read and scrape below.
        let mut client = Client::connect(served.addr());
        assert_eq!(client.get("/livez").status, 200);

        let mut last_cpu = 0.0;
        for format in ["openmetrics", "prometheus", "openmetrics", "prometheus"] {
            let before = read();
            let (text, parsed) = scrape(&mut client, format);
            let after = read();
            let Some(families) = parsed else {
                continue; // the parser is missing and skipped on purpose (see common::prom)
            };
            for (name, typ, help) in FAMILIES {
                let f = family(&families, name);
                assert_eq!((f.typ.as_str(), f.help.as_str()), (typ, help), "{name}");
                assert_eq!(f.samples.len(), 1, "{name}: {f:?}");
            }
            let get = |sample| {
                value(&families, sample, &[]).unwrap_or_else(|| panic!("{sample} in {text}"))
            };

            // The limit is changed by no one: exactly what /proc/self/limits says.
            assert_eq!(get("process_max_fds"), before.max_fds);
            assert_eq!(before.max_fds, after.max_fds);

            // CPU time only grows, is read from the same /proc/self/stat fields, so it lies
            // exactly between the test's two reads; and it never goes down between scrapes.
            let cpu = get("process_cpu_seconds_total");
            assert!(cpu > 0.0, "{cpu}");
            between(
                "cpu seconds",
                cpu,
                before.cpu_seconds,
                after.cpu_seconds,
                0.0,
            );
            assert!(cpu <= after.cpu_seconds);
            assert!(cpu >= last_cpu, "{cpu} after {last_cpu}");
            last_cpu = cpu;

            // Threads: every thread of the endpoint and the checker exists through the scrape,
            // so the count is the test's; 2 of slack for threads that begin and end between
            // the test's reads and so show in neither (the crate's `lifecycle log` thread, which
            // comes with a log line and goes after 1 s without any; a joined thread the kernel
            // still counts for a moment).
            between(
                "threads",
                get("process_threads"),
                before.threads,
                after.threads,
                2.0,
            );

            // Descriptors: the connection's two sockets are open throughout, and the scrape
            // opens none but the one that reads /proc/self/fd, as the test's read does; 2 of
            // slack for a descriptor that something else of the process (the test harness)
            // holds for a moment between the reads.
            between(
                "open fds",
                get("process_open_fds"),
                before.open_fds,
                after.open_fds,
                2.0,
            );

            // Memory moves while the scrape encodes and answers (its buffers, the allocator
            // taking and returning memory): 1 MiB of slack around the test's reads of the same
            // counter.
            let mib = 1024.0 * 1024.0;
            let resident = get("process_resident_memory_bytes");
            between(
                "resident bytes",
                resident,
                before.resident_bytes,
                after.resident_bytes,
                mib,
            );
            // Against another file, for the unit and the page size: /proc/self/stat's count is
            // the kernel's approximate one (per-CPU or per-thread caches not yet folded in,
            // a few hundred KiB here), /proc/self/status sums them. A wrong unit (pages, kB)
            // or field (virtual memory) is off by far more than this.
            between(
                "resident bytes, against VmRSS",
                resident,
                before.status_resident_bytes,
                after.status_resident_bytes,
                mib + before.status_resident_bytes / 5.0,
            );
            // VmSize (kB) is the counter that /proc/self/stat gives in bytes; a thread's stack
            // (8 MiB) may come or go between the reads.
            between(
                "virtual bytes",
                get("process_virtual_memory_bytes"),
                before.virtual_bytes,
                after.virtual_bytes,
                16.0 * mib,
            );
        }
        // Read after every scrape, the test's CPU time is at least the last scraped one.
        assert!(last_cpu <= cpu_seconds());
        drop(client);
        served.close();
    }
}

/// Elsewhere than on Linux the families are absent; the start time stays.
#[cfg(not(target_os = "linux"))]
#[test]
fn process_families_are_absent_elsewhere() {
    use lifecycle::metrics::{Format, Metrics};

    let text = Metrics::new().encode(Format::OpenMetrics);
    assert!(text.contains("process_start_time_seconds"), "{text}");
    for name in [
        "process_cpu_seconds",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_threads",
    ] {
        assert!(!text.contains(name), "{name} in {text}");
    }
}

//! The demo's command line, as a real child process: its flags as the README lists them and
//! `--help` prints them, its usage errors, and a host name as an address.

mod common;
mod demo;

use std::net::ToSocketAddrs;

use common::http;
use common::process::{example, run_to_end};
use demo::{demo, health_addr};

/// The rows of the README's table of the demo's flags: each row's flags (`--fail` of
/// `` `--fail NAME` ``; `-h` and `--help` of `` `-h`, `--help` ``) and its default (empty if none).
fn readme_flags() -> Vec<(Vec<String>, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## The demo\n")
        .nth(1)
        .expect("README.md has a section \"## The demo\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<(Vec<String>, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row of flag, default, what: {row}");
            let flags = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|f| f.split(' ').next().unwrap_or(f).to_owned())
                .collect();
            (flags, cells[1].trim_matches('`').to_owned())
        })
        .collect();
    assert!(rows.len() >= 9, "the README's table of flags: {rows:?}");
    rows
}

/// The words of a line of `--help`, flags among them (`-h, --help` is two).
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn help_prints_every_flag_of_the_readme_with_its_default() {
    let out = run_to_end(&example("demo"), &["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stderr, "", "--help writes to standard output only");
    assert!(out.stdout.starts_with("usage: demo "), "{}", out.stdout);
    let flags = readme_flags();
    for (row, default) in &flags {
        let line = out
            .stdout
            .lines()
            .find(|l| row.iter().all(|f| words(l).contains(&f.as_str())))
            .unwrap_or_else(|| panic!("--help has no line for {row:?}:\n{}", out.stdout));
        if !default.is_empty() {
            assert!(
                line.ends_with(&format!("[default: {default}]")),
                "--help says another default than the README's {default:?} for {row:?}: {line}"
            );
        }
    }
    // And the other way: every flag that --help describes is in the README.
    let documented: Vec<&String> = flags.iter().flat_map(|(row, _)| row).collect();
    for line in out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
    {
        let flag = words(line)[0];
        assert!(
            documented.iter().any(|f| *f == flag),
            "--help describes {flag}, the README's table does not: {line}"
        );
    }
    assert_eq!(run_to_end(&example("demo"), &["-h"]).stdout, out.stdout);
}

/// Runs the demo with `args`, which must be a usage error: exit code 2, no panic, the usage line,
/// and a message with every one of `named`; returns its standard error.
#[track_caller]
fn usage_error(args: &[&str], named: &[&str]) -> String {
    let out = run_to_end(&example("demo"), args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    assert!(
        out.stderr.contains("\nusage: demo "),
        "{args:?}: {}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "{args:?}");
    let message = out.stderr.lines().next().unwrap_or_default();
    for name in named {
        assert!(
            message.contains(name),
            "{args:?}: no {name:?} in {message:?}"
        );
    }
    out.stderr
}

#[test]
fn an_unknown_service_or_a_bad_duration_is_a_usage_error() {
    usage_error(
        &["--fail", "nosuch"],
        &["--fail", "nosuch", "pool", "worker", "api"],
    );
    usage_error(
        &["--hang-close", "Pool"],
        &["--hang-close", "Pool", "pool", "worker", "api"],
    );
    // Too large for a `Duration`, negative, not a number, NaN.
    for bad in ["1e30", "-1", "abc", "NaN"] {
        usage_error(&["--close-timeout", bad], &["--close-timeout", bad]);
    }
    usage_error(&["--shutdown-timeout=inf"], &["--shutdown-timeout", "inf"]);
    usage_error(&["--close-timeout"], &["--close-timeout"]);
    usage_error(&["--stop-timeout", "1"], &["--stop-timeout"]);
    usage_error(&["--api-addr", "localhost"], &["--api-addr", "localhost"]);
}

#[test]
fn a_host_name_works_as_the_health_address() {
    if ("localhost", 0)
        .to_socket_addrs()
        .map_or(true, |mut a| a.next().is_none())
    {
        eprintln!("skipped: `localhost` does not resolve on this machine");
        return;
    }
    let mut p = demo(&["--health-addr", "localhost:0"]);
    let addr = health_addr(&mut p);
    assert!(addr.ip().is_loopback(), "{addr}");
    p.wait_for("; running");
    http::wait_status(addr, "/readyz", 200);
    p.signal(libc::SIGTERM);
    let (status, log) = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
}

//! The deployment files in `deploy/` against the demo they deploy: the numbers of the systemd
//! units and of the Kubernetes Deployment must hold for the settings the demo runs with, so that
//! a change of the demo's defaults (or of a file) that breaks one fails here, naming the rule.
//!
//! The demo's settings are never copied here: each file's command line (`ExecStart=`, the
//! container's `args`) is run with `--print-config`, and the demo prints what those flags give,
//! its defaults included. The files are read by two readers written for them, below: an
//! INI-like one for the units and a line-based one for the few YAML forms the manifest uses
//! (block maps and lists, plain and quoted scalars), which refuses anything else, so that no
//! new dependency (nor Python's yaml, which a fresh machine may lack) is needed.
//!
//! The rules, and the assumptions they rest on, are the constants and the comments of
//! [`systemd_rules`] and [`kubernetes_rules`]; `a_demo_that_outgrows_the_files_breaks_the_rules`
//! shows that each rule fails when the demo's settings outgrow a file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{example, run_to_end};

/// What the process needs after the runner's shutdown, before a supervisor's SIGKILL: the log's
/// last lines (the relay waits for them at most 1 s) and the exit itself.
const MARGIN: Duration = Duration::from_secs(5);
/// How long after its start timeout the runner abandons a start that has not returned (the
/// runner's docs, *Hung starts*).
const START_GRACE: Duration = Duration::from_secs(1);
/// Assumed: how long the endpoints (the endpoints controller, kube-proxy, ingress controllers)
/// take to stop sending traffic to a pod once it is not ready or is being deleted.
const ENDPOINT_PROPAGATION: Duration = Duration::from_secs(5);

const SERVICE_UNIT: &str = "lifecycle-demo.service";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The demo's settings.

/// What `demo ARGS --print-config` prints.
#[derive(Debug, Clone)]
struct Settings {
    health_addr: SocketAddr,
    api_addr: SocketAddr,
    termination_delay: Duration,
    shutdown_timeout: Duration,
    start_timeout: Duration,
    /// In start order; each starts once the one before it is ready.
    services: Vec<String>,
    check_interval: Duration,
    /// How long a new process of an upgrade (SIGHUP) may take to be ready.
    upgrade_timeout: Duration,
}

/// The settings the demo runs with under `args`.
fn settings(args: &[String]) -> Settings {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.push("--print-config");
    let out = run_to_end(&example("demo"), &all);
    assert_eq!(out.status.code(), Some(0), "demo {all:?}: {out:?}");
    let value = |name: &str| -> &str {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("--print-config printed no {name}:\n{}", out.stdout))
    };
    let secs = |name: &str| -> Duration {
        let v = value(name);
        Duration::from_secs_f64(v.parse().unwrap_or_else(|_| panic!("{name} {v:?}")))
    };
    let addr = |name: &str| -> SocketAddr {
        let v = value(name);
        v.parse().unwrap_or_else(|_| panic!("{name} {v:?}"))
    };
    Settings {
        health_addr: addr("health-addr"),
        api_addr: addr("api-addr"),
        termination_delay: secs("termination-delay"),
        shutdown_timeout: secs("shutdown-timeout"),
        start_timeout: secs("start-timeout"),
        services: value("services").split(',').map(str::to_owned).collect(),
        check_interval: secs("check-interval"),
        upgrade_timeout: secs("upgrade-timeout"),
    }
}

/// The runner refuses a termination delay longer than half the shutdown timeout, and starts
/// nothing: a file whose flags ask for one would never run.
fn drain_rule(s: &Settings, file: &str, broken: &mut Vec<String>) {
    if s.termination_delay > s.shutdown_timeout / 2 {
        broken.push(format!(
            "{file}: the termination delay {:?} is more than half the shutdown timeout {:?}: \
             the runner refuses to run",
            s.termination_delay, s.shutdown_timeout
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// A unit file: `[Section]` headers and `Key=value` lines, `#` and `;` comments, lines
/// continued with a trailing `\`. Enough for the units in `deploy/systemd`.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn parse(name: &str, text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(start) = line.strip_suffix('\\') {
                pending.push_str(start.trim_end());
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not `Key=value`: {line}"));
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Unit {
            name: name.to_owned(),
            entries,
        }
    }

    fn load(name: &str) -> Unit {
        Unit::parse(name, &read(&deploy(&format!("systemd/{name}"))))
    }

    /// Every value of `key` in `section`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of `key` in `section` (the last one counts, as for systemd), if set.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).pop()
    }

    /// A time span (`40s`, `1min 30s`, `10`: seconds without a unit).
    fn span(&self, section: &str, key: &str, broken: &mut Vec<String>) -> Duration {
        match self.get(section, key) {
            Some(v) => systemd_span(v),
            None => {
                broken.push(format!("{}: no {key}= in [{section}]", self.name));
                Duration::ZERO
            }
        }
    }
}

/// A systemd time span, as systemd.time(7) writes them (`infinity` included).
fn systemd_span(v: &str) -> Duration {
    if v == "infinity" {
        return Duration::MAX;
    }
    let mut total = 0.0;
    let mut rest = v.trim();
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == ' ')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 1e-3,
            "us" | "usec" => 1e-6,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            _ => panic!("time span {v:?}: unit {unit:?} not read here"),
        };
        let n: f64 = num
            .parse()
            .unwrap_or_else(|_| panic!("time span {v:?}: {num:?}"));
        total += n * scale;
        rest = after.trim_start();
    }
    Duration::from_secs_f64(total)
}

/// The address of a `ListenStream=`: `HOST:PORT`, or a bare port (every address).
fn listen_matches(listen: &str, addr: SocketAddr) -> bool {
    match listen.parse::<u16>() {
        Ok(port) => port == addr.port(),
        Err(_) => listen.parse::<SocketAddr>().ok() == Some(addr),
    }
}

/// The demo's command line in `ExecStart=`: the binary, then its flags (split at white space:
/// the unit quotes nothing).
fn exec_start(unit: &Unit) -> (String, Vec<String>) {
    let line = unit
        .get("Service", "ExecStart")
        .unwrap_or_else(|| panic!("{}: no ExecStart=", unit.name));
    assert!(
        !line.contains(['"', '\'']),
        "{}: ExecStart= quotes, which this reader does not read: {line}",
        unit.name
    );
    let mut words = line.split_whitespace().map(str::to_owned);
    let binary = words.next().expect("ExecStart= names a binary");
    (
        binary
            .trim_start_matches(['-', '@', ':', '+', '!'])
            .to_owned(),
        words.collect(),
    )
}

/// What the units must say for the demo run with `s` (the settings of their `ExecStart=`).
fn systemd_rules(s: &Settings, service: &Unit, sockets: &[Unit]) -> Vec<String> {
    let mut broken = Vec::new();
    let name = &service.name;
    let mut expect = |key: &str, want: &[&str]| match service.get("Service", key) {
        Some(v) if want.contains(&v) => {}
        v => broken.push(format!("{name}: {key}={v:?}, not one of {want:?}")),
    };
    // The runner says READY=1 itself; the new process of an upgrade notifies before it is the
    // main process (the old one sends its MAINPID= once it is ready).
    expect("Type", &["notify"]);
    expect("NotifyAccess", &["all"]);
    // A reload upgrades in place: SIGHUP to the main process.
    expect(
        "ExecReload",
        &["/bin/kill -HUP $MAINPID", "kill -HUP $MAINPID"],
    );
    // The signal the runner shuts down gracefully on (it handles SIGINT and SIGTERM).
    expect("KillSignal", &["SIGTERM", "TERM", "15"]);
    expect("Restart", &["on-failure"]);
    drain_rule(s, name, &mut broken);

    // systemd kills the service at TimeoutStopSec: the runner must be done before, drain and
    // shutdown timeout and margin (the shutdown timeout includes the drain; it is counted twice,
    // as the grace period under Kubernetes counts it).
    let stop = service.span("Service", "TimeoutStopSec", &mut broken);
    let need = s.termination_delay + s.shutdown_timeout + MARGIN;
    if stop < need {
        broken.push(format!(
            "{name}: TimeoutStopSec {stop:?} is less than the termination delay {:?} + the \
             shutdown timeout {:?} + {MARGIN:?}",
            s.termination_delay, s.shutdown_timeout
        ));
    }
    // Until READY=1: the services start one after the other, each within its start timeout and
    // abandoned START_GRACE past it; systemd must not kill a start the runner still allows.
    let start = service.span("Service", "TimeoutStartSec", &mut broken);
    let n = s.services.len() as u32;
    let need = (s.start_timeout + START_GRACE) * n + MARGIN;
    if start < need {
        broken.push(format!(
            "{name}: TimeoutStartSec {start:?} is less than {n} services x (the start timeout \
             {:?} + {START_GRACE:?}) + {MARGIN:?}",
            s.start_timeout
        ));
    }
    // A reload's new process starts its services as any start does: the old one must not kill
    // it, at the upgrade timeout, while its starts are within what the runner allows them.
    let need = (s.start_timeout + START_GRACE) * n;
    if s.upgrade_timeout < need {
        broken.push(format!(
            "{name}: the upgrade timeout {:?} is less than {n} services x (the start timeout \
             {:?} + {START_GRACE:?}): a reload would kill a new process still starting",
            s.upgrade_timeout, s.start_timeout
        ));
    }
    // The runner pings every WatchdogSec/2 while liveness passes; liveness changes only when the
    // checker polls, so at least one poll falls between two pings.
    let watchdog = service.span("Service", "WatchdogSec", &mut broken);
    if watchdog <= s.check_interval * 2 {
        broken.push(format!(
            "{name}: WatchdogSec {watchdog:?} is not more than 2 x the checker's interval {:?}",
            s.check_interval
        ));
    }

    // The sockets: each its own unit (FileDescriptorName= names every socket of a unit), each
    // triggering the service, each the service inherits, each at the address of its flag.
    let inherited: Vec<&str> = service
        .all("Service", "Sockets")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    for (fd_name, addr) in [("health", s.health_addr), ("api", s.api_addr)] {
        let named: Vec<&Unit> = sockets
            .iter()
            .filter(|u| u.get("Socket", "FileDescriptorName") == Some(fd_name))
            .collect();
        let [socket] = named[..] else {
            broken.push(format!(
                "{} socket units with FileDescriptorName={fd_name}, not one",
                named.len()
            ));
            continue;
        };
        let unit = &socket.name;
        if !inherited.contains(&unit.as_str()) {
            broken.push(format!("{name}: Sockets= {inherited:?} lacks {unit}"));
        }
        if socket.get("Socket", "Service") != Some(SERVICE_UNIT) {
            broken.push(format!("{unit}: Service= is not {SERVICE_UNIT}"));
        }
        match socket.all("Socket", "ListenStream")[..] {
            [listen] if listen_matches(listen, addr) => {}
            ref listens => broken.push(format!(
                "{unit}: ListenStream= {listens:?}, not the one address {addr} of the service's \
                 flags (the address the demo binds when started without its sockets)"
            )),
        }
    }
    broken
}

/// The units in `deploy/systemd`: the service, and its sockets.
fn units() -> (Unit, Vec<Unit>) {
    let service = Unit::load(SERVICE_UNIT);
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(deploy("systemd")).expect("read deploy/systemd") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".socket") {
            sockets.push(Unit::load(&name));
        }
    }
    (service, sockets)
}

#[test]
fn the_systemd_units_hold_the_demos_settings() {
    let (service, sockets) = units();
    let (binary, args) = exec_start(&service);
    assert!(binary.ends_with("/lifecycle-demo"), "ExecStart= {binary}");
    let s = settings(&args);
    let broken = systemd_rules(&s, &service, &sockets);
    assert!(broken.is_empty(), "for {s:?}:\n{}", broken.join("\n"));
}

/// `systemd-analyze verify` on the units, the binary in `ExecStart=` replaced by the built demo
/// (it checks that it exists); any complaint about them fails. Skipped without systemd-analyze.
#[test]
fn systemd_analyze_verifies_the_units() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("skipped: no {}", analyze.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("lifecycle-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let demo = example("demo");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(deploy("systemd")).expect("read deploy/systemd") {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let text =
            read(&entry.path()).replace("/usr/local/bin/lifecycle-demo", demo.to_str().unwrap());
        let path = dir.join(&name);
        std::fs::write(&path, text).expect("write a unit");
        paths.push(path.to_str().unwrap().to_owned());
    }
    let mut args = vec!["verify"];
    args.extend(paths.iter().map(String::as_str));
    let out = run_to_end(analyze, &args);
    let _ = std::fs::remove_dir_all(&dir);
    let complaints: Vec<&str> = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| l.contains("lifecycle-demo"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {:?}\n{}",
        out.status,
        complaints.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes.

/// A YAML node of the forms the manifest uses: block maps, block lists, scalars.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    List(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    /// The node at a dotted path of map keys, if there is one.
    fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |node, key| match node {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        })
    }

    fn str(&self, path: &str) -> Option<&str> {
        match self.at(path)? {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self, path: &str) -> &[Yaml] {
        match self.at(path) {
            Some(Yaml::List(items)) => items,
            _ => &[],
        }
    }

    /// A number of seconds at `path`, or `default` if it is not set.
    fn secs(&self, path: &str, default: u64) -> Duration {
        let v = self.str(path).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{path}: {v:?} is not a number of seconds"))
        });
        Duration::from_secs(v)
    }
}

/// The documents of a YAML stream of the forms [`Yaml`] has. Anything else (flow collections,
/// anchors, tags, block scalars, tabs) panics: this reader is for the files here only.
fn yaml_docs(text: &str) -> Vec<Yaml> {
    let mut docs = Vec::new();
    let mut lines: Vec<(usize, String)> = Vec::new();
    for raw in text.lines().chain(["---"]) {
        if raw.trim_end() == "---" {
            if !lines.is_empty() {
                let mut i = 0;
                let indent = lines[0].0;
                docs.push(yaml_block(&mut lines, &mut i, indent));
                assert_eq!(i, lines.len(), "YAML: unread from {:?}", lines.get(i));
            }
            lines.clear();
            continue;
        }
        assert!(!raw.starts_with('\t'), "YAML: a tab: {raw:?}");
        let content = strip_comment(raw).trim_end();
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        lines.push((indent, content.trim_start().to_owned()));
    }
    docs
}

/// `line` without its comment (a `#` at the start or after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev == ' ' => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// `key: value` or `key:`, split; `None` for a scalar.
fn split_key(content: &str) -> Option<(String, &str)> {
    let (key, value) = match content.strip_suffix(':') {
        Some(key) if !key.contains(": ") => (key, ""),
        _ => content.split_once(": ")?,
    };
    (!key.starts_with(['"', '\''])).then(|| (key.trim().to_owned(), value.trim()))
}

fn scalar(v: &str) -> Yaml {
    assert!(
        !v.starts_with(['[', '{', '|', '>', '&', '*', '!']),
        "YAML: {v:?} is a form this reader does not read"
    );
    let unquoted = [('"', '"'), ('\'', '\'')]
        .iter()
        .find_map(|&(a, b)| v.strip_prefix(a)?.strip_suffix(b))
        .unwrap_or(v);
    Yaml::Str(unquoted.to_owned())
}

fn yaml_block(lines: &mut [(usize, String)], i: &mut usize, indent: usize) -> Yaml {
    match is_item(&lines[*i].1) {
        true => yaml_list(lines, i, indent),
        false => yaml_map(lines, i, indent),
    }
}

fn yaml_list(lines: &mut [(usize, String)], i: &mut usize, indent: usize) -> Yaml {
    let mut items = Vec::new();
    while *i < lines.len() && lines[*i].0 == indent && is_item(&lines[*i].1) {
        let rest = lines[*i].1[1..].trim_start().to_owned();
        if rest.is_empty() {
            *i += 1;
            items.push(match lines.get(*i) {
                Some(&(next, _)) if next > indent => yaml_block(lines, i, next),
                _ => Yaml::Str(String::new()),
            });
        } else if is_item(&rest) {
            // A list that begins on the dash's line.
            let column = indent + lines[*i].1.len() - rest.len();
            lines[*i] = (column, rest);
            items.push(yaml_list(lines, i, column));
        } else if split_key(&rest).is_some() {
            // A map that begins on the dash's line: read it as if that line began at `rest`.
            let column = indent + lines[*i].1.len() - rest.len();
            lines[*i] = (column, rest);
            items.push(yaml_map(lines, i, column));
        } else {
            items.push(scalar(&rest));
            *i += 1;
        }
    }
    Yaml::List(items)
}

fn yaml_map(lines: &mut [(usize, String)], i: &mut usize, indent: usize) -> Yaml {
    let mut entries = Vec::new();
    while *i < lines.len() && lines[*i].0 == indent && !is_item(&lines[*i].1) {
        let line = lines[*i].1.clone();
        let (key, value) =
            split_key(&line).unwrap_or_else(|| panic!("YAML: not `key: value`: {line}"));
        *i += 1;
        let node = match (value, lines.get(*i)) {
            ("", Some((next, _))) if *next > indent => {
                let next = *next;
                yaml_block(lines, i, next)
            }
            ("", Some((next, content))) if *next == indent && is_item(content) => {
                yaml_list(lines, i, indent)
            }
            (value, _) => scalar(value),
        };
        entries.push((key, node));
    }
    if let Some((next, line)) = lines.get(*i) {
        assert!(*next < indent, "YAML: unexpected indentation: {line}");
    }
    Yaml::Map(entries)
}

/// The routes of the health module's table of probes (src/health.rs, section *Probes*), each
/// with its cell "Kubernetes probe".
fn probe_table() -> Vec<(String, String)> {
    let docs = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/health.rs"));
    let rows: Vec<Vec<String>> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("//! |"))
        .map(|row| row.split('|').map(|c| c.trim().to_owned()).collect())
        .collect();
    let column = rows
        .first()
        .and_then(|header| header.iter().position(|c| c == "Kubernetes probe"))
        .expect("src/health.rs: a table with a column \"Kubernetes probe\"");
    rows.iter()
        .skip(1)
        .filter_map(|row| {
            let route = row.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((route.to_owned(), row.get(column)?.clone()))
        })
        .collect()
}

/// The port a probe's or a Service's `port` names (by name or number), in `container`.
fn port(container: &Yaml, port: Option<&str>) -> Option<u16> {
    let port = port?;
    port.parse().ok().or_else(|| {
        container.list("ports").iter().find_map(|p| {
            (p.str("name") == Some(port)).then(|| p.str("containerPort")?.parse().ok())?
        })
    })
}

/// What the manifest must say for the demo run with `s` (the settings of its container's args).
fn kubernetes_rules(s: &Settings, docs: &[Yaml]) -> Vec<String> {
    let mut broken = Vec::new();
    let file = "lifecycle-demo.yaml";
    let deployment = docs
        .iter()
        .find(|d| d.str("kind") == Some("Deployment"))
        .expect("a Deployment");
    let pod = deployment.at("spec.template.spec").expect("a pod template");
    let [container] = pod.list("containers") else {
        panic!("{file}: one container");
    };
    drain_rule(s, file, &mut broken);

    // Probed on the pod's IP, so the demo listens on every address.
    for (flag, addr) in [("--health-addr", s.health_addr), ("--api-addr", s.api_addr)] {
        if !addr.ip().is_unspecified() {
            broken.push(format!(
                "{file}: {flag} {addr}: the kubelet cannot reach it"
            ));
        }
    }
    for (name, addr) in [("health", s.health_addr), ("api", s.api_addr)] {
        if port(container, Some(name)) != Some(addr.port()) {
            broken.push(format!(
                "{file}: the container port named {name} is not {}, the port of the demo's \
                 flag",
                addr.port()
            ));
        }
    }

    let table = probe_table();
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(probe) = container.at(kind) else {
            broken.push(format!("{file}: no {kind}"));
            continue;
        };
        // The route the health module's table points this kind of probe at.
        let path = probe.str("httpGet.path").unwrap_or_default();
        match table.iter().find(|(route, _)| route == path) {
            Some((_, cell)) if cell.contains(&format!("`{kind}`")) => {}
            Some((_, cell)) => broken.push(format!(
                "{file}: {kind} on {path}, for which the table of probes names {cell:?}"
            )),
            None => broken.push(format!(
                "{file}: {kind} on {path:?}, no route of the endpoint"
            )),
        }
        if port(container, probe.str("httpGet.port")) != Some(s.health_addr.port()) {
            broken.push(format!(
                "{file}: {kind} is not on the health port {}",
                s.health_addr.port()
            ));
        }
        // Probing liveness or readiness more often than the checker polls would read the same
        // poll again (the startup probe waits for the endpoint to listen, which is no poll).
        // The endpoint answers from the checker's last poll at once, never waiting for a
        // check, so a probe's timeout need not cover the checker's timeout.
        let period = probe.secs("periodSeconds", 10);
        if kind != "startupProbe" && period < s.check_interval {
            broken.push(format!(
                "{file}: {kind} periodSeconds {period:?} is shorter than the checker's interval \
                 {:?}",
                s.check_interval
            ));
        }
        if probe.secs("timeoutSeconds", 1) > period {
            broken.push(format!(
                "{file}: {kind} timeoutSeconds is longer than its period"
            ));
        }
    }

    // The drain must outlast the time the endpoints take to drop the pod: the kubelet's
    // detection of the failing readiness (period x failureThreshold, the last probe's timeout
    // at most) when the program shuts down by itself, plus the propagation (all there is when
    // Kubernetes deletes the pod: the endpoints drop it as the SIGTERM is sent).
    if let Some(ready) = container.at("readinessProbe") {
        let failures = ready.secs("failureThreshold", 3).as_secs() as u32;
        let detection =
            ready.secs("periodSeconds", 10) * failures + ready.secs("timeoutSeconds", 1);
        if s.termination_delay < detection + ENDPOINT_PROPAGATION {
            broken.push(format!(
                "{file}: the termination delay {:?} is shorter than the readiness probe's \
                 detection {detection:?} + the endpoints' propagation {ENDPOINT_PROPAGATION:?}",
                s.termination_delay
            ));
        }
    }
    // The drain does what a preStop sleep would, and a preStop hook spends the grace period
    // before the program hears SIGTERM.
    if container.at("lifecycle.preStop").is_some() {
        broken.push(format!(
            "{file}: a preStop hook: the termination delay drains"
        ));
    }
    // The kubelet's SIGKILL comes at terminationGracePeriodSeconds (default 30).
    let grace = pod.secs("terminationGracePeriodSeconds", 30);
    let need = s.termination_delay + s.shutdown_timeout + MARGIN;
    if grace < need {
        broken.push(format!(
            "{file}: terminationGracePeriodSeconds {grace:?} is less than the termination delay \
             {:?} + the shutdown timeout {:?} + {MARGIN:?}",
            s.termination_delay, s.shutdown_timeout
        ));
    }

    // The Service, if any, sends its traffic to the API's port.
    for service in docs.iter().filter(|d| d.str("kind") == Some("Service")) {
        for p in service.list("spec.ports") {
            if port(container, p.str("targetPort")) != Some(s.api_addr.port()) {
                broken.push(format!(
                    "{file}: the Service's targetPort {:?} is not the API's port {}",
                    p.str("targetPort"),
                    s.api_addr.port()
                ));
            }
        }
    }
    broken
}

fn manifest() -> Vec<Yaml> {
    yaml_docs(&read(&deploy("kubernetes/lifecycle-demo.yaml")))
}

/// The container's `args`.
fn container_args(docs: &[Yaml]) -> Vec<String> {
    let deployment = docs
        .iter()
        .find(|d| d.str("kind") == Some("Deployment"))
        .expect("a Deployment");
    let containers = deployment.list("spec.template.spec.containers");
    let args = containers.first().expect("a container").list("args");
    args.iter()
        .map(|a| match a {
            Yaml::Str(s) => s.clone(),
            other => panic!("an argument that is not a string: {other:?}"),
        })
        .collect()
}

#[test]
fn the_kubernetes_manifest_holds_the_demos_settings() {
    let docs = manifest();
    let s = settings(&container_args(&docs));
    let broken = kubernetes_rules(&s, &docs);
    assert!(broken.is_empty(), "for {s:?}:\n{}", broken.join("\n"));
}

/// Each rule fails once the demo's settings outgrow the files: what a change of one of its
/// defaults would do.
#[test]
fn a_demo_that_outgrows_the_files_breaks_the_rules() {
    let (service, sockets) = units();
    let docs = manifest();
    let unit_settings = settings(&exec_start(&service).1);
    let pod_settings = settings(&container_args(&docs));
    let broken_by = |change: &dyn Fn(&mut Settings), expected: &[&str]| {
        let mut s = unit_settings.clone();
        change(&mut s);
        let mut p = pod_settings.clone();
        change(&mut p);
        let broken = [
            systemd_rules(&s, &service, &sockets),
            kubernetes_rules(&p, &docs),
        ]
        .concat();
        for rule in expected {
            assert!(
                broken.iter().any(|b| b.contains(rule)),
                "no broken {rule:?} in {broken:#?}"
            );
        }
    };
    broken_by(
        &|s| s.shutdown_timeout += Duration::from_secs(20),
        &["TimeoutStopSec", "terminationGracePeriodSeconds"],
    );
    broken_by(
        &|s| s.shutdown_timeout = Duration::from_secs(10),
        &["more than half the shutdown timeout"],
    );
    broken_by(
        &|s| s.start_timeout = Duration::from_secs(60),
        &["TimeoutStartSec"],
    );
    broken_by(&|s| s.services.push("cache".into()), &["TimeoutStartSec"]);
    broken_by(
        &|s| s.upgrade_timeout = Duration::from_secs(20),
        &["a reload would kill a new process still starting"],
    );
    broken_by(
        &|s| s.check_interval = Duration::from_secs(5),
        &["WatchdogSec", "readinessProbe periodSeconds"],
    );
    broken_by(
        &|s| s.termination_delay = Duration::from_secs(3),
        &["the readiness probe's detection"],
    );
    broken_by(
        &|s| {
            s.health_addr.set_port(9001);
            s.api_addr.set_port(9080);
        },
        &[
            "lifecycle-demo-health.socket: ListenStream",
            "lifecycle-demo-api.socket: ListenStream",
            "container port named health",
            "container port named api",
            "livenessProbe is not on the health port",
            "targetPort",
        ],
    );
}

/// The readers read what they claim to, and refuse what they do not.
#[test]
fn the_readers_read_the_forms_the_files_use() {
    let docs = yaml_docs(
        "# a comment\n---\na: 1 # and another\nb:\n  c: \"x: y\"\n  d:\n  - e\n  - f: 2\n    g: '3'\n---\nh:\n  - - i\n",
    );
    let one = Yaml::Str;
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert_eq!(docs[0].str("a"), Some("1"));
    assert_eq!(docs[0].str("b.c"), Some("x: y"));
    assert_eq!(docs[0].list("b.d")[0], one("e".into()));
    assert_eq!(docs[0].list("b.d")[1].str("g"), Some("3"));
    assert_eq!(docs[1].list("h")[0], Yaml::List(vec![one("i".into())]));
    assert!(std::panic::catch_unwind(|| yaml_docs("a: [1, 2]\n")).is_err());
    assert!(std::panic::catch_unwind(|| yaml_docs("a: |\n  text\n")).is_err());

    assert_eq!(systemd_span("40s"), Duration::from_secs(40));
    assert_eq!(systemd_span("1min 30s"), Duration::from_secs(90));
    assert_eq!(systemd_span("1min30s"), Duration::from_secs(90));
    assert_eq!(systemd_span("10"), Duration::from_secs(10));
    assert_eq!(systemd_span("500ms"), Duration::from_millis(500));
    let unit = Unit::parse(
        "x.service",
        "[Service]\n# c\nExecStart=/bin/a \\\n  --b c\nA=1\nA=2\n",
    );
    assert_eq!(unit.get("Service", "ExecStart"), Some("/bin/a --b c"));
    assert_eq!(unit.get("Service", "A"), Some("2"));
    assert!(listen_matches("8001", "0.0.0.0:8001".parse().unwrap()));
    assert!(!listen_matches(
        "127.0.0.1:8001",
        "0.0.0.0:8001".parse().unwrap()
    ));
}

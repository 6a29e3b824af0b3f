//! Parses a metrics exposition with the Python `prometheus_client` parsers
//! (`tests/support/parse_metrics.py`), an implementation independent of the one under test.
//!
//! `.ci/run` installs `prometheus_client`. Where it is missing, [`parse`] fails the test, saying
//! how to install it, unless `LIFECYCLE_SKIP_PYTHON=1` is set: that explicit opt-out makes it
//! say on standard error that the check was skipped on purpose and return `None`, and the test
//! leaves out what it would have checked with the parser.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// A parsed family.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub typ: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A parsed sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The environment variable that, set to `1`, skips the checks with the Python parser when it is
/// missing.
pub const SKIP: &str = "LIFECYCLE_SKIP_PYTHON";

/// The families of `text`, parsed as `format` (`"prometheus"` or `"openmetrics"`); panics,
/// showing the text, if the parser rejects it. `None` only when the parser is missing and
/// [`SKIP`] is set to `1`; panics when it is missing otherwise.
pub fn parse(format: &str, text: &str) -> Option<Vec<Family>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/parse_metrics.py"
    );
    // Python's 0.0.4 parser accepts a family described twice; Prometheus refuses the scrape.
    let mut described = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.split(' ').next())
        {
            assert!(
                described.insert(name),
                "family {name} described twice:\n{text}"
            );
        }
    }
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import prometheus_client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !available {
        if std::env::var_os(SKIP).is_some_and(|v| v == "1") {
            // Once per test binary, to the real standard error: the test harness does not
            // capture it, so the skip shows even when the tests pass.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped on purpose ({SKIP}=1): expositions are not checked with Python's \
                     prometheus_client, which is missing"
                );
            });
            return None;
        }
        panic!(
            "Python's prometheus_client is missing, and these tests check every exposition with \
             it: install it with `python3 -m pip install 'prometheus_client>=0.20'` (.ci/run \
             does), or set {SKIP}=1 to skip those checks on purpose"
        );
    }
    let mut child = Command::new("python3")
        .args([script, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write the exposition to the parser");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "the {format} parser rejected the exposition: {}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let families = json
        .as_array()
        .expect("a list of families")
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap().to_owned(),
            typ: f["type"].as_str().unwrap().to_owned(),
            help: f["help"].as_str().unwrap_or("").to_owned(),
            samples: f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().to_owned(),
                    labels: s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect(),
                    value: match &s["value"] {
                        serde_json::Value::String(v) => v.parse().unwrap(),
                        v => v.as_f64().unwrap(),
                    },
                })
                .collect(),
        })
        .collect();
    Some(families)
}

/// The family called `name`; panics listing the families if there is none.
#[track_caller]
pub fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families.iter().find(|f| f.name == name).unwrap_or_else(|| {
        let names: Vec<_> = families.iter().map(|f| &f.name).collect();
        panic!("no family {name:?} among {names:?}")
    })
}

/// The value of the sample `sample` with exactly `labels`, if there is one.
pub fn value(families: &[Family], sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == sample && s.labels == want)
        .map(|s| s.value)
}

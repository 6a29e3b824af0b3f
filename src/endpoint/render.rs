//! Turning a [`Snapshot`] into probe answers: the IETF health-check JSON
//! (`application/health+json`) and the Kubernetes verbose text form.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checker::{Check, Probe, Snapshot, Status};
use crate::error::Error;

/// Bodies stay under this many bytes: the kubelet reads at most 10 KiB of a probe's body.
pub(super) const MAX_BODY: usize = 8 * 1024;
/// An `output` (a failure reason) is cut to this many characters.
const MAX_OUTPUT: usize = 200;

/// The overall status of an answer, in the draft's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overall {
    /// Everything that counts passes.
    Pass,
    /// Everything that counts passes, but an informational check fails.
    Warn,
    /// Something that counts fails.
    Fail,
}

impl Overall {
    pub(super) fn http_status(self) -> u16 {
        match self {
            Overall::Pass | Overall::Warn => 200,
            Overall::Fail => 503,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Overall::Pass => "pass",
            Overall::Warn => "warn",
            Overall::Fail => "fail",
        }
    }
}

/// What an answer is about: `/livez`, `/readyz` or `/healthz`, or one check of one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Question {
    /// `/livez`: the health of every [liveness check](crate::health::CheckOptions::liveness),
    /// as [`Snapshot::is_live`] judges it.
    Live,
    /// `/readyz`: every check's readiness, traffic gates included.
    Ready,
    /// `/healthz`: every check's readiness and health, except the traffic gates, which count
    /// toward readiness only.
    Health,
}

impl Question {
    /// The route's name, as the verbose form's last line says it: `livez`, `readyz` or
    /// `healthz`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Question::Live => "livez",
            Question::Ready => "readyz",
            Question::Health => "healthz",
        }
    }

    fn probes(self) -> &'static [Probe] {
        match self {
            Question::Ready => &[Probe::Ready],
            Question::Live => &[Probe::Health],
            Question::Health => &[Probe::Ready, Probe::Health],
        }
    }

    /// Whether the answer is about `check` at all: `/healthz` leaves traffic gates out,
    /// `/livez` asks about liveness checks only.
    fn asks_about(self, check: &Check<'_>) -> bool {
        match self {
            Question::Ready => true,
            Question::Live => check.is_liveness(),
            Question::Health => !check.is_traffic_gate(),
        }
    }

    /// Whether the aggregate of this question counts `probe` of `check`.
    fn counts(self, check: &Check<'_>, probe: Probe) -> bool {
        match self {
            Question::Live => check.counts_toward_liveness(),
            _ => check.counts_toward(probe),
        }
    }
}

/// Why an answer about one check cannot be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// There is no check by that name.
    NoSuchCheck,
    /// The check is a traffic gate, which `/healthz` leaves out.
    TrafficGate,
}

impl Unanswered {
    /// The body of the `404` that says so about the check `name`.
    pub(super) fn explain(self, name: &str) -> String {
        match self {
            Unanswered::NoSuchCheck => format!("no check named {name:?}\n"),
            Unanswered::TrafficGate => format!(
                "check {name:?} is a traffic gate, counted by /readyz only: ask /readyz/{name}\n"
            ),
        }
    }
}

/// One line of an answer: a probe of a check, or the checker itself.
pub(super) struct Item {
    pub(super) component: String,
    pub(super) probe: &'static str,
    pub(super) status: Status,
    /// Whether the item passes its question: its status passes, or (for `/livez`) it is not
    /// known yet, which is no sign of a wedge.
    pub(super) passes: bool,
    pub(super) counts: bool,
    pub(super) excluded: bool,
    pub(super) error: Option<Error>,
    pub(super) time: Option<SystemTime>,
    pub(super) consecutive_failures: u32,
}

/// The items of the answer to `question` about every check it asks about (or only `only`),
/// and its overall status.
pub(super) fn collect(
    snapshot: &Snapshot,
    question: Question,
    only: Option<&str>,
    excluded: &[String],
) -> Result<(Overall, Vec<Item>), Unanswered> {
    let mut items = Vec::new();
    if only.is_none() {
        // The checker itself: an answer from a checker that does not poll vouches for nothing.
        let started = snapshot.checker_state() == crate::State::Started;
        items.push(Item {
            component: crate::checker::CHECKER_NAME.to_owned(),
            probe: "poll",
            status: if started {
                Status::Passing
            } else {
                Status::Failing
            },
            passes: started,
            counts: true,
            excluded: false,
            error: (!started)
                .then(|| Error::msg(format!("not polling (state: {})", snapshot.checker_state()))),
            time: None,
            consecutive_failures: 0,
        });
    }
    let mut found = false;
    for check in snapshot.checks() {
        if only.is_some_and(|n| n != check.name()) {
            continue;
        }
        if !question.asks_about(&check) {
            if only.is_some() {
                return Err(Unanswered::TrafficGate);
            }
            continue;
        }
        found = true;
        let is_excluded = excluded.iter().any(|e| e == check.name());
        for &probe in question.probes() {
            let p = check.probe(probe);
            let (passes, error) = match question {
                // The one per-check rule of liveness, `Snapshot::is_live`'s.
                Question::Live => match check.liveness_failure() {
                    Some(e) => (false, Some(e)),
                    None => (true, p.error().cloned()),
                },
                _ => (p.is_passing(), p.error().cloned()),
            };
            items.push(Item {
                component: check.name().to_owned(),
                probe: probe.as_str(),
                status: p.status(),
                passes,
                counts: only.is_some() || question.counts(&check, probe),
                excluded: is_excluded,
                error,
                time: p.last_change(),
                consecutive_failures: p.consecutive_failures(),
            });
        }
    }
    if only.is_some() && !found {
        return Err(Unanswered::NoSuchCheck);
    }
    let fails = |counting: bool| {
        items
            .iter()
            .filter(|i| !i.excluded && i.counts == counting)
            .any(|i| !i.passes)
    };
    let overall = if fails(true) {
        Overall::Fail
    } else if fails(false) {
        Overall::Warn
    } else {
        Overall::Pass
    };
    Ok((overall, items))
}

/// The `application/health+json` body (draft-inadarei-api-health-check): status, version,
/// releaseId, and per check `"name:probe"` an array with one object: componentId, status, time
/// (of the last change), output (the reason, unless `hide_reasons`), and the number of
/// consecutive failures. Bodies stay under [`MAX_BODY`]: when every check does not fit, passing
/// checks are left out first, then the rest, and `"truncated"` says how many were.
pub(super) fn json(
    snapshot: &Snapshot,
    description: &str,
    overall: Overall,
    items: &[Item],
    hide_reasons: bool,
) -> String {
    let head = |out: &mut String| {
        out.push_str("{\"status\":\"");
        out.push_str(overall.as_str());
        out.push_str("\",\"version\":");
        push_json_str(out, snapshot.version());
        out.push_str(",\"releaseId\":");
        push_json_str(out, snapshot.sha());
        out.push_str(",\"description\":");
        push_json_str(out, description);
    };
    let entries: Vec<String> = items
        .iter()
        .filter(|i| !i.excluded)
        .map(|i| entry(i, hide_reasons))
        .collect();
    let mut out = String::with_capacity(512);
    head(&mut out);
    let total: usize = entries.iter().map(String::len).sum();
    // Leave room for the head and the closing part.
    let budget = MAX_BODY.saturating_sub(out.len() + 64);
    out.push_str(",\"checks\":{");
    let mut written = 0;
    let mut left_out = 0;
    if total + entries.len() <= budget {
        for e in &entries {
            if written > 0 {
                out.push(',');
            }
            out.push_str(e);
            written += 1;
        }
    } else {
        let (failing, passing): (Vec<_>, Vec<_>) = items
            .iter()
            .filter(|i| !i.excluded)
            .zip(&entries)
            .partition(|(i, _)| !i.passes);
        let mut used = 0;
        for (_, e) in failing.iter().chain(&passing) {
            if used + e.len() + 1 > budget {
                left_out += 1;
                continue;
            }
            if written > 0 {
                out.push(',');
            }
            out.push_str(e);
            used += e.len() + 1;
            written += 1;
        }
    }
    out.push('}');
    if left_out > 0 {
        let _ = write!(out, ",\"truncated\":{left_out}");
    }
    out.push('}');
    out
}

fn entry(item: &Item, hide_reasons: bool) -> String {
    let mut e = String::with_capacity(128);
    push_json_str(&mut e, &format!("{}:{}", item.component, item.probe));
    e.push_str(":[{\"componentId\":");
    push_json_str(&mut e, &item.component);
    e.push_str(",\"status\":\"");
    e.push_str(match (item.passes, item.counts) {
        (true, _) => "pass",
        (false, false) => "warn",
        (false, true) => "fail",
    });
    e.push('"');
    if let Some(t) = item.time {
        e.push_str(",\"time\":\"");
        push_rfc3339(&mut e, t);
        e.push('"');
    }
    if !item.passes {
        e.push_str(",\"output\":");
        push_json_str(&mut e, &reason(item, hide_reasons));
    }
    let _ = write!(e, ",\"consecutiveFailures\":{}", item.consecutive_failures);
    if !item.counts {
        e.push_str(",\"informational\":true");
    }
    e.push_str("}]");
    e
}

fn reason(item: &Item, hide_reasons: bool) -> String {
    if hide_reasons {
        return "reason withheld".to_owned();
    }
    let mut text = match &item.error {
        Some(e) => e.to_string(),
        None => item.status.as_str().to_owned(),
    };
    if text.chars().count() > MAX_OUTPUT {
        text = text.chars().take(MAX_OUTPUT).collect::<String>() + "…";
    }
    text
}

/// The Kubernetes verbose form: a line per check, `[+]name ok`, `[-]name failed: reason`, or
/// `[+]name excluded: ok`, then `<what> check passed` or `<what> check failed`. `/livez`'s
/// begins with `[+]ping ok` (the process answers), names its checks plainly (their health is
/// all it asks), and says `[+]name not checked yet` of a liveness check not polled yet.
pub(super) fn verbose(
    question: Question,
    overall: Overall,
    items: &[Item],
    hide_reasons: bool,
) -> String {
    let mut out = String::with_capacity(256);
    if question == Question::Live {
        out.push_str("[+]ping ok\n");
    }
    let mut left_out = 0;
    for item in items {
        let name = if question == Question::Live || item.probe == "ready" || item.probe == "poll" {
            item.component.clone()
        } else {
            format!("{}:{}", item.component, item.probe)
        };
        let line = match (item.passes, item.excluded) {
            (true, false) if item.status == Status::Unknown => {
                format!("[+]{name} not checked yet\n")
            }
            (true, false) => format!("[+]{name} ok\n"),
            (true, true) => format!("[+]{name} excluded: ok\n"),
            (false, true) => format!("[-]{name} excluded: failed\n"),
            (false, false) if !item.counts => {
                format!(
                    "[+]{name} failing (informational): {}\n",
                    reason(item, hide_reasons)
                )
            }
            (false, false) => format!("[-]{name} failed: {}\n", reason(item, hide_reasons)),
        };
        if out.len() + line.len() > MAX_BODY - 64 {
            left_out += 1;
            continue;
        }
        out.push_str(&line);
    }
    if left_out > 0 {
        let _ = writeln!(out, "({left_out} more checks left out)");
    }
    let _ = writeln!(
        out,
        "{} check {}",
        question.name(),
        if overall == Overall::Fail {
            "failed"
        } else {
            "passed"
        }
    );
    out
}

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `t` as an RFC 3339 UTC timestamp with millisecond precision.
pub(super) fn push_rfc3339(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        let mut s = String::new();
        push_rfc3339(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        let mut s = String::new();
        // 2024-02-29T12:34:56.789Z, a leap day.
        push_rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_210_096_789),
        );
        assert_eq!(s, "2024-02-29T12:34:56.789Z");
        let mut s = String::new();
        push_rfc3339(&mut s, UNIX_EPOCH + Duration::from_secs(4_102_444_799));
        assert_eq!(s, "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }
}

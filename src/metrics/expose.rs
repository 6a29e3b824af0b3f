//! The two exposition formats: [`Format`], its negotiation from `Accept`, and the translation of
//! `prometheus-client`'s OpenMetrics text into the Prometheus text format 0.0.4.
//!
//! `prometheus-client` encodes OpenMetrics text only. The Prometheus text format carries the same
//! samples; what differs is in the metadata, so the translation rewrites descriptor lines and
//! drops what 0.0.4 has no place for, and never touches a sample's name, labels or value:
//!
//! - `# EOF` and `# UNIT` lines are dropped;
//! - a counter family `x` (samples `x_total`) is described as `# TYPE x_total counter`, and an
//!   info family `x` (sample `x_info`) as `# TYPE x_info gauge`; `unknown` becomes `untyped`,
//!   and types 0.0.4 lacks (`stateset`, `gaugehistogram`) become `untyped`;
//! - a counter's `_created` samples (OpenMetrics only) are dropped, and so are exemplars (` # {...} v`);
//! - in `# HELP`, OpenMetrics' `\"` becomes `"` (0.0.4 escapes only `\\` and `\n`).

use std::fmt;

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// The Prometheus text format, version 0.0.4: what `/metrics` serves unless asked otherwise.
    Prometheus,
    /// OpenMetrics text 1.0.0: served when the request's `Accept` prefers
    /// `application/openmetrics-text`, as Prometheus' own scrapes do.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with, from its `Accept` header (or its absence).
    ///
    /// OpenMetrics when `application/openmetrics-text` is acceptable with a quality at least as
    /// high as the best of `text/plain`, `text/*` and `*/*`; otherwise the Prometheus text
    /// format. (A client that accepts neither still gets the Prometheus text format: a scrape
    /// answered `406` is worse than one in a format it did not list.)
    ///
    /// ```
    /// use lifecycle::metrics::Format;
    ///
    /// assert_eq!(Format::from_accept(None), Format::Prometheus);
    /// let prometheus = "application/openmetrics-text;version=1.0.0,\
    ///     application/openmetrics-text;version=0.0.1;q=0.75,\
    ///     text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
    /// assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    /// ```
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for range in accept.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Prometheus => "Prometheus text 0.0.4",
            Format::OpenMetrics => "OpenMetrics text 1.0.0",
        })
    }
}

/// What kind of family the samples being translated belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Other,
}

/// Translates a whole OpenMetrics text exposition into the Prometheus text format 0.0.4 (see the
/// module docs for what changes).
///
/// Most lines are samples that pass as they are, so the text is copied in runs between the
/// lines that hold a `#` (found with `memchr`): descriptors, `# EOF`, and samples with an
/// exemplar or a `#` in a label value. Only those, and the samples of counter families (for
/// their `_created`), are looked at line by line.
pub(crate) fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut t = Translation {
        out: String::with_capacity(openmetrics.len()),
        help: None,
        kind: Kind::Other,
    };
    let mut pos = 0;
    while pos < openmetrics.len() {
        let rest = &openmetrics[pos..];
        // The next line holding a `#`, from `line_start` to `line_end` (past its newline).
        let (line_start, line_end) = match rest.find('#') {
            Some(h) => {
                let start = rest[..h].rfind('\n').map_or(0, |n| n + 1);
                let end = rest[h..].find('\n').map_or(rest.len(), |n| h + n + 1);
                (pos + start, pos + end)
            }
            None => (openmetrics.len(), openmetrics.len()),
        };
        let run = &openmetrics[pos..line_start];
        if !run.is_empty() {
            t.flush_help();
            if t.kind == Kind::Counter {
                run.lines().for_each(|line| t.sample(line));
            } else {
                t.out.push_str(run);
            }
        }
        if line_start < line_end {
            let line = &openmetrics[line_start..line_end];
            t.line(line.strip_suffix('\n').unwrap_or(line));
        }
        pos = line_end;
    }
    t.flush_help();
    t.out
}

/// The state of one translation.
struct Translation<'a> {
    out: String,
    /// A `# HELP` line waits for its `# TYPE`, which says what the family is called in 0.0.4.
    help: Option<(&'a str, &'a str)>,
    kind: Kind,
}

impl<'a> Translation<'a> {
    /// Translates one line (without its newline).
    fn line(&mut self, line: &'a str) {
        let Some(rest) = line.strip_prefix("# ") else {
            self.flush_help();
            self.sample(line);
            return;
        };
        let mut parts = rest.splitn(3, ' ');
        let (keyword, name, tail) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        match keyword {
            "HELP" => {
                self.flush_help();
                self.help = Some((name, tail));
            }
            "TYPE" => {
                let (family, typ) = match tail {
                    "counter" => (format!("{name}_total"), "counter"),
                    "info" => (format!("{name}_info"), "gauge"),
                    "gauge" | "histogram" | "summary" => (name.to_owned(), tail),
                    _ => (name.to_owned(), "untyped"),
                };
                self.kind = if tail == "counter" {
                    Kind::Counter
                } else {
                    Kind::Other
                };
                match self.help.take() {
                    Some((h, text)) if h == name => {
                        flush_help(&mut self.out, Some((&family, text)))
                    }
                    other => flush_help(&mut self.out, other),
                }
                self.out.push_str("# TYPE ");
                self.out.push_str(&family);
                self.out.push(' ');
                self.out.push_str(typ);
                self.out.push('\n');
            }
            // EOF, UNIT, and any other comment: nothing in 0.0.4.
            _ => {}
        }
    }

    /// Copies a sample line, without an exemplar, dropping a counter's `_created`.
    fn sample(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        let (name, after_name) = split_name(line);
        // prometheus-client writes `_created` for counters only; elsewhere such a name is the
        // user's own gauge and stays.
        if self.kind == Kind::Counter && name.ends_with("_created") {
            return;
        }
        self.out.push_str(name);
        self.out.push_str(without_exemplar(after_name));
        self.out.push('\n');
    }

    fn flush_help(&mut self) {
        flush_help(&mut self.out, self.help.take());
    }
}

/// Writes a held `# HELP` line, with OpenMetrics' `\"` unescaped, under `family` (or its own name).
fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    let Some((family, text)) = help else {
        return;
    };
    out.push_str("# HELP ");
    out.push_str(family);
    out.push(' ');
    out.push_str(&text.replace("\\\"", "\""));
    out.push('\n');
}

/// Splits a sample line into its metric name and the rest (labels, value, timestamp, exemplar).
fn split_name(line: &str) -> (&str, &str) {
    let end = line
        .bytes()
        .position(|b| b == b'{' || b == b' ')
        .unwrap_or(line.len());
    line.split_at(end)
}

/// The part of a sample line after its name, without an exemplar (` # {...} value [ts]`).
fn without_exemplar(after_name: &str) -> &str {
    if !after_name.as_bytes().contains(&b'#') {
        // The common case, found by a byte search (memchr): no exemplar.
        return after_name;
    }
    let bytes = after_name.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'{') {
        // Skip the label set, whose quoted values may hold anything, `#` and `}` included.
        let mut quoted = false;
        i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    match after_name[i.min(after_name.len())..].find(" # ") {
        Some(at) => &after_name[..i + at],
        None => after_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(openmetrics: &str, prometheus: &str) {
        assert_eq!(openmetrics_to_prometheus(openmetrics), prometheus);
    }

    #[test]
    fn counters_take_their_sample_name_and_lose_created() {
        check(
            "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total{q=\"a\"} 3\n\
             jobs_created{q=\"a\"} 1.7e9\n# EOF\n",
            "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{q=\"a\"} 3\n",
        );
    }

    #[test]
    fn info_becomes_a_gauge_and_units_go() {
        check(
            "# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n\
             # HELP took_seconds Took.\n# TYPE took_seconds gauge\n# UNIT took_seconds seconds\n\
             took_seconds 0.5\n# EOF\n",
            "# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n\
             # HELP took_seconds Took.\n# TYPE took_seconds gauge\ntook_seconds 0.5\n",
        );
    }

    #[test]
    fn histograms_and_gauges_pass_unknown_becomes_untyped() {
        check(
            "# HELP h H.\n# TYPE h histogram\nh_sum 1.0\nh_count 1\nh_bucket{le=\"+Inf\"} 1\n\
             # HELP u U.\n# TYPE u unknown\nu 2\n# EOF\n",
            "# HELP h H.\n# TYPE h histogram\nh_sum 1.0\nh_count 1\nh_bucket{le=\"+Inf\"} 1\n\
             # HELP u U.\n# TYPE u untyped\nu 2\n",
        );
    }

    #[test]
    fn exemplars_go_even_after_labels_holding_hashes() {
        check(
            "# HELP c C.\n# TYPE c counter\nc_total{a=\"x # {y} 1\"} 3 # {trace=\"t\"} 1.0\n\
             c_total 4 # {trace=\"u\"} 2.0 123\n# EOF\n",
            "# HELP c_total C.\n# TYPE c_total counter\nc_total{a=\"x # {y} 1\"} 3\nc_total 4\n",
        );
    }

    #[test]
    fn help_unescapes_quotes_only() {
        check(
            "# HELP g A \\\"quoted\\\" \\\\ help\\nline.\n# TYPE g gauge\ng 1\n# EOF\n",
            "# HELP g A \"quoted\" \\\\ help\\nline.\n# TYPE g gauge\ng 1\n",
        );
    }

    #[test]
    fn a_gauge_named_created_stays() {
        check(
            "# HELP x_created X.\n# TYPE x_created gauge\nx_created 5\n# EOF\n",
            "# HELP x_created X.\n# TYPE x_created gauge\nx_created 5\n",
        );
    }

    #[test]
    fn accept_negotiation() {
        let f = |a| Format::from_accept(Some(a));
        assert_eq!(f("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(
            f("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
            Format::Prometheus
        );
        assert_eq!(
            f("APPLICATION/OpenMetrics-Text; version=1.0.0; q=1"),
            Format::OpenMetrics
        );
        assert_eq!(f("application/openmetrics-text;q=0"), Format::Prometheus);
        assert_eq!(f("*/*"), Format::Prometheus);
        assert_eq!(f("application/json"), Format::Prometheus);
        assert_eq!(f(""), Format::Prometheus);
        assert_eq!(
            f("application/openmetrics-text;q=bogus"),
            Format::OpenMetrics
        );
    }
}

//! [`Request`]: a parsed request head, and the rules that decide what to do with it.

use std::fmt;

use super::host;

/// The most headers a request head may have; one more is answered `431`.
pub(crate) const MAX_HEADERS: usize = 32;

/// The head of one HTTP request, borrowed from the connection's input buffer.
///
/// The server hands it to the [`Handler`](super::Handler) only once it has been checked: the
/// request line and headers are well formed, the target has no fragment, the version is
/// HTTP/1.0 or 1.1, the `Host` is valid, and the framing headers agree.
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    minor_version: u8,
    headers: &'a [httparse::Header<'a>],
}

impl<'a> Request<'a> {
    /// The method, as sent (methods are case-sensitive): `"GET"`, `"HEAD"`, ...
    pub(crate) fn method(&self) -> &'a str {
        self.method
    }

    /// The request target up to the first `?`, as sent (not percent-decoded): `"/healthz"`.
    pub(crate) fn path(&self) -> &'a str {
        self.path
    }

    /// The part of the request target after the first `?`, if there is one (not decoded).
    pub(crate) fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The minor HTTP version: `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub(crate) fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// The value of the first header called `name` (compared without case), if it is there and
    /// is UTF-8.
    pub(crate) fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }

    /// The `Accept` header, if any.
    pub(crate) fn accept(&self) -> Option<&'a str> {
        self.header("accept")
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("version", &format_args!("HTTP/1.{}", self.minor_version))
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// Why a request head is refused without calling the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reject {
    /// Malformed, or framing headers that disagree: `400`.
    BadRequest(&'static str),
    /// Head larger than the limit, or too many headers: `431`.
    TooLarge,
    /// An HTTP version other than 1.0 or 1.1: `505`.
    Version,
    /// The HTTP/2 connection preface: closed without an answer, which an HTTP/2 client would not
    /// understand.
    Http2Preface,
}

impl Reject {
    /// The status to answer with; `None` means close without answering.
    pub(super) fn status(self) -> Option<u16> {
        match self {
            Reject::BadRequest(_) => Some(400),
            Reject::TooLarge => Some(431),
            Reject::Version => Some(505),
            Reject::Http2Preface => None,
        }
    }

    /// A short description, for debug logs.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::TooLarge => "request head too large",
            Reject::Version => "unsupported HTTP version",
            Reject::Http2Preface => "HTTP/2 connection preface",
        }
    }
}

/// A head that parsed and passed the checks.
#[derive(Debug)]
pub(super) struct Head<'a> {
    pub(super) request: Request<'a>,
    /// Bytes of the buffer the head took, up to and including its empty line.
    pub(super) len: usize,
    /// The client asked for the connection to close after this request (or did not ask to keep
    /// it, for HTTP/1.0).
    pub(super) close: bool,
    /// The request has a body, which the server does not read: close after answering.
    pub(super) has_body: bool,
}

/// The outcome of parsing the start of an input buffer.
#[derive(Debug)]
pub(super) enum Parsed<'a> {
    /// A complete, acceptable head.
    Complete(Head<'a>),
    /// Not a complete head yet.
    Partial,
    /// Refused.
    Rejected(Reject),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Parses the head at the start of `buf` with room for [`MAX_HEADERS`] headers in `headers`.
pub(super) fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>; MAX_HEADERS],
) -> Parsed<'a> {
    let prefix = buf.len().min(H2_PREFACE.len());
    if prefix >= 3 && buf[..prefix] == H2_PREFACE[..prefix] {
        // "PRI" alone could start some other method; the full line is unmistakable.
        return if prefix == H2_PREFACE.len() {
            Parsed::Rejected(Reject::Http2Preface)
        } else {
            Parsed::Partial
        };
    }
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Rejected(Reject::TooLarge),
        // httparse says `Version` for anything but `HTTP/1.0` and `HTTP/1.1` where the version
        // goes, garbage included: only another HTTP version is answered 505.
        Err(httparse::Error::Version) if names_an_http_version(buf) => {
            return Parsed::Rejected(Reject::Version);
        }
        Err(httparse::Error::Version) => {
            return Parsed::Rejected(Reject::BadRequest("malformed HTTP version"));
        }
        Err(_) => return Parsed::Rejected(Reject::BadRequest("malformed request head")),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let (Some(method), Some(target), Some(minor_version)) = (method, path, version) else {
        return Parsed::Rejected(Reject::BadRequest("incomplete request line"));
    };
    let headers: &'a [httparse::Header<'a>] = headers;
    if target.contains('#') {
        // A fragment is never part of a request target (RFC 9112 §3.2): the target is invalid,
        // and what the client meant by it is not guessed at.
        return Parsed::Rejected(Reject::BadRequest("fragment in the request target"));
    }
    let (path, query) = split_target(target);
    match check_headers(minor_version, headers) {
        Ok(framing) => Parsed::Complete(Head {
            request: Request {
                method,
                path,
                query,
                minor_version,
                headers,
            },
            len,
            close: framing.close,
            has_body: framing.has_body,
        }),
        Err(reject) => Parsed::Rejected(reject),
    }
}

/// Whether the request line at the start of `buf` ends in an HTTP version, `HTTP/` DIGIT `.`
/// DIGIT, or what httparse may have read of one when it refused it (at least the major digit;
/// `HTTP/2` and `HTTP/3` are also how those versions are named).
fn names_an_http_version(buf: &[u8]) -> bool {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(buf);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(line);
    match version.strip_prefix(b"HTTP/") {
        Some([major] | [major, b'.']) => major.is_ascii_digit(),
        Some([major, b'.', minor]) => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

/// Splits a request target into its path and query. An absolute-form target
/// (`http://host:port/path?query`, which servers must accept) loses its scheme and authority;
/// without a path, the path is `/`.
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    let scheme_len = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    });
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some(scheme_len) = scheme_len else {
        return (path, query);
    };
    let after_scheme = &path[scheme_len.min(path.len())..];
    match after_scheme.find('/') {
        Some(i) => (&after_scheme[i..], query),
        None => ("/", query),
    }
}

struct Framing {
    close: bool,
    has_body: bool,
}

/// Checks the headers that decide framing and the connection's fate.
fn check_headers(minor_version: u8, headers: &[httparse::Header<'_>]) -> Result<Framing, Reject> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // A list ("5, 5") is allowed when every member is the same number.
            for part in h.value.split(|&b| b == b',') {
                let n =
                    parse_length(trim(part)).ok_or(Reject::BadRequest("invalid Content-Length"))?;
                match content_length {
                    Some(seen) if seen != n => {
                        return Err(Reject::BadRequest("differing Content-Length values"));
                    }
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !host::is_valid(trim(h.value)) {
                return Err(Reject::BadRequest("invalid Host"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(Reject::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // RFC 9112 §3.2: more than one Host is refused whatever the version; none only in 1.1.
    if hosts > 1 {
        return Err(Reject::BadRequest("more than one Host"));
    }
    if minor_version == 1 && hosts == 0 {
        return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    Ok(Framing {
        close: close || (minor_version == 0 && !keep_alive),
        has_body: transfer_encoding || content_length.is_some_and(|n| n > 0),
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A `Content-Length` value: 1 to 19 ASCII digits (anything larger is refused, not wrapped).
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(head: &str, expect: &str) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let got = match parse(head.as_bytes(), &mut headers) {
            Parsed::Complete(h) => format!(
                "{} {} {:?} 1.{} whole={} close={} body={}",
                h.request.method(),
                h.request.path(),
                h.request.query(),
                h.request.minor_version(),
                h.len == head.len(),
                h.close,
                h.has_body
            ),
            Parsed::Partial => "partial".to_owned(),
            Parsed::Rejected(r) => format!("{:?} {}", r.status(), r.reason()),
        };
        assert_eq!(got, expect, "for {head:?}");
    }

    #[test]
    fn parses_request_lines_and_framing() {
        check(
            "GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /healthz Some(\"verbose=1\") 1.1 whole=true close=false body=false",
        );
        check(
            "HEAD / HTTP/1.0\r\n\r\n",
            "HEAD / None 1.0 whole=true close=true body=false",
        );
        check(
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            "GET / None 1.0 whole=true close=false body=false",
        );
        check(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n",
            "GET / None 1.1 whole=true close=true body=false",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / None 1.1 whole=true close=false body=true",
        );
        check(
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET / None 1.1 whole=true close=false body=false",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / None 1.1 whole=true close=false body=true",
        );
        check(
            "GET http://x:80/a/b?q HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a/b Some(\"q\") 1.1 whole=true close=false body=false",
        );
        check(
            "GET HTTPS://x?q HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / Some(\"q\") 1.1 whole=true close=false body=false",
        );
        check(
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * None 1.1 whole=true close=false body=false",
        );
        for host in ["localhost", "127.0.0.1:8080", "[::1]:80", "example.com", ""] {
            check(
                &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                "GET / None 1.1 whole=true close=false body=false",
            );
        }
        check("GET / HTTP/1.1\r\nHost: x\r\n", "partial");
        check("GET / HTT", "partial");
        check("PRI * HTTP", "partial");
    }

    #[test]
    fn rejects_bad_heads() {
        check("GARBAGE\r\n\r\n", "Some(400) malformed request head");
        check(
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "Some(400) malformed request head",
        );
        check(
            "GET / HTTP/1.1\r\n\r\n",
            "Some(400) HTTP/1.1 request without Host",
        );
        check(
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "Some(400) more than one Host",
        );
        check(
            "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            "Some(400) more than one Host",
        );
        for host in ["a b", "a/b", "[::1", "a@b", "caf\u{e9}"] {
            check(
                &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
                "Some(400) invalid Host",
            );
            check(
                &format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n"),
                "Some(400) invalid Host",
            );
        }
        check(
            "GET /readyz#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "Some(400) fragment in the request target",
        );
        check(
            "GET /readyz?a#b HTTP/1.1\r\nHost: x\r\n\r\n",
            "Some(400) fragment in the request target",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Some(400) both Content-Length and Transfer-Encoding",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "Some(400) differing Content-Length values",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "Some(400) invalid Content-Length",
        );
        check(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "Some(400) invalid Content-Length",
        );
        check(
            "GET / HTTP/2.0\r\n\r\n",
            "Some(505) unsupported HTTP version",
        );
        check("GET / HTTP/3\r\n\r\n", "Some(505) unsupported HTTP version");
        check("GET / HTTP/1.2", "Some(505) unsupported HTTP version");
        check("GET / HTTP/2", "Some(505) unsupported HTTP version");
        check("GET / HTXP/1.1\r\n\r\n", "Some(400) malformed HTTP version");
        check("GET / HTTP/1.x\r\n\r\n", "Some(400) malformed HTTP version");
        check(
            "GET / HTTP/11.1\r\n\r\n",
            "Some(400) malformed HTTP version",
        );
        check("GET / 1.1\r\n\r\n", "Some(400) malformed HTTP version");
        check(
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "None HTTP/2 connection preface",
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        check(
            &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            "Some(431) request head too large",
        );
    }
}

//! [`Response`]: what a handler returns, and how the server writes it.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

/// A complete response: status, content type, body and any extra headers.
///
/// The body is an `Arc<[u8]>` so that a handler can hand out a cached rendering without copying
/// it. The server (and any other front: `TinyHttpRoutes`) adds `Content-Length`, `Cache-Control: no-store` and, when it closes the
/// connection after the response, `Connection: close`; it drops extra headers that would
/// contradict these (`Content-Length`, `Transfer-Encoding`, `Connection`, `Cache-Control`) and
/// headers whose name or value could not be sent safely (a line break in a value, for example).
#[derive(Clone)]
pub(crate) struct Response {
    status: u16,
    content_type: Cow<'static, str>,
    body: Arc<[u8]>,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl Response {
    /// A response with `status` (200 to 599; anything else is sent as `500`), `content_type` and
    /// `body`.
    pub(crate) fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Arc<[u8]>>,
    ) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        let body: String = body.into();
        Response::new(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    /// Adds a header (for example `Allow` on a `405`).
    #[must_use]
    pub(crate) fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The status code.
    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    #[cfg_attr(not(feature = "tiny_http"), allow(dead_code))]
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    /// The status to send: [`status`](Response::status), or `500` if it is not from 200 to 599.
    pub(crate) fn sent_status(&self) -> u16 {
        if (200..=599).contains(&self.status) {
            self.status
        } else {
            crate::relay::warn!(
                "health endpoint handler returned status {}; sending 500",
                self.status
            );
            500
        }
    }

    /// The `Content-Type` to send: the one given, or `application/octet-stream` if it could not
    /// be sent safely.
    pub(crate) fn sent_content_type(&self) -> &str {
        if is_safe_value(&self.content_type) {
            &self.content_type
        } else {
            "application/octet-stream"
        }
    }

    /// The extra headers to send, in order: those that can be sent safely and that do not
    /// contradict what every front adds itself (see the type's docs).
    pub(crate) fn sent_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().filter_map(|(name, value)| {
            if is_token(name) && is_safe_value(value) && !is_reserved(name) {
                Some((&**name, &**value))
            } else {
                crate::relay::debug!("health endpoint: dropping response header {name:?}");
                None
            }
        })
    }

    /// Appends the response to `out`.
    ///
    /// `head_only` leaves the body out (for `HEAD`) but keeps its `Content-Length`; `close` adds
    /// `Connection: close`; otherwise `keep_alive_1_0` adds `Connection: keep-alive`, which an
    /// HTTP/1.0 client needs to keep the connection.
    pub(super) fn write_to(
        &self,
        out: &mut Vec<u8>,
        head_only: bool,
        close: bool,
        keep_alive_1_0: bool,
    ) {
        let status = self.sent_status();
        let content_type = self.sent_content_type();
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\n",
            reason(status)
        );
        // 204 and 304 have no body and (for 204) must not say how long it is.
        let bodyless = status == 204 || status == 304;
        if !bodyless {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if keep_alive_1_0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        for (name, value) in self.sent_headers() {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodyless {
            out.extend_from_slice(&self.body);
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .field("headers", &self.headers)
            .finish()
    }
}

/// The reason phrase for the statuses this endpoint sends; empty for others (it is optional).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Whether `s` is a header name (an RFC 9110 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` can be a header value: visible ASCII, spaces and tabs only.
fn is_safe_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Headers the server owns.
fn is_reserved(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "cache-control",
    ]
    .iter()
    .any(|r| name.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(resp: &Response, head_only: bool, close: bool, keep_alive_1_0: bool, expect: &str) {
        let mut out = Vec::new();
        resp.write_to(&mut out, head_only, close, keep_alive_1_0);
        assert_eq!(String::from_utf8(out).unwrap(), expect);
    }

    #[test]
    fn writes_framing_and_no_store() {
        let ok = Response::text(200, "ok\n");
        check(
            &ok,
            false,
            false,
            false,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Cache-Control: no-store\r\nContent-Length: 3\r\n\r\nok\n",
        );
        check(
            &ok,
            true,
            true,
            false,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Cache-Control: no-store\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        );
        check(
            &Response::new(204, "text/plain", Vec::new()),
            false,
            false,
            true,
            "HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\
             Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\n",
        );
    }

    #[test]
    fn drops_unsafe_and_reserved_headers_and_bad_statuses() {
        let r = Response::new(42, "a\r\nb", &b""[..])
            .with_header("Allow", "GET, HEAD")
            .with_header("X-Split", "a\r\nSet-Cookie: x")
            .with_header("Bad Name", "v")
            .with_header("content-length", "7")
            .with_header("Cache-Control", "max-age=60");
        check(
            &r,
            false,
            false,
            false,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/octet-stream\r\n\
             Cache-Control: no-store\r\nContent-Length: 0\r\nAllow: GET, HEAD\r\n\r\n",
        );
    }
}

//! The `Host` field's value checked against its grammar, which RFC 9112 §3.2 requires a server
//! to answer `400` when it does not match.
//!
//! The grammar (RFC 9110 §7.2, RFC 3986 §3.2.2 and §3.2.3):
//!
//! ```text
//! Host       = uri-host [ ":" port ]
//! uri-host   = IP-literal / IPv4address / reg-name
//! IP-literal = "[" ( IPv6address / IPvFuture ) "]"
//! IPvFuture  = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
//! reg-name   = *( unreserved / pct-encoded / sub-delims )
//! port       = *DIGIT
//! ```
//!
//! An IPv4 address is also a reg-name, so it needs no rule of its own; an IPv6 address is
//! checked by the standard library's parser (which, like RFC 3986, takes no zone identifier).
//! A reg-name may be empty, and so may the port: an empty `Host` is what RFC 9112 §3.2 tells a
//! client to send when the target URI has no authority, so it is accepted, and so is `name:`.

use std::net::Ipv6Addr;

/// Whether `value` (the field value, without surrounding whitespace) is a valid `Host`.
pub(super) fn is_valid(value: &[u8]) -> bool {
    let (host, port) = match value {
        [b'[', literal @ ..] => match literal.iter().position(|&b| b == b']') {
            Some(end) => {
                if !is_ip_literal(&literal[..end]) {
                    return false;
                }
                (None, &literal[end + 1..])
            }
            None => return false,
        },
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (Some(&value[..end]), &value[end..])
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && host.is_none_or(is_reg_name)
}

/// `IPv6address / IPvFuture`, the inside of the brackets of an IP-literal.
fn is_ip_literal(inside: &[u8]) -> bool {
    match inside {
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = rest.iter().position(|&b| b == b'.') else {
                return false;
            };
            let (version, address) = (&rest[..dot], &rest[dot + 1..]);
            !version.is_empty()
                && version.iter().all(u8::is_ascii_hexdigit)
                && !address.is_empty()
                && address
                    .iter()
                    .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':')
        }
        _ => std::str::from_utf8(inside).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok()),
    }
}

/// `*( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &[u8]) -> bool {
    let mut rest = name;
    while let [b, tail @ ..] = rest {
        rest = match (b, tail) {
            (b'%', [hi, lo, after @ ..]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                after
            }
            (&b, _) if is_unreserved(b) || is_sub_delim(b) => tail,
            _ => return false,
        };
    }
    true
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `"!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="`.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn valid_hosts() {
        for host in [
            "localhost",
            "example.com",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "[2001:db8::ffff:192.0.2.1]:443",
            "[v1.fe80::a+b]",
            "xn--bcher-kva.example",
            "a%2Fb",
            "sub-delims!$&'()*+,;=",
            "under_score~tilde",
            "",
            "name:",
            ":80",
        ] {
            assert!(is_valid(host.as_bytes()), "{host:?} is valid");
        }
    }

    #[test]
    fn invalid_hosts() {
        for host in [
            "a b",
            "a/b",
            "a?b",
            "a#b",
            "a@b",
            "[::1",
            "::1",
            "[::1]x",
            "[::1]:x",
            "[127.0.0.1]",
            "[::1%25eth0]",
            "[v.x]",
            "[v1.]",
            "[vg.x]",
            "host:port",
            "host:80:81",
            "a%zz",
            "a%2",
            "caf\u{e9}",
            "a\tb",
            "\"quoted\"",
        ] {
            assert!(!is_valid(host.as_bytes()), "{host:?} is invalid");
        }
    }
}

//! The canonical host of a request (SPEC §3, routing): what routes match on, and what the
//! upstream receives as `Host` and `X-Forwarded-Host`.
//!
//! A host is `name[:port]` where the name is a DNS name, a dotted-quad IPv4 address or a
//! bracketed IPv6 address, and the port at most one run of 1-5 decimal digits (1-65535).
//! Canonical means: lower-cased, one trailing dot removed (`admin.example.com.` is
//! `admin.example.com`), an IPv6 address in its compressed form (`[0:0::1]` is `[::1]`), and the
//! port without leading zeros. Anything else is refused, because an upstream that reads an odd
//! spelling differently from us (`admin.example.com:80:80`, `127.1`, `ADMIN.EXAMPLE.COM.`) could
//! serve a virtual host the route check never saw.
//!
//! Choices where the SPEC is silent: `_` is accepted inside DNS labels (container and service
//! names use it), a label may not start or end with `-`; a name whose last label is a number
//! (all digits, or hex such as `0x1`) must be a valid dotted-quad IPv4 address without leading
//! zeros (`1.2.3`, `010.0.0.1`, `127.1` and `127.0.0.0x1` are refused: URL parsers and resolvers
//! read them as IPv4 addresses that routes never see); IPv6 zone identifiers are refused.
//!
//! Checking a host is a pure function of its text, so a connection remembers the first canonical
//! host its requests named and does not check the same bytes again (`inbound::ConnInfo::host`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::HeaderValue;

/// A canonical `host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Host {
    /// The canonical text, ready to be sent as `Host`.
    value: HeaderValue,
    /// Length of the name part of `value` (brackets included for IPv6).
    name_len: usize,
    port: Option<u16>,
}

/// Why a host was refused (400 `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHost;

impl fmt::Display for InvalidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid host: expected a DNS name, an IPv4 address or a bracketed IPv6 address, with at most one decimal port")
    }
}

impl std::error::Error for InvalidHost {}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Host {
    /// Canonicalizes a host: a `Host` header's or `:authority`'s text, or the configuration's.
    pub fn parse(text: &str) -> Result<Host, InvalidHost> {
        let (name, port_text) = split(text)?;
        let port = port_text.map(parse_port).transpose()?;
        let mut canonical = if let Some(inner) = name.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(InvalidHost)?;
            let addr: Ipv6Addr = inner.parse().map_err(|_| InvalidHost)?;
            format!("[{addr}]")
        } else {
            let stripped = name.strip_suffix('.').unwrap_or(name);
            check_name(stripped)?;
            stripped.to_ascii_lowercase()
        };
        let name_len = canonical.len();
        if let Some(port) = port {
            canonical.push(':');
            canonical.push_str(&port.to_string());
        }
        Ok(Host {
            value: HeaderValue::try_from(canonical).map_err(|_| InvalidHost)?,
            name_len,
            port,
        })
    }

    /// `name[:port]`, canonical.
    pub fn as_str(&self) -> &str {
        // Built from `&str` or checked by `to_str`: always visible ASCII.
        self.value.to_str().unwrap_or("")
    }

    /// The canonical text as a header value (shared, not copied).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// The name without the port (an IPv6 address keeps its brackets).
    pub fn name(&self) -> &str {
        self.as_str().get(..self.name_len).unwrap_or("")
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// `name` and the port text after the one `:` (IPv6 literals in brackets).
fn split(text: &str) -> Result<(&str, Option<&str>), InvalidHost> {
    if text.starts_with('[') {
        let end = text.find(']').ok_or(InvalidHost)?;
        let (name, rest) = text.split_at(end + 1);
        return match rest {
            "" => Ok((name, None)),
            _ => Ok((name, Some(rest.strip_prefix(':').ok_or(InvalidHost)?))),
        };
    }
    match text.split_once(':') {
        None => Ok((text, None)),
        Some((_, port)) if port.contains(':') => Err(InvalidHost),
        Some((name, port)) => Ok((name, Some(port))),
    }
}

fn parse_port(text: &str) -> Result<u16, InvalidHost> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidHost);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(InvalidHost),
        Ok(port) => Ok(port),
    }
}

/// A DNS name (see the module docs) or a dotted-quad IPv4 address, either case.
fn check_name(name: &str) -> Result<(), InvalidHost> {
    if name.is_empty() || name.len() > 253 {
        return Err(InvalidHost);
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if ends_in_a_number(last) {
        return ipv4(name);
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(InvalidHost)
    }
}

/// WHATWG URL's "ends in a number" for the last label: all decimal digits, or a hex number
/// (`0x`, `0x7f000001`). URL parsers and `inet_aton` read a name ending so as an IPv4 address in
/// some notation (`127.0.0.0x1` is 127.0.0.1), so it must be a plain dotted quad or nothing.
fn ends_in_a_number(last: &str) -> bool {
    match last.as_bytes() {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        digits => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
    }
}

/// Exactly four decimal octets without leading zeros (std's parser is that strict).
fn ipv4(name: &str) -> Result<(), InvalidHost> {
    name.parse::<Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| InvalidHost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> Result<String, InvalidHost> {
        Ok(Host::parse(text)?.as_str().to_owned())
    }

    #[test]
    fn canonical_hosts_are_kept_as_they_are() {
        for host in [
            "admin.example.com",
            "admin.example.com:8443",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "my_service:3000",
            "a-b.c",
            "0xdead.example.com",
            "api.0xg",
        ] {
            assert_eq!(canonical(host).as_deref(), Ok(host), "{host}");
        }
    }

    #[test]
    fn case_trailing_dot_ipv6_form_and_port_zeros_are_canonicalized() {
        let cases = [
            ("ADMIN.EXAMPLE.COM", "admin.example.com"),
            ("admin.example.com.", "admin.example.com"),
            ("ADMIN.EXAMPLE.COM.:443", "admin.example.com:443"),
            ("Admin.Example.Com:0080", "admin.example.com:80"),
            ("[0:0::1]", "[::1]"),
            ("[0:0::1]:80", "[::1]:80"),
            ("[::FFFF:1.2.3.4]", "[::ffff:1.2.3.4]"),
            ("localhost:08080", "localhost:8080"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn ambiguous_or_malformed_hosts_are_refused() {
        for host in [
            "",
            ":80",
            "admin.example.com:80:80",
            "admin.example.com:",
            "admin.example.com:http",
            "admin.example.com:65536",
            "admin.example.com:0",
            "admin.example.com:123456",
            "admin..example.com",
            "admin.example.com..",
            ".admin.example.com",
            ".",
            "a b",
            "-admin.example.com",
            "admin-.example.com",
            "admin.example.com/x",
            "user@admin.example.com",
            "[::1",
            "[zz::1]",
            "[::1]x",
            "[::1]:",
            "[fe80::1%25eth0]",
            "::1",
            "1.2.3",
            "127.1",
            "010.0.0.1",
            "256.0.0.1",
            "1.2.3.4.5",
            "example.123",
            "127.0.0.0x1",
            "0x7f000001",
            "0X7F000001:80",
            "0x7f000001.",
            "0x7f.0.0.0x1",
            "0x7f.0x1",
            "api.0x",
            "api.0xdead",
            "é.example.com",
        ] {
            assert_eq!(canonical(host), Err(InvalidHost), "{host:?} was accepted");
        }
    }

    #[test]
    fn name_and_port_are_split_after_canonicalization() {
        let host = Host::parse("API.Example.com.:8443").unwrap();
        assert_eq!(host.name(), "api.example.com");
        assert_eq!(host.port(), Some(8443));
        let v6 = Host::parse("[0::1]:9").unwrap();
        assert_eq!(v6.name(), "[::1]");
        assert_eq!(v6.port(), Some(9));
        assert_eq!(Host::parse("x").unwrap().port(), None);
    }

    #[test]
    fn canonicalizing_twice_changes_nothing() {
        for host in ["ADMIN.example.COM.:0443", "[0:0::1]:1", "a_b.C."] {
            let once = canonical(host).unwrap();
            assert_eq!(canonical(&once).unwrap(), once);
        }
    }
}

//! Request-path normalization (SPEC §4.1).
//!
//! This module owns one job: turning the path component hyper hands us (`uri.path()`, no query,
//! the fragment already dropped by the `http` crate) into the *normalized path*, or refusing it.
//! Route matching uses [`NormalizedPath::match_path`]; the upstream receives
//! [`NormalizedPath::forward_path`], so the proxy and the upstream always agree on which route
//! applied. It is pure, std-only and runs on every request: one pass over the input bytes, one
//! output `String` plus the `match_path` copy, no other heap use.
//!
//! It deliberately leaves to its caller: rejecting absolute-form, authority-form (CONNECT) and
//! asterisk-form targets before looking at the path (hyper reports `/admin` as the path of
//! `GET http://evil.example/admin`; here `*` and `""` only fail as [`PathError::NotOriginForm`]),
//! the query string (forwarded unchanged, never routed on), and mapping every [`PathError`] to
//! 400 `invalid_request` with [`PathError::description`] as the public text.
//!
//! # Rules
//!
//! * The path must start with `/`.
//! * For checking, the path is fully percent-decoded once. A malformed triplet (`%zz`, `%2`, a
//!   trailing `%`, IIS-style `%u002e`) is refused, and the decoded bytes must be UTF-8: raw bytes
//!   are visible ASCII (anything else is refused), so a multi-byte character must be made of
//!   consecutive triplets (`%C3a`, `%C0%AF`, `%FF`, `%ED%A0%80` and truncated `%E2%82` are refused).
//!   An encoded `/`, `\` or NUL (`%2F`, `%5C`, `%00`, either hex case) and a raw `\` are refused,
//!   like Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST`.
//! * The output decodes only percent-encoded unreserved characters (ALPHA, DIGIT, `-._~`); every
//!   other triplet stays encoded with upper-case hex (`caf%c3%a9` → `caf%C3%A9`, `%3b` → `%3B`).
//!   Letters are never case-folded (`/ADMIN` stays `/ADMIN`).
//! * Dot-segments (`.`, `..`, also when spelled `%2e`) are resolved segment-aware as in RFC 3986
//!   §5.2.4, and repeated slashes are collapsed. A trailing slash is kept, also after a final
//!   dot-segment (`/a/b/..` → `/a/`, `/a/.` → `/a/`).
//! * A raw `;` is refused unless path parameters are allowed (see below). `%3B` is never a `;`.
//!
//! # Choices where the SPEC is silent
//!
//! * **Slashes are merged before dot-segments are resolved**: an empty segment does not exist, so
//!   `/a//../b` is `/b` (what nginx and POSIX path resolution do). Envoy canonicalizes first and
//!   merges afterwards (`/a/b`). Either is safe here because the normalized path is what the
//!   upstream receives; we picked the reading in which `//` always means exactly `/`.
//! * **Climbing above the root is an error** ([`PathError::AboveRoot`]), not clamped to `/` as
//!   RFC 3986 and Envoy do: no legitimate client sends `/../x`.
//! * **Encoded control characters** (`%01`–`%1F`, `%7F`, e.g. `%0A`, `%0D`) are refused with the
//!   extra variant [`PathError::EncodedControl`] (`%00` stays [`PathError::EncodedSeparator`], as
//!   the SPEC lists it): an upstream that decodes the path could write them into logs or headers.
//!   `%20` and encoded non-ASCII that is valid UTF-8 (C1 controls included) are accepted and stay
//!   encoded, so they can never reach the upstream as raw bytes.
//! * **Raw visible-ASCII characters outside RFC 3986 `pchar`** (`"` `#` `<` `>` `?` `[` `]` `^`
//!   `` ` `` `{` `|` `}`) are percent-encoded in the output rather than refused: browsers send `|`,
//!   `^`, `[`, `]` raw, and encoding makes the raw and the encoded spelling one path. `?` and `#`
//!   never arrive from hyper, but encoding them means a path can never inject a query or fragment.
//! * **Double encoding is decoded once**: `%252e` is `%25` followed by the literal characters
//!   `2e`; it is not a dot-segment and stays `%252e`. The characters after `%25` are literal path
//!   text, so their case is preserved (`%252e` is not rewritten to `%252E`: that would be a
//!   different path for a case-sensitive upstream). An upstream that decodes twice is outside what
//!   a single-decoding proxy can protect.
//! * **Path parameters** (`allow_path_parameters = true`): in each segment, everything from the
//!   first raw `;` up to the next `/` is the parameter; it is checked and canonicalized like the
//!   rest but ignored for dot-segment resolution and matching. A dot-segment (`..;x`) or a segment
//!   with an empty name (`/;x`, a repeated slash once its parameter is ignored) disappears from
//!   both outputs together with its parameter. So `match_path` is always `forward_path` with each
//!   segment's `;…` removed.
//! * **Precedence**: the first problem from left to right is reported (all map to the same 400).
//! * Normalizing an output again returns it unchanged (tested).

use std::fmt;

use crate::percent::push_triplet;

/// Why a request target was refused (each maps to 400 `invalid_request`; `description()` is the
/// short public text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path: empty, `*`, or not starting with `/`.
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// The fully decoded path is not valid UTF-8.
    InvalidUtf8,
    /// `%2F`, `%5C` or `%00`.
    EncodedSeparator,
    /// Another encoded control character: `%01`–`%1F` or `%7F`.
    EncodedControl,
    /// A raw `\`.
    Backslash,
    /// A raw byte > 0x7E, a control character or a space.
    NonAscii,
    /// A `..` segment climbs above `/`.
    AboveRoot,
    /// A raw `;` while path parameters are not allowed.
    PathParameter,
}

impl PathError {
    /// Short, fixed text for the `error_description` of the 400 answer.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "request target must be an origin-form path",
            PathError::BadPercentEncoding => "path contains a malformed percent-encoding",
            PathError::InvalidUtf8 => "path does not decode to valid UTF-8",
            PathError::EncodedSeparator => "path contains an encoded '/', '\\' or NUL",
            PathError::EncodedControl => "path contains an encoded control character",
            PathError::Backslash => "path contains a '\\'",
            PathError::NonAscii => "path contains a space, control or non-ASCII character",
            PathError::AboveRoot => "path climbs above the root",
            PathError::PathParameter => "path parameters (';') are not allowed",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for PathError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// What route matching uses: dot-segments resolved, `//` collapsed, unreserved `%XX` decoded,
    /// other `%XX` upper-cased, and (when path parameters are allowed) each segment's `;...`
    /// parameters removed.
    pub match_path: String,
    /// What is forwarded upstream: same as `match_path` except that with `allow_path_parameters`
    /// the surviving segments keep their `;...` parameters. Equal to `match_path` when there are
    /// no parameters.
    pub forward_path: String,
}

/// Normalizes `path` (see the module documentation for the rules).
///
/// # Errors
///
/// The first [`PathError`] found from left to right; every one of them means 400.
pub fn normalize(path: &str, allow_path_parameters: bool) -> Result<NormalizedPath, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Invariant: `out` is `/` or `/seg/…/seg/` at the start of every segment, and pure ASCII.
    let mut out = String::with_capacity(bytes.len());
    out.push('/');
    let mut utf8 = Utf8Seq::default();
    let mut i = 1;
    loop {
        let seg_start = out.len();
        // Where the segment's parameters begin in `out` (its first raw `;`), if any.
        let mut name_end = None;
        while let Some(&b) = bytes.get(i) {
            if b == b'/' {
                break;
            }
            if b == b'%' {
                let decoded = decode_triplet(bytes, i)?;
                push_decoded(&mut out, decoded, &mut utf8)?;
                i += 3;
                continue;
            }
            match b {
                b'\\' => return Err(PathError::Backslash),
                b';' if !allow_path_parameters => return Err(PathError::PathParameter),
                0x21..=0x7E => {}
                _ => return Err(PathError::NonAscii),
            }
            // A raw (ASCII) byte can never continue a multi-byte character.
            utf8.expect_boundary()?;
            if b == b';' {
                name_end.get_or_insert(out.len());
                out.push(';');
            } else if is_raw_pchar(b) {
                out.push(char::from(b));
            } else {
                push_triplet(&mut out, b);
            }
            i += 1;
        }
        utf8.expect_boundary()?;
        let at_end = i >= bytes.len();
        match &out.as_bytes()[seg_start..name_end.unwrap_or(out.len())] {
            // Empty name: a repeated slash (or trailing `/`); `.`: this directory.
            b"" | b"." => out.truncate(seg_start),
            b".." => {
                out.truncate(seg_start);
                pop_segment(&mut out)?;
            }
            _ if !at_end => out.push('/'),
            _ => {}
        }
        if at_end {
            break;
        }
        i += 1; // the '/'
    }
    let match_path = if allow_path_parameters && out.contains(';') {
        strip_parameters(&out)
    } else {
        out.clone()
    };
    Ok(NormalizedPath {
        match_path,
        forward_path: out,
    })
}

/// Removes the last segment of `out` (which ends with `/`), keeping its leading `/`.
fn pop_segment(out: &mut String) -> Result<(), PathError> {
    let before_slash = &out.as_bytes()[..out.len() - 1];
    match before_slash.iter().rposition(|&b| b == b'/') {
        Some(pos) => {
            out.truncate(pos + 1);
            Ok(())
        }
        None => Err(PathError::AboveRoot),
    }
}

/// `forward_path` → `match_path`: drops each segment's `;…` (its first `;` up to the next `/`).
fn strip_parameters(path: &str) -> String {
    let mut stripped = String::with_capacity(path.len());
    for segment in path.split_inclusive('/') {
        match segment.find(';') {
            Some(semi) => {
                stripped.push_str(&segment[..semi]);
                if segment.ends_with('/') {
                    stripped.push('/');
                }
            }
            None => stripped.push_str(segment),
        }
    }
    stripped
}

/// Decodes the triplet starting at `bytes[i] == b'%'`.
fn decode_triplet(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex_value);
    let lo = bytes.get(i + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadPercentEncoding),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends a decoded byte: unreserved ones as themselves, the rest re-encoded in upper case.
fn push_decoded(out: &mut String, decoded: u8, utf8: &mut Utf8Seq) -> Result<(), PathError> {
    if decoded >= 0x80 {
        utf8.push(decoded)?;
        push_triplet(out, decoded);
        return Ok(());
    }
    utf8.expect_boundary()?;
    match decoded {
        0x00 | b'/' | b'\\' => return Err(PathError::EncodedSeparator),
        0x01..=0x1F | 0x7F => return Err(PathError::EncodedControl),
        _ if is_unreserved(decoded) => out.push(char::from(decoded)),
        _ => push_triplet(out, decoded),
    }
    Ok(())
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / `-` / `.` / `_` / `~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `pct-encoded` and `;` (both handled by the caller).
fn is_raw_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// Checks that percent-decoded non-ASCII bytes form valid UTF-8, one character at a time.
#[derive(Default)]
struct Utf8Seq {
    buf: [u8; 4],
    len: usize,
    /// Length of the character being collected; 0 between characters.
    need: usize,
}

impl Utf8Seq {
    fn push(&mut self, b: u8) -> Result<(), PathError> {
        if self.need == 0 {
            self.need = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                // Continuation byte without a lead, overlong `C0`/`C1`, or beyond U+10FFFF.
                _ => return Err(PathError::InvalidUtf8),
            };
            self.len = 0;
        }
        self.buf[self.len] = b;
        self.len += 1;
        if self.len == self.need {
            self.need = 0;
            // Rejects overlong forms, surrogates and code points above U+10FFFF.
            std::str::from_utf8(&self.buf[..self.len]).map_err(|_| PathError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// The next byte is ASCII (or the path ends): no character may be left incomplete.
    fn expect_boundary(&self) -> Result<(), PathError> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathError::*;

    /// `Ok((match_path, forward_path))` or the refusal.
    type Expected = Result<(&'static str, &'static str), PathError>;

    const fn ok(path: &'static str) -> Expected {
        Ok((path, path))
    }

    /// (input, `allow_path_parameters`, expected)
    const CASES: &[(&str, bool, Expected)] = &[
        // Ordinary paths pass through unchanged.
        ("/", false, ok("/")),
        ("/healthz", false, ok("/healthz")),
        ("/orders/7", false, ok("/orders/7")),
        ("/api/v1/users/42/", false, ok("/api/v1/users/42/")),
        ("/a-b_c.d~e/f", false, ok("/a-b_c.d~e/f")),
        ("/x!$&'()*+,=:@y", false, ok("/x!$&'()*+,=:@y")),
        ("/ADMIN", false, ok("/ADMIN")),
        ("/...", false, ok("/...")),
        ("/.a/..b/c..", false, ok("/.a/..b/c..")),
        // Not origin-form.
        ("", false, Err(NotOriginForm)),
        ("*", false, Err(NotOriginForm)),
        ("admin", false, Err(NotOriginForm)),
        ("example.com:443", false, Err(NotOriginForm)),
        // Dot-segments.
        ("/public/../admin", false, ok("/admin")),
        ("/public/%2e%2e/admin", false, ok("/admin")),
        ("/public/%2E./admin", false, ok("/admin")),
        ("/./admin", false, ok("/admin")),
        ("/a/./b/../c", false, ok("/a/c")),
        ("/a/b/..", false, ok("/a/")),
        ("/a/.", false, ok("/a/")),
        ("/a/%2e", false, ok("/a/")),
        ("/a/..", false, ok("/")),
        ("/.", false, ok("/")),
        ("/a/b/", false, ok("/a/b/")),
        ("/%2E%2E/admin", false, Err(AboveRoot)),
        ("/..", false, Err(AboveRoot)),
        ("/a/../..", false, Err(AboveRoot)),
        ("/a/b/../../..", false, Err(AboveRoot)),
        ("/a/b/../../../c", false, Err(AboveRoot)),
        // Repeated slashes (merged before dot resolution).
        ("//admin", false, ok("/admin")),
        ("///", false, ok("/")),
        ("/a//b///c//", false, ok("/a/b/c/")),
        ("/a//../b", false, ok("/b")),
        ("//..", false, Err(AboveRoot)),
        // Unreserved decoding and hex case.
        ("/%61dmin", false, ok("/admin")),
        ("/%41%42c", false, ok("/ABc")),
        ("/%7e%2D%5f%30", false, ok("/~-_0")),
        ("/caf%c3%a9", false, ok("/caf%C3%A9")),
        ("/a%20b", false, ok("/a%20b")),
        ("/%3a%40", false, ok("/%3A%40")),
        ("/%F0%9F%98%80", false, ok("/%F0%9F%98%80")),
        ("/%c2%85", false, ok("/%C2%85")),
        ("/%252e%252e/admin", false, ok("/%252e%252e/admin")),
        ("/%252F", false, ok("/%252F")),
        ("/q%3Fx%23y", false, ok("/q%3Fx%23y")),
        // Raw visible ASCII outside pchar is percent-encoded.
        ("/a\"b", false, ok("/a%22b")),
        ("/{id}", false, ok("/%7Bid%7D")),
        ("/a|b^c", false, ok("/a%7Cb%5Ec")),
        ("/[0]`<>", false, ok("/%5B0%5D%60%3C%3E")),
        ("/a?b#c", false, ok("/a%3Fb%23c")),
        // Malformed percent-encoding.
        ("/%zz", false, Err(BadPercentEncoding)),
        ("/%2", false, Err(BadPercentEncoding)),
        ("/a%", false, Err(BadPercentEncoding)),
        ("/%u002e", false, Err(BadPercentEncoding)),
        ("/%g1", false, Err(BadPercentEncoding)),
        // Invalid UTF-8 after decoding.
        ("/public/%C0%AE%C0%AE/admin", false, Err(InvalidUtf8)),
        ("/a%C0%AFb", false, Err(InvalidUtf8)),
        ("/%FF", false, Err(InvalidUtf8)),
        ("/%80", false, Err(InvalidUtf8)),
        ("/%E2%82", false, Err(InvalidUtf8)),
        ("/%E2%82/x", false, Err(InvalidUtf8)),
        ("/%E2%82x", false, Err(InvalidUtf8)),
        ("/%C3%C3", false, Err(InvalidUtf8)),
        ("/%ED%A0%80", false, Err(InvalidUtf8)),
        ("/%E0%80%AF", false, Err(InvalidUtf8)),
        ("/%F4%90%80%80", false, Err(InvalidUtf8)),
        // Encoded separators and controls.
        ("/admin%2f", false, Err(EncodedSeparator)),
        ("/a%2Fb", false, Err(EncodedSeparator)),
        ("/public/..%2fadmin", false, Err(EncodedSeparator)),
        ("/a%00b", false, Err(EncodedSeparator)),
        ("/a%5Cb", false, Err(EncodedSeparator)),
        ("/a%5cb", false, Err(EncodedSeparator)),
        ("/a%0Ab", false, Err(EncodedControl)),
        ("/a%0db", false, Err(EncodedControl)),
        ("/a%09", false, Err(EncodedControl)),
        ("/a%7F", false, Err(EncodedControl)),
        // Raw bytes that are refused.
        ("/public\\..\\admin", false, Err(Backslash)),
        ("/a\\", true, Err(Backslash)),
        ("/café", false, Err(NonAscii)),
        ("/a b", false, Err(NonAscii)),
        ("/a\tb", false, Err(NonAscii)),
        ("/a\u{7f}", false, Err(NonAscii)),
        ("/a\0", false, Err(NonAscii)),
        // Path parameters refused unless allowed.
        ("/admin;x", false, Err(PathParameter)),
        ("/public/..;/admin", false, Err(PathParameter)),
        ("/%3B", false, ok("/%3B")),
        ("/%3b", true, ok("/%3B")),
        ("/a%3Bb/../c", false, ok("/c")),
        // Path parameters when allowed.
        ("/admin;x", true, Ok(("/admin", "/admin;x"))),
        ("/admin;", true, Ok(("/admin", "/admin;"))),
        ("/public/..;/admin", true, ok("/admin")),
        ("/public/%2e%2e;x/admin", true, ok("/admin")),
        ("/a;p/../b", true, ok("/b")),
        ("/a;p/b;q", true, Ok(("/a/b", "/a;p/b;q"))),
        ("/a;p/./b", true, Ok(("/a/b", "/a;p/b"))),
        ("/a;x;y=1", true, Ok(("/a", "/a;x;y=1"))),
        ("/a;x/", true, Ok(("/a/", "/a;x/"))),
        ("/a/.;x", true, ok("/a/")),
        ("/a/;x/b", true, ok("/a/b")),
        ("/;x", true, ok("/")),
        ("/a;%41%3b", true, Ok(("/a", "/a;A%3B"))),
        ("/a%3Bx;y", true, Ok(("/a%3Bx", "/a%3Bx;y"))),
        ("/..;/admin", true, Err(AboveRoot)),
        ("/a;b%2Fc", true, Err(EncodedSeparator)),
        ("/a;%zz", true, Err(BadPercentEncoding)),
    ];

    fn run(input: &str, allow: bool) -> Result<(String, String), PathError> {
        normalize(input, allow).map(|n| (n.match_path, n.forward_path))
    }

    #[test]
    fn table_of_paths_normalizes_or_refuses_as_specified() {
        assert!(CASES.len() >= 60);
        let mut failures = Vec::new();
        for &(input, allow, expected) in CASES {
            let expected = expected.map(|(m, f)| (m.to_owned(), f.to_owned()));
            let got = run(input, allow);
            if got != expected {
                failures.push(format!(
                    "{input:?} allow={allow}: got {got:?}, want {expected:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn normalizing_a_normalized_path_changes_nothing() {
        for &(input, allow, _) in CASES {
            let Ok(first) = normalize(input, allow) else {
                continue;
            };
            assert_eq!(
                normalize(&first.forward_path, allow).as_ref(),
                Ok(&first),
                "forward_path of {input:?}"
            );
            assert_eq!(
                run(&first.match_path, allow),
                Ok((first.match_path.clone(), first.match_path.clone())),
                "match_path of {input:?}"
            );
        }
    }

    /// Deterministic pseudo-random paths built from tricky pieces; every accepted one must satisfy
    /// the output invariants.
    #[test]
    fn random_paths_keep_the_output_invariants() {
        const PIECES: &[&str] = &[
            "/", "/", "//", "a", "B", ".", "..", "%2e", "%2E%2e", ";", ";p", "%3B", "%41",
            "%c3%a9", "%e2%82", "%2F", "%zz", "\\", "{", "~", "%25", "é", " ", "%0a",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut input = String::from("/");
            for _ in 0..next() % 8 {
                input.push_str(PIECES[next() % PIECES.len()]);
            }
            let allow = next() % 2 == 0;
            let Ok(n) = normalize(&input, allow) else {
                continue;
            };
            accepted += 1;
            for p in [&n.match_path, &n.forward_path] {
                assert!(p.starts_with('/'), "{input:?} -> {p:?}");
                assert!(!p.contains("//"), "{input:?} -> {p:?}");
                assert!(p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'));
            }
            assert!(n
                .match_path
                .split('/')
                .all(|s| s != "." && s != ".." && !s.contains(';')));
            assert_eq!(n.match_path, strip_parameters(&n.forward_path), "{input:?}");
            assert_eq!(
                normalize(&n.forward_path, allow).as_ref(),
                Ok(&n),
                "{input:?}"
            );
        }
        assert!(accepted > 1_000, "only {accepted} accepted");
    }

    #[test]
    fn every_error_has_its_own_description() {
        let all = [
            NotOriginForm,
            BadPercentEncoding,
            InvalidUtf8,
            EncodedSeparator,
            EncodedControl,
            Backslash,
            NonAscii,
            AboveRoot,
            PathParameter,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            assert!(!e.description().is_empty());
            assert!(seen.insert(e.description()), "{e:?} repeats a description");
            assert_eq!(e.to_string(), e.description());
        }
        assert_eq!(
            EncodedSeparator.description(),
            "path contains an encoded '/', '\\' or NUL"
        );
    }
}

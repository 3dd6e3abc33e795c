//! Plain claim headers (`[identity.headers]`, SPEC §5): each value made reversible by one rule,
//! *encode*: bytes 0x21–0x7E other than `%` and `,` pass; every other byte of the UTF-8 text
//! (space, `%`, `,`, controls, non-ASCII) becomes `%XX`, upper-case hex. So no claim value can
//! ever put CR, LF or NUL into a header, and `,` is free to join array elements.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::percent::push_triplet;
use crate::token::claims::{ClaimPath, Claims};

/// Appends *encode*(`text`) to `out`: runs of passing bytes are copied whole (most claim
/// values are one run), each other byte becomes its triplet.
pub fn encode_into(text: &str, out: &mut String) {
    out.reserve(text.len());
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(rest) = bytes.get(start..).filter(|r| !r.is_empty()) {
        let run = rest.iter().position(|&b| !passes(b)).unwrap_or(rest.len());
        // A run is ASCII, so it starts and ends on character boundaries.
        out.push_str(text.get(start..start + run).unwrap_or_default());
        if let Some(&b) = rest.get(run) {
            push_triplet(out, b);
        }
        start += run + 1;
    }
}

/// A byte *encode* passes as it is: visible ASCII but `%` and `,`.
fn passes(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'%' && b != b','
}

/// The header text for one claim value; `None` for `null` (no header is sent).
pub fn header_text(value: &Value) -> Option<String> {
    let mut out = String::new();
    match value {
        Value::Null => return None,
        Value::String(s) => encode_into(s, &mut out),
        Value::Bool(_) | Value::Number(_) => out = value.to_string(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Value::String(s) = item {
                    encode_into(s, &mut out);
                }
            }
        }
        // Compact JSON, keys in the order the token or userinfo gave them (serde_json's
        // `preserve_order`).
        Value::Array(_) | Value::Object(_) => encode_into(&value.to_string(), &mut out),
    }
    Some(out)
}

/// Sets one header per `[identity.headers]` entry whose claim is present and not null.
pub fn apply(headers: &mut HeaderMap, mapping: &[(HeaderName, ClaimPath)], claims: &Claims) {
    for (name, claim) in mapping {
        let Some(text) = claim.lookup(claims).and_then(header_text) else {
            continue;
        };
        // *encode* output is always visible ASCII, so this cannot fail.
        if let Ok(value) = HeaderValue::try_from(text) {
            headers.insert(name.clone(), value);
        }
    }
}

/// Reverses *encode* (for backends and tests): `%XX` → byte; `None` if not valid UTF-8 or a
/// triplet is broken.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_pass_visible_ascii_and_encode_everything_else() {
        let cases = [
            ("alice", "alice"),
            ("a b", "a%20b"),
            ("100%", "100%25"),
            ("a,b", "a%2Cb"),
            ("évé", "%C3%A9v%C3%A9"),
            ("x\r\nX-Admin: true", "x%0D%0AX-Admin:%20true"),
            ("nul\0", "nul%00"),
            ("tab\there", "tab%09here"),
            ("del\u{7f}", "del%7F"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(
                header_text(&json!(input)).as_deref(),
                Some(want),
                "{input:?}"
            );
            assert_eq!(decode(want).as_deref(), Some(input), "decode {want:?}");
        }
    }

    #[test]
    fn runs_encode_exactly_like_one_byte_at_a_time() {
        let one_at_a_time = |text: &str| {
            let mut out = String::new();
            for &b in text.as_bytes() {
                match passes(b) {
                    true => out.push(char::from(b)),
                    false => out.push_str(&format!("%{b:02X}")),
                }
            }
            out
        };
        let pieces = [
            "a",
            "Zz9",
            "%",
            ",",
            " ",
            "é",
            "\u{1F600}",
            "\r\n",
            "\0",
            "~",
            "\u{7f}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..500 {
            let mut text = String::new();
            for _ in 0..seed % 9 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let mut out = String::from("prefix,");
            encode_into(&text, &mut out);
            assert_eq!(out, format!("prefix,{}", one_at_a_time(&text)), "{text:?}");
            assert_eq!(decode(&out["prefix,".len()..]).as_deref(), Some(&*text));
        }
    }

    #[test]
    fn numbers_and_booleans_are_json_text() {
        assert_eq!(header_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(header_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(header_text(&json!(true)).as_deref(), Some("true"));
    }

    #[test]
    fn string_arrays_are_comma_joined_encoded_elements() {
        let v = json!(["admin", "ops team", "a,b"]);
        assert_eq!(header_text(&v).as_deref(), Some("admin,ops%20team,a%2Cb"));
        let back: Vec<String> = "admin,ops%20team,a%2Cb"
            .split(',')
            .map(|s| decode(s).unwrap())
            .collect();
        assert_eq!(back, ["admin", "ops team", "a,b"]);
    }

    #[test]
    fn other_arrays_and_objects_are_encoded_compact_json_in_given_order() {
        let v: Value = serde_json::from_str(r#"{"z": 1, "a": [1, "x y"]}"#).unwrap();
        let text = header_text(&v).unwrap();
        assert_eq!(text, "{\"z\":1%2C\"a\":[1%2C\"x%20y\"]}");
        assert_eq!(decode(&text).unwrap(), r#"{"z":1,"a":[1,"x y"]}"#);
        assert_eq!(header_text(&json!([1, 2])).as_deref(), Some("[1%2C2]"));
    }

    #[test]
    fn null_and_absent_claims_produce_no_header() {
        let claims: Claims =
            serde_json::from_value(json!({"sub": "alice", "email": null})).unwrap();
        let mut headers = HeaderMap::new();
        let mapping = vec![
            (
                HeaderName::from_static("x-auth-subject"),
                ClaimPath::parse("sub"),
            ),
            (
                HeaderName::from_static("x-auth-email"),
                ClaimPath::parse("email"),
            ),
            (
                HeaderName::from_static("x-auth-name"),
                ClaimPath::parse("name"),
            ),
        ];
        apply(&mut headers, &mapping, &claims);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-auth-subject"], "alice");
    }

    #[test]
    fn claims_with_crlf_or_nul_never_split_a_header() {
        let claims: Claims =
            serde_json::from_value(json!({"name": "Eve\r\nX-Admin: 1\0", "groups": ["a\nb"]}))
                .unwrap();
        let mut headers = HeaderMap::new();
        let mapping = vec![
            (
                HeaderName::from_static("x-auth-name"),
                ClaimPath::parse("name"),
            ),
            (
                HeaderName::from_static("x-auth-groups"),
                ClaimPath::parse("groups"),
            ),
        ];
        apply(&mut headers, &mapping, &claims);
        for value in headers.values() {
            assert!(value.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)));
        }
        assert_eq!(
            decode(headers["x-auth-name"].to_str().unwrap()).as_deref(),
            Some("Eve\r\nX-Admin: 1\0")
        );
    }

    #[test]
    fn json_pointer_claims_reach_nested_values() {
        let claims: Claims = serde_json::from_value(json!({
            "realm_access": {"roles": ["admin"]},
            "https://example.com/tenant": "acme"
        }))
        .unwrap();
        let get = |p: &str| ClaimPath::parse(p).lookup(&claims).cloned();
        assert_eq!(get("/realm_access/roles"), Some(json!(["admin"])));
        assert_eq!(get("/realm_access/roles/0"), Some(json!("admin")));
        assert_eq!(get("/realm_access/roles/00"), None);
        assert_eq!(get("/https:~1~1example.com~1tenant"), Some(json!("acme")));
        assert_eq!(get("/missing/x"), None);
        assert_eq!(get("realm_access").map(|v| v.is_object()), Some(true));
    }
}

//! Token claims as JSON, the few typed reads the rest of the crate shares, and claim references
//! from the configuration ([`ClaimPath`]: a name or an RFC 6901 JSON Pointer, parsed once).
//!
//! Claims stay a `serde_json` map (member order preserved) because policies, identity headers and
//! userinfo merging all work on arbitrary JSON. What is typed here is only what RFC 7519 types:
//! NumericDate (`exp`, `nbf`, `iat`) and the string-or-array `aud`. Checking those values against
//! a configuration (clock skew, audiences) is `jwt.rs`'s job.

use serde_json::{Map, Value};

/// A token's claims (or an introspection or userinfo answer), in the order they arrived.
pub type Claims = Map<String, Value>;

/// The largest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later is treated as
/// malformed, which also keeps every `i64` sum with a clock skew far from overflow.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A claim that is present but has the wrong JSON type or an impossible value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidClaim;

/// How to turn a fractional NumericDate into whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Toward the past: use for `exp` (the token expires no later than this).
    Down,
    /// Toward the future: use for `nbf` and `iat` (valid no earlier than this).
    Up,
}

/// `sub`, when present, must be a non-empty string (RFC 7519 §4.1.2: StringOrURI). A token with
/// `sub: 123` or `sub: ""` is refused rather than forwarded: SPEC §5 puts the `client_id` in an
/// assertion's `sub` only for a token *without* one, so a malformed `sub` must never make a
/// user look like its client.
pub fn check_sub(c: &Claims) -> Result<(), InvalidClaim> {
    match c.get("sub") {
        None => Ok(()),
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(_) => Err(InvalidClaim),
    }
}

/// The claim as a string; `None` when absent or not a string.
pub fn str_claim<'a>(c: &'a Claims, name: &str) -> Option<&'a str> {
    c.get(name).and_then(Value::as_str)
}

/// An RFC 7519 NumericDate in whole seconds: a JSON integer or fraction, from 0 up to
/// [`MAX_NUMERIC_DATE`]. A string, a negative number, or anything out of range is `None`.
pub fn numeric_date(v: &Value, round: Round) -> Option<i64> {
    let Value::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return (0..=MAX_NUMERIC_DATE).contains(&i).then_some(i);
    }
    if n.is_u64() {
        // Above i64::MAX, so above the maximum.
        return None;
    }
    let f = n.as_f64()?;
    if !f.is_finite() || f < 0.0 || f > MAX_NUMERIC_DATE as f64 {
        return None;
    }
    let whole = match round {
        Round::Down => f.floor(),
        Round::Up => f.ceil(),
    };
    // In range by the check above, so the cast is exact.
    Some(whole as i64)
}

/// A NumericDate claim: `Ok(None)` when absent, `Err` when present but not a valid NumericDate.
pub fn date_claim(c: &Claims, name: &str, round: Round) -> Result<Option<i64>, InvalidClaim> {
    match c.get(name) {
        None => Ok(None),
        Some(v) => numeric_date(v, round).map(Some).ok_or(InvalidClaim),
    }
}

/// The `aud` claim as a list: a string is a one-element list, an array must hold only strings.
/// `Ok(None)` when absent; `Err` for any other type (including `null`).
pub fn audiences(c: &Claims) -> Result<Option<Vec<&str>>, InvalidClaim> {
    match c.get("aud") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.as_str()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(InvalidClaim))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(InvalidClaim),
    }
}

/// A claim reference from the config, parsed once: a top-level name, or an RFC 6901 JSON Pointer
/// (a leading `/`) split into unescaped tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPath {
    Name(String),
    Pointer(Vec<String>),
}

impl ClaimPath {
    /// `claim` is assumed valid (the config loader rejects bad pointers).
    pub fn parse(claim: &str) -> Self {
        match claim.strip_prefix('/') {
            Some(rest) => ClaimPath::Pointer(
                rest.split('/')
                    .map(|t| t.replace("~1", "/").replace("~0", "~"))
                    .collect(),
            ),
            None => ClaimPath::Name(claim.to_owned()),
        }
    }

    pub fn lookup<'c>(&self, claims: &'c Claims) -> Option<&'c Value> {
        match self {
            ClaimPath::Name(name) => claims.get(name),
            ClaimPath::Pointer(tokens) => {
                let (first, rest) = tokens.split_first()?;
                let mut value = claims.get(first)?;
                for token in rest {
                    value = match value {
                        Value::Object(map) => map.get(token)?,
                        Value::Array(items) => items.get(array_index(token)?)?,
                        _ => return None,
                    };
                }
                Some(value)
            }
        }
    }
}

/// RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => panic!("test claims must be an object"),
        }
    }

    #[test]
    fn numeric_date_accepts_integers_and_fractions() {
        assert_eq!(numeric_date(&json!(0), Round::Down), Some(0));
        assert_eq!(
            numeric_date(&json!(1_700_000_000), Round::Down),
            Some(1_700_000_000)
        );
        assert_eq!(
            numeric_date(&json!(1_700_000_000.5), Round::Down),
            Some(1_700_000_000)
        );
        assert_eq!(
            numeric_date(&json!(1_700_000_000.5), Round::Up),
            Some(1_700_000_001)
        );
        assert_eq!(numeric_date(&json!(12.0), Round::Up), Some(12));
        assert_eq!(
            numeric_date(&json!(MAX_NUMERIC_DATE), Round::Down),
            Some(MAX_NUMERIC_DATE)
        );
    }

    #[test]
    fn numeric_date_rejects_other_types_negatives_and_overflow() {
        for v in [
            json!("1700000000"),
            json!(null),
            json!(true),
            json!([1]),
            json!({"n": 1}),
            json!(-1),
            json!(-0.5),
            json!(MAX_NUMERIC_DATE + 1),
            json!(u64::MAX),
            json!(1e300),
            json!(f64::MAX),
        ] {
            assert_eq!(numeric_date(&v, Round::Down), None, "{v}");
        }
        // serde_json has no NaN/Infinity literal; a NaN built in code becomes null.
        assert_eq!(numeric_date(&json!(f64::NAN), Round::Down), None);
        let big: Value = serde_json::from_str("1e400").unwrap_or(Value::Null);
        assert_eq!(numeric_date(&big, Round::Down), None);
    }

    #[test]
    fn date_claim_distinguishes_absent_from_invalid() {
        let c = claims(json!({"exp": 10, "nbf": "soon"}));
        assert_eq!(date_claim(&c, "exp", Round::Down), Ok(Some(10)));
        assert_eq!(date_claim(&c, "iat", Round::Up), Ok(None));
        assert_eq!(date_claim(&c, "nbf", Round::Up), Err(InvalidClaim));
    }

    #[test]
    fn audiences_accepts_string_or_array_of_strings() {
        let c = claims(json!({"aud": "a"}));
        assert_eq!(audiences(&c), Ok(Some(vec!["a"])));
        let c = claims(json!({"aud": ["a", "b"]}));
        assert_eq!(audiences(&c), Ok(Some(vec!["a", "b"])));
        let c = claims(json!({"aud": []}));
        assert_eq!(audiences(&c), Ok(Some(vec![])));
        assert_eq!(audiences(&claims(json!({}))), Ok(None));
        for bad in [
            json!(1),
            json!(null),
            json!(["a", 1]),
            json!({"a": 1}),
            json!([["a"]]),
        ] {
            assert_eq!(audiences(&claims(json!({"aud": bad}))), Err(InvalidClaim));
        }
    }

    #[test]
    fn str_claim_reads_only_strings() {
        let c = claims(json!({"sub": "u1", "n": 1}));
        assert_eq!(str_claim(&c, "sub"), Some("u1"));
        assert_eq!(str_claim(&c, "n"), None);
        assert_eq!(str_claim(&c, "absent"), None);
    }
}

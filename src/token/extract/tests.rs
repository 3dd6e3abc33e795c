use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;

use super::{extract, ExtractError, Found};

fn headers(values: &[&[u8]]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        map.append(
            AUTHORIZATION,
            HeaderValue::from_bytes(v).expect("valid header value"),
        );
    }
    map
}

/// One `Authorization` header value and what `extract` must make of it.
const SINGLE: &[(&[u8], Result<Found<'static>, ExtractError>)] = &[
    (b"Bearer abc", Ok(Found::Bearer("abc"))),
    (b"bearer abc", Ok(Found::Bearer("abc"))),
    (b"BEARER abc", Ok(Found::Bearer("abc"))),
    (b"bEaReR abc", Ok(Found::Bearer("abc"))),
    (b"Bearer     abc", Ok(Found::Bearer("abc"))),
    (b"Bearer eyJ.eyJ.c2ln", Ok(Found::Bearer("eyJ.eyJ.c2ln"))),
    (b"Bearer a-b._~+/c9Z", Ok(Found::Bearer("a-b._~+/c9Z"))),
    (b"Bearer abc==", Ok(Found::Bearer("abc=="))),
    (b"DPoP abc", Ok(Found::Dpop("abc"))),
    (b"dpop abc", Ok(Found::Dpop("abc"))),
    (b"DPOP  abc", Ok(Found::Dpop("abc"))),
    // Other schemes are none of our business.
    (b"Basic dXNlcjpwYXNz", Ok(Found::None)),
    (b"Basic", Ok(Found::None)),
    (b"Digest username=\"a\", realm=\"b\"", Ok(Found::None)),
    (b"Basic \xff\xfe", Ok(Found::None)),
    (b"Bearerxyz", Ok(Found::None)),
    (b"Bearer=abc", Ok(Found::None)),
    (b"DPoPabc", Ok(Found::None)),
    // Broken bearer / DPoP credentials.
    (b"Bearer", Err(ExtractError::Malformed)),
    (b"Bearer ", Err(ExtractError::Malformed)),
    (b"Bearer    ", Err(ExtractError::Malformed)),
    (b"DPoP", Err(ExtractError::Malformed)),
    (b"Bearer\tabc", Err(ExtractError::Malformed)),
    (b"Bearer \tabc", Err(ExtractError::Malformed)),
    (b"Bearer abc\t", Err(ExtractError::Malformed)),
    (b"Bearer abc ", Err(ExtractError::Malformed)),
    (b"Bearer abc def", Err(ExtractError::Malformed)),
    (b"Bearer abc,def", Err(ExtractError::Malformed)),
    (b"Bearer abc, Basic xyz", Err(ExtractError::Malformed)),
    (b"Bearer ==", Err(ExtractError::Malformed)),
    (b"Bearer abc=def", Err(ExtractError::Malformed)),
    (b"Bearer a%2Fb", Err(ExtractError::Malformed)),
    (b"Bearer \"abc\"", Err(ExtractError::Malformed)),
    (b"Bearer ab\xc3\xa7", Err(ExtractError::Malformed)),
    (b"DPoP abc!", Err(ExtractError::Malformed)),
    // Not a credentials production at all.
    (b"", Err(ExtractError::Malformed)),
    (b" Bearer abc", Err(ExtractError::Malformed)),
];

#[test]
fn single_header_table() {
    for (value, want) in SINGLE {
        let map = headers(&[value]);
        assert_eq!(
            extract(&map),
            *want,
            "Authorization: {:?}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn no_header_is_no_credential() {
    assert_eq!(extract(&HeaderMap::new()), Ok(Found::None));
}

#[test]
fn several_headers_are_refused_whatever_their_schemes() {
    let cases: &[&[&[u8]]] = &[
        &[b"Bearer abc", b"Bearer abc"],
        &[b"Bearer abc", b"Bearer def"],
        &[b"Basic dXNlcjpwYXNz", b"Bearer abc"],
        &[b"Basic a", b"Basic b"],
        &[b"Bearer abc", b"", b"DPoP x"],
    ];
    for values in cases {
        assert_eq!(
            extract(&headers(values)),
            Err(ExtractError::SeveralAuthorization),
            "{values:?}"
        );
    }
}

#[test]
fn descriptions_do_not_echo_the_header() {
    for e in [ExtractError::SeveralAuthorization, ExtractError::Malformed] {
        assert!(!e.description().is_empty());
        assert!(e.description().is_ascii());
        assert_eq!(e.to_string(), e.description());
    }
}

#[test]
fn token_characters_are_exactly_rfc6750_b64token() {
    for b in 0..=255u8 {
        let spec = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        assert_eq!(super::is_token_char(b), spec, "byte {b:#04x}");
        // Also at every position of a long token, so the chunked path sees it.
        for at in [0, 31, 32, 63, 64, 65, 700, 1023] {
            let mut token = vec![b'a'; 1024];
            token[at] = b;
            let padded = b == b'=' && at == 1023;
            assert_eq!(
                super::is_b64token(&token),
                spec || padded,
                "byte {b:#04x} at {at}"
            );
        }
    }
}

#[test]
fn padding_only_at_the_end_and_never_alone() {
    for (token, ok) in [
        (&b"abc"[..], true),
        (b"abc=", true),
        (b"abc===", true),
        (b"=", false),
        (b"===", false),
        (b"ab=c", false),
        (b"=abc", false),
        (b"", false),
    ] {
        assert_eq!(
            super::is_b64token(token),
            ok,
            "{:?}",
            String::from_utf8_lossy(token)
        );
    }
}

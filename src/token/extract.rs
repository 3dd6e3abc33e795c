//! Finding the caller's credential in the `Authorization` header (SPEC §4.3).
//!
//! This module only reads headers: no crypto, no policy, no length limit (`max_token_bytes` is
//! the caller's check). It answers one of three things: there is no credential for us (no header,
//! or another scheme such as `Basic`), there is a `Bearer` or `DPoP` token, or the header is
//! broken and the request gets 400 `invalid_request`.
//!
//! Grammar (RFC 6750 §2.1, RFC 9449 §7.1): the scheme, compared case-insensitively, then one or
//! more spaces (tabs are refused), then a b64token `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
//! "+" / "/" ) *"="`, then nothing. The scheme is everything before the first space or tab, so
//! `Bearerxyz` is an unknown scheme (no credential), while `Bearer`, `Bearer ` and `Bearer\tx` are
//! malformed bearer credentials.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// What the `Authorization` header carries, borrowed from the request (`authn::Credential` wraps
/// it for the phases after extraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    /// No `Authorization` header, or one with a scheme other than `Bearer`/`DPoP`.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// `Authorization: DPoP <token>` (RFC 9449); the proof is in the separate `DPoP` header.
    Dpop(&'a str),
}

/// Why the `Authorization` header cannot be used. Both become 400 `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractError {
    /// More than one `Authorization` header line.
    SeveralAuthorization,
    /// A `Bearer`/`DPoP` credential that breaks the grammar, or an empty header.
    Malformed,
}

impl ExtractError {
    /// Short public text for `error_description`; never echoes header bytes.
    pub fn description(self) -> &'static str {
        match self {
            ExtractError::SeveralAuthorization => "more than one Authorization header",
            ExtractError::Malformed => "malformed Authorization header",
        }
    }
}

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ExtractError {}

/// Reads the credential from the request headers.
pub fn extract(headers: &HeaderMap) -> Result<Found<'_>, ExtractError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Found::None);
    };
    if values.next().is_some() {
        return Err(ExtractError::SeveralAuthorization);
    }
    let bytes = value.as_bytes();
    let scheme_end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(bytes.len());
    let (scheme, rest) = bytes.split_at(scheme_end);
    if scheme.is_empty() {
        // Empty header, or leading whitespace: not a valid `credentials` production at all.
        return Err(ExtractError::Malformed);
    }
    let dpop = if scheme.eq_ignore_ascii_case(b"bearer") {
        false
    } else if scheme.eq_ignore_ascii_case(b"dpop") {
        true
    } else {
        return Ok(Found::None);
    };
    // Only SP separates scheme and token: a tab lands in `token` and fails the grammar.
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = &rest[spaces..]; // spaces <= rest.len(): it counts a prefix of `rest`
    if spaces == 0 || !is_b64token(token) {
        // No space after the scheme (a tab), or a token that breaks the grammar.
        return Err(ExtractError::Malformed);
    }
    // b64token bytes are ASCII, so this cannot fail; stay total anyway.
    let token = std::str::from_utf8(token).map_err(|_| ExtractError::Malformed)?;
    Ok(if dpop {
        Found::Dpop(token)
    } else {
        Found::Bearer(token)
    })
}

/// RFC 6750 §2.1 `b64token`: at least one token character, then only `=` padding.
fn is_b64token(token: &[u8]) -> bool {
    let padding = token.iter().rev().take_while(|&&b| b == b'=').count();
    // padding <= token.len(): it counts a suffix of `token`.
    let body = &token[..token.len() - padding];
    !body.is_empty() && all_token_chars(body)
}

/// Whether every byte is a token character. Every byte of every token (about 1 KiB) goes
/// through here, so it is written to vectorize: 64-byte chunks folded without a branch.
fn all_token_chars(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(true, |ok, &b| ok & is_token_char(b)) {
            continue;
        }
        return false;
    }
    chunks.remainder().iter().all(|&b| is_token_char(b))
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`, in few comparisons a vector unit can
/// do: `-`, `.`, `/` and the digits are the one range 0x2D-0x39.
#[inline(always)]
fn is_token_char(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let dash_to_nine = b.wrapping_sub(b'-') < 13;
    letter | dash_to_nine | (b == b'+') | (b == b'_') | (b == b'~')
}

#[cfg(test)]
mod tests;

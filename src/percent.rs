//! The `%XX` triplet (RFC 3986 §2.1, upper-case hex) that path normalization, claim headers and
//! form bodies each write for the bytes they do not pass.

/// Appends `%XX` for `b`.
pub(crate) fn push_triplet(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

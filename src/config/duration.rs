//! Duration strings from the configuration file (SPEC §3): `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
//!
//! Exactly one unsigned integer followed by one unit (`ms`, `s`, `m`, `h`), nothing else: no
//! sign, no fraction (`"1.5s"`), no compound value (`"1m30s"`), no spaces. `"0s"` parses; whether
//! zero makes sense for a given key is the loader's check, not this one's.

use std::time::Duration;

/// Parses one duration string; the error is the full message for the key holding it.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected a number followed by ms, s, m or h");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "ms" => None,
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        _ => return Err(bad()),
    };
    if number.is_empty() {
        return Err(bad());
    }
    // Only ASCII digits are left, so a parse failure can only be an overflow.
    let too_large = || format!("invalid duration {text:?}: too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    match seconds_per_unit {
        None => Ok(Duration::from_millis(n)),
        Some(k) => n
            .checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
    }
}

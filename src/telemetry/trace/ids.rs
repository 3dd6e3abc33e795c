//! Trace and span ids: the two id types, their lower-case hex form, and where new ones come from.
//!
//! New ids come from a per-thread SplitMix64 generator. The process draws one 64-bit seed from
//! the operating system the first time an id is needed (`getrandom`, once); each thread then
//! starts its own sequence from that seed mixed with a per-thread number, so making an id is a
//! few arithmetic instructions, with no lock, no shared cache line and no system call per
//! request. Ids only have to be unique and unpredictable enough to avoid collisions between
//! traces (W3C Trace Context §3.2.2.3); they are not secrets, so a cryptographic generator would
//! buy nothing here.
//!
//! Left to others: which id a span gets (`context.rs`), parsing ids from a header (`parse.rs`).

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A 16-byte trace id; never all zeros when made here or accepted from a header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub(super) [u8; 16]);

/// An 8-byte span id; never all zeros when made here or accepted from a header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub(super) [u8; 8]);

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> TraceId {
        loop {
            let (high, low) = (next_u64(), next_u64());
            if high | low != 0 {
                let mut bytes = [0; 16];
                bytes[..8].copy_from_slice(&high.to_be_bytes());
                bytes[8..].copy_from_slice(&low.to_be_bytes());
                return TraceId(bytes);
            }
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The 32 lower-case hex digits, on the stack (the access line's `trace_id`).
    pub fn to_hex(self) -> TraceIdHex {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        TraceIdHex(out)
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> SpanId {
        loop {
            let n = next_u64();
            if n != 0 {
                return SpanId(n.to_be_bytes());
            }
        }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The 16 lower-case hex digits.
    pub fn to_hex(self) -> SpanIdHex {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        SpanIdHex(out)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// A trace id as 32 lower-case hex digits, without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex([u8; 32]);

/// A span id as 16 lower-case hex digits, without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpanIdHex([u8; 16]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        // Always ASCII hex digits: written only by `hex_into`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl SpanIdHex {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SpanIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SpanIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Every byte's two lower-case hex digits: one load per byte where ids are written out.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = [HEX[b >> 4], HEX[b & 0x0f]];
        b += 1;
    }
    table
};

/// Writes `bytes` as lower-case hex into `out` (which is twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// The golden-ratio increment of SplitMix64's Weyl sequence.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The process's seed, drawn once.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_ok() {
            return u64::from_ne_bytes(bytes);
        }
        // No OS randomness (a sandbox without getrandom): ids must still differ between
        // processes and runs; the clock and the process id are enough for that.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Truncation intended: only the fast-changing low bits matter.
        mix((nanos as u64) ^ (u64::from(std::process::id()) << 32))
    })
}

/// Numbers the threads that make ids, so no two start from the same point.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's position in its SplitMix64 sequence.
    static STATE: Cell<u64> = Cell::new({
        let n = THREADS.fetch_add(1, Ordering::Relaxed);
        // Each thread starts at an unrelated point of the 2^64-long sequence.
        mix(process_seed() ^ mix(n.wrapping_mul(GOLDEN)))
    });
}

/// The next 64 random bits of this thread's generator.
pub(super) fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(GOLDEN);
        state.set(next);
        mix(next)
    })
}

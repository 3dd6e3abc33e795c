//! The sampling decision for traces that start here (SPEC §3 `[telemetry].sample_ratio`).
//!
//! A continued trace keeps its caller's `sampled` flag as it is (parent-based); only a trace
//! tokengate starts is sampled by ratio. The decision is a pure function of the trace id, as
//! OpenTelemetry's `TraceIdRatioBased` sampler makes it (the low 63 bits of the last 8 bytes
//! against `ratio × 2^63`), so the same id always gets the same answer and no extra random
//! number is drawn.
//!
//! Left to others: reading the ratio from the configuration (`config`), the flag itself
//! (`context.rs`).

use super::ids::TraceId;

/// Decides whether a new trace is sampled. Copy, a few bytes: hold it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler(Decision);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Always,
    Never,
    /// Sampled when the id's low 63 bits are below this.
    Below(u64),
}

impl Sampler {
    /// Samples this fraction of new traces; values outside 0.0..=1.0 (and NaN) are clamped,
    /// though the configuration never lets one through.
    pub fn ratio(ratio: f64) -> Sampler {
        if ratio.is_nan() || ratio <= 0.0 {
            Sampler(Decision::Never)
        } else if ratio >= 1.0 {
            Sampler(Decision::Always)
        } else {
            // Below 1.0, the product is below 2^63 and the cast cannot saturate.
            Sampler(Decision::Below((ratio * (1u64 << 63) as f64) as u64))
        }
    }

    /// Every new trace is sampled (the default `sample_ratio = 1.0`).
    pub fn always() -> Sampler {
        Sampler(Decision::Always)
    }

    /// Whether a trace starting here with this id is sampled.
    pub fn samples(&self, trace_id: TraceId) -> bool {
        match self.0 {
            Decision::Always => true,
            Decision::Never => false,
            Decision::Below(threshold) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id.0[8..]);
                (u64::from_be_bytes(low) >> 1) < threshold
            }
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::always()
    }
}

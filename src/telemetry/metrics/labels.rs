//! The fixed label sets of SPEC §7 (`reason`, `result`, `outcome`, `op`) and the counters that
//! hold one atomic per value.
//!
//! Every value is a variant known at compile time, so recording can only pick one of a handful
//! of slots: nothing a request carries can become a label value. Each family is written with
//! every value from the first scrape on (0 until counted), so a `rate()` alert works before the
//! first event. Route ids, issuer ids and status codes are `route.rs`'s and `mod.rs`'s business.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reason::Reason;

/// A label whose values are a closed set.
pub trait FixedLabel: Copy + 'static {
    /// The label name, e.g. `outcome`.
    const KEY: &'static str;
    /// Every value, in output order; `ALL[v.index()] == v`.
    const ALL: &'static [Self];
    /// The label value as written in the output.
    fn label(self) -> &'static str;
    /// The slot of this value in a `Counts`.
    fn index(self) -> usize;
    /// The value written as `label`, if it is one of the set.
    fn from_label(label: &str) -> Option<Self>;
}

/// Declares a `FixedLabel` enum: variants in output order, each with its label value.
macro_rules! fixed_label {
    (
        $(#[$doc:meta])*
        $name:ident, key = $key:literal {
            $( $(#[$vdoc:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )+
        }

        impl FixedLabel for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$( $name::$variant, )+];

            fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $value, )+
                }
            }

            fn index(self) -> usize {
                self as usize
            }

            fn from_label(label: &str) -> Option<Self> {
                match label {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

/// `tokengate_auth_failures_total{reason}`: the authentication failures of the one reason enum
/// (SPEC §7's list first), so the label and the access line's `reason` can never disagree.
impl FixedLabel for Reason {
    const KEY: &'static str = "reason";
    const ALL: &'static [Self] = &Reason::AUTH_FAILURES;

    fn label(self) -> &'static str {
        self.as_str()
    }

    /// Only meaningful for an authentication failure (`Metrics::auth_failure` checks).
    fn index(self) -> usize {
        self.auth_failure_slot().unwrap_or(0)
    }

    fn from_label(label: &str) -> Option<Self> {
        Reason::AUTH_FAILURES
            .into_iter()
            .find(|r| r.as_str() == label)
    }
}

fixed_label! {
    /// `tokengate_userinfo_cache_total{result}` and `tokengate_introspection_cache_total{result}`.
    CacheResult, key = "result" {
        /// Served from the cache.
        Hit = "hit",
        /// Started a call.
        Miss = "miss",
        /// Waited for a call another request had started (single-flight).
        Coalesced = "coalesced",
    }
}

fixed_label! {
    /// `tokengate_userinfo_requests_total{outcome}`: one per call to a userinfo endpoint.
    UserinfoOutcome, key = "outcome" {
        Ok = "ok",
        /// The endpoint answered 401.
        Unauthorized = "unauthorized",
        Error = "error",
    }
}

fixed_label! {
    /// `tokengate_introspection_requests_total{outcome}`: one per call to an introspection
    /// endpoint.
    IntrospectionOutcome, key = "outcome" {
        Active = "active",
        Inactive = "inactive",
        Error = "error",
    }
}

fixed_label! {
    /// `tokengate_dpop_proofs_total{outcome}`; `ProofError::outcome` gives the label of a refusal.
    DpopOutcome, key = "outcome" {
        Ok = "ok",
        Invalid = "invalid",
        Replayed = "replayed",
        NonceRequired = "nonce_required",
    }
}

fixed_label! {
    /// `outcome` of `tokengate_jwks_refresh_total` and `tokengate_config_reloads_total`.
    Outcome, key = "outcome" {
        Ok = "ok",
        Error = "error",
    }
}

impl Outcome {
    pub fn of(ok: bool) -> Outcome {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Error
        }
    }
}

fixed_label! {
    /// `tokengate_shared_store_errors_total{op}` (SPEC §8 Scale-out). The shared store does not
    /// exist yet: these are the operations SPEC gives it; adjust them when it lands.
    SharedStoreOp, key = "op" {
        /// Reaching Redis at all (connect, reconnect).
        Connect = "connect",
        /// Recording a DPoP `jti` (`SET NX PX`).
        Replay = "replay",
        /// Issuing or checking a DPoP server nonce.
        Nonce = "nonce",
        /// Reading a shared userinfo or introspection answer.
        CacheGet = "cache_get",
        /// Storing one.
        CachePut = "cache_put",
    }
}

/// One `AtomicU64` per value of `L`, allocated up front: counting is one relaxed add.
pub(crate) struct Counts<L: FixedLabel> {
    slots: Box<[AtomicU64]>,
    _label: PhantomData<L>,
}

impl<L: FixedLabel> Counts<L> {
    pub(crate) fn new() -> Self {
        Counts {
            slots: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _label: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn inc(&self, value: L) {
        // `index` is always in range (one slot per variant); `get` keeps a mistake from panicking.
        if let Some(slot) = self.slots.get(value.index()) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self, value: L) -> u64 {
        self.slots
            .get(value.index())
            .map_or(0, |slot| slot.load(Ordering::Relaxed))
    }
}

impl<L: FixedLabel> Default for Counts<L> {
    fn default() -> Self {
        Counts::new()
    }
}

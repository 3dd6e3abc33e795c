//! Per-route handles: `tokengate_requests_total{route,status}` and the two duration histograms
//! of one route id, recorded without a lock, a hash or an allocation.
//!
//! A handle is made once per route id (`Metrics::route`, at configuration load) and kept in the
//! compiled route table; a reload asks again and gets the same handle, so counts survive it.
//! The status is an index into a fixed array (one slot per code 100..=599 and one for anything
//! else an upstream may send), so no status value can add more than one series per route.
//! Writing the families is `encode.rs`'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::Histogram;

/// Lowest status code with a slot of its own.
const FIRST_STATUS: u16 = 100;
/// Slots for 100..=599, then [`OTHER_STATUS`].
const STATUS_CODES: usize = 500;
/// The slot of a code outside 100..=599 (hyper accepts up to 999 from an upstream); written as
/// `status="other"`.
const OTHER_STATUS: usize = STATUS_CODES;

/// The `status` label value of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusLabel {
    Code(u16),
    Other,
}

/// Metrics of one route id (or of [`super::NO_ROUTE`]). Cheap to share: hold an `Arc` per
/// compiled route.
pub struct RouteMetrics {
    id: Box<str>,
    /// Requests by status slot (see [`status_slot`]).
    statuses: [AtomicU64; STATUS_CODES + 1],
    request_duration: Histogram,
    upstream_duration: Histogram,
}

impl RouteMetrics {
    pub(super) fn new(id: &str) -> Self {
        RouteMetrics {
            id: id.into(),
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
            request_duration: Histogram::new(),
            upstream_duration: Histogram::new(),
        }
    }

    /// The route id this handle counts under (the `route` label value).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One finished request: `tokengate_requests_total{route,status}` and
    /// `tokengate_request_duration_seconds{route}` (time from the request head to the end of the
    /// answer, as the caller measures it). Any `status` is accepted.
    #[inline]
    pub fn request(&self, status: u16, total: Duration) {
        self.statuses[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        self.request_duration.observe(total);
    }

    /// One upstream exchange: `tokengate_upstream_duration_seconds{route}`.
    #[inline]
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed);
    }

    /// The statuses seen so far with their counts, in ascending order, `other` last.
    pub(super) fn statuses(&self) -> impl Iterator<Item = (StatusLabel, u64)> + '_ {
        self.statuses
            .iter()
            .enumerate()
            .filter_map(|(slot, count)| {
                let n = count.load(Ordering::Relaxed);
                (n > 0).then(|| (slot_label(slot), n))
            })
    }

    pub(super) fn request_duration(&self) -> &Histogram {
        &self.request_duration
    }

    pub(super) fn upstream_duration(&self) -> &Histogram {
        &self.upstream_duration
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[inline]
fn status_slot(status: u16) -> usize {
    // Codes below 100 wrap to large numbers and land in `OTHER_STATUS` with those above 599.
    usize::from(status.wrapping_sub(FIRST_STATUS)).min(OTHER_STATUS)
}

fn slot_label(slot: usize) -> StatusLabel {
    match u16::try_from(slot) {
        Ok(offset) if slot < OTHER_STATUS => StatusLabel::Code(FIRST_STATUS + offset),
        _ => StatusLabel::Other,
    }
}

#[cfg(test)]
pub(super) fn slot_of(status: u16) -> usize {
    status_slot(status)
}

//! Unit tests of the shared TTL cache: expiry, serving through `get_with`, the size bound and
//! its bookkeeping (slots, the order queue), removal and purging. `Flights` is tested in
//! `flight.rs`; what each caller stores (route freshness, negative answers) in its own tests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{TtlCache, MAX_LIFETIME};

/// The callers' key shape: (issuer index, SHA-256 of a token).
type Key = (usize, [u8; 32]);

fn key(n: u32) -> Key {
    let mut hash = [0u8; 32];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    (0, hash)
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn an_entry_is_served_until_its_expiry_and_never_after_and_is_then_removed() {
    let cache = TtlCache::<Key, u8>::new(10);
    let start = Instant::now();
    cache.insert(key(1), 7, start, MINUTE);
    assert_eq!(cache.get(&key(1), start), Some(7));
    let almost = start + MINUTE - Duration::from_millis(1);
    assert_eq!(cache.get(&key(1), almost), Some(7));
    assert_eq!(cache.get(&key(1), start + MINUTE), None);
    assert_eq!(cache.len(), 0, "an expired entry is removed when met");
    assert_eq!(cache.reserved(), 0);
}

#[test]
fn get_with_may_decline_an_entry_without_removing_it() {
    let cache = TtlCache::<Key, u8>::new(10);
    let start = Instant::now();
    cache.insert(key(1), 7, start, MINUTE);
    assert_eq!(cache.get_with(&key(1), start, |_| None::<u8>), None);
    assert_eq!(
        cache.len(),
        1,
        "declined, not expired: it stays for other readers"
    );
    assert_eq!(
        cache.get_with(&key(1), start, |v| Some(u32::from(*v) * 2)),
        Some(14)
    );
    // Past the expiry `serve` is not consulted, and the entry goes.
    let served = cache.get_with(&key(1), start + MINUTE, |_| -> Option<u8> {
        panic!("an expired entry is never offered")
    });
    assert_eq!(served, None);
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.reserved(), 0);
}

#[test]
fn a_zero_lifetime_or_a_zero_bound_stores_nothing() {
    let now = Instant::now();
    let cache = TtlCache::<Key, u8>::new(10);
    cache.insert(key(1), 1, now, Duration::ZERO);
    assert_eq!(cache.len(), 0);
    let disabled = TtlCache::<Key, u8>::new(0);
    disabled.insert(key(1), 1, now, MINUTE);
    assert_eq!(disabled.get(&key(1), now), None);
    assert_eq!(disabled.len(), 0);
}

#[test]
fn a_huge_lifetime_is_capped_not_overflowed() {
    let now = Instant::now();
    let cache = TtlCache::<Key, u8>::new(10);
    cache.insert(key(1), 1, now, Duration::MAX);
    assert_eq!(cache.get(&key(1), now + MAX_LIFETIME - MINUTE), Some(1));
    assert_eq!(cache.get(&key(1), now + MAX_LIFETIME), None);
}

#[test]
fn replacing_an_entry_keeps_one_slot_and_its_stale_records_are_skipped() {
    let cache = TtlCache::<Key, u32>::new(2);
    let t0 = Instant::now();
    for n in 0..5 {
        cache.insert(key(1), n, t0, MINUTE);
    }
    cache.insert(key(2), 2, t0, MINUTE);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.reserved(), 2);
    assert_eq!(
        cache.get(&key(1), t0),
        Some(4),
        "the last value replaced the others"
    );
    // Stale records of the replaced entry are skipped: key 1 (oldest live) goes, key 2 stays.
    cache.insert(key(3), 3, t0, MINUTE);
    assert_eq!(cache.get(&key(1), t0), None);
    assert_eq!(cache.get(&key(2), t0), Some(2));
    assert_eq!(cache.get(&key(3), t0), Some(3));
}

#[test]
fn a_full_cache_evicts_its_oldest_entry_and_the_bound_holds() {
    let cache = TtlCache::<Key, u32>::new(100);
    let t0 = Instant::now();
    for n in 0..1000 {
        cache.insert(key(n), n, t0, MINUTE);
        assert!(cache.len() <= 100 && cache.reserved() <= 100);
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.reserved(), 100);
    assert_eq!(cache.get(&key(899), t0), None);
    assert_eq!(cache.get(&key(900), t0), Some(900));
    assert_eq!(cache.get(&key(999), t0), Some(999));
    assert!(
        cache.order_len() <= 2 * 100 + 1024 + 1,
        "order stays compact"
    );
}

#[test]
fn the_bound_holds_under_concurrent_inserts() {
    let cache = Arc::new(TtlCache::<Key, u32>::new(64));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for n in 0..2000 {
                    cache.insert(key(t * 100_000 + n), n, t0, MINUTE);
                    // Repeated keys too (in-place replacement races with eviction).
                    cache.insert(key(n % 50), n, t0, MINUTE);
                    // `len()` sums the shards one by one, so under concurrent change it may
                    // count an evicted entry and its replacement; the slot counter is exact
                    // and always >= the number of entries.
                    assert!(cache.reserved() <= 64);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    assert!(cache.len() <= 64);
    assert_eq!(cache.reserved(), cache.len());
}

#[test]
fn replacing_the_same_key_forever_keeps_the_order_queue_bounded() {
    let cache = TtlCache::<Key, u8>::new(10);
    let t0 = Instant::now();
    for _ in 0..100_000 {
        cache.insert(key(7), 1, t0, MINUTE);
    }
    assert_eq!(cache.len(), 1);
    assert!(cache.order_len() <= 2 + 1024 + 1, "{}", cache.order_len());
}

#[test]
fn remove_forgets_an_entry_and_releases_its_slot() {
    let t0 = Instant::now();
    let cache = TtlCache::<Key, u8>::new(3);
    cache.insert(key(1), 1, t0, MINUTE);
    cache.insert(key(2), 2, t0, MINUTE);
    cache.remove(&key(1));
    cache.remove(&key(9));
    assert_eq!(cache.get(&key(1), t0), None);
    assert_eq!(cache.get(&key(2), t0), Some(2));
    assert_eq!(cache.reserved(), 1);
    assert_eq!(cache.reserved(), cache.len());
}

#[test]
fn purge_removes_only_expired_entries_and_releases_their_slots() {
    let cache = TtlCache::<Key, u32>::new(10);
    let t0 = Instant::now();
    for n in 0..5 {
        cache.insert(key(n), n, t0, Duration::from_secs(10));
    }
    for n in 5..8 {
        cache.insert(key(n), n, t0, Duration::from_secs(100));
    }
    assert_eq!(cache.purge(t0 + Duration::from_secs(10)), 5);
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.reserved(), 3);
    assert_eq!(cache.order_len(), 3, "their order records go too");
    assert_eq!(cache.get(&key(7), t0), Some(7));
}

//! Single-flight: concurrent misses for the same key (userinfo and introspection: issuer index,
//! SHA-256 of a token) share one call to the issuer.
//!
//! The first caller for a key (the *leader*) registers a `watch` channel and gets a [`Leader`]
//! and a [`Waiter`]; later callers get a [`Waiter`] cloned out of the registry (no map guard is
//! kept, nothing is awaited in place). The leader makes the call in a task of its own, so a
//! leader whose client hangs up does not fail the waiters, and publishes the result:
//! [`Leader::publish`] leaves the registry *first*, then sends, so whoever registered gets the
//! result and a caller arriving after the send cannot join a call already answered (it starts a
//! new flight, which is why a leader looks at the cache once more before calling). A leader
//! dropped without publishing (its task panicked or was cancelled) leaves the registry too, and
//! its waiters see `None`.
//!
//! Generic over the key and the result; what a result means, and caching it, is the caller's
//! business.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::digest_hash::DigestHash;

/// Flights in progress: (flight id, receiver of its result).
type Registry<K, V, S> = DashMap<K, (u64, watch::Receiver<Option<V>>), S>;

/// The calls in flight, by key.
pub(crate) struct Flights<K, V, S = DigestHash> {
    running: Arc<Registry<K, V, S>>,
    next_id: AtomicU64,
}

/// What [`Flights::join`] made of the caller.
pub(crate) enum Joined<K: Eq + Hash, V, S: BuildHasher + Clone = DigestHash> {
    /// No call was in flight: this caller makes it, and waits like everyone else.
    Leader(Leader<K, V, S>, Waiter<V>),
    /// A call is in flight: wait for its result.
    Waiter(Waiter<V>),
}

impl<K, V, S> Flights<K, V, S>
where
    K: Eq + Hash + Copy,
    V: Clone,
    S: BuildHasher + Clone + Default,
{
    pub(crate) fn new() -> Flights<K, V, S> {
        Flights {
            running: Arc::new(DashMap::default()),
            next_id: AtomicU64::new(0),
        }
    }

    pub(crate) fn join(&self, key: K) -> Joined<K, V, S> {
        // The entry guard lives only inside this match.
        match self.running.entry(key) {
            Entry::Occupied(running) => Joined::Waiter(Waiter(running.get().1.clone())),
            Entry::Vacant(slot) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(None);
                slot.insert((id, rx.clone()));
                let leader = Leader {
                    running: self.running.clone(),
                    key,
                    id,
                    tx,
                };
                Joined::Leader(leader, Waiter(rx))
            }
        }
    }

    /// Calls in flight right now.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }
}

/// The right (and duty) to publish one flight's result.
pub(crate) struct Leader<K: Eq + Hash, V, S: BuildHasher + Clone = DigestHash> {
    running: Arc<Registry<K, V, S>>,
    key: K,
    id: u64,
    tx: watch::Sender<Option<V>>,
}

impl<K: Eq + Hash, V, S: BuildHasher + Clone> Leader<K, V, S> {
    /// Leaves the registry, then sends `value` to every waiter (module docs for the order).
    pub(crate) fn publish(self, value: V) {
        self.leave();
        self.tx.send_replace(Some(value));
    }

    fn leave(&self) {
        let id = self.id;
        self.running
            .remove_if(&self.key, |_, (registered, _)| *registered == id);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Clone> Drop for Leader<K, V, S> {
    /// Also after `publish` (then a no-op): a flight never outlives its leader in the registry.
    fn drop(&mut self) {
        self.leave();
    }
}

/// One caller's view of a flight.
pub(crate) struct Waiter<V>(watch::Receiver<Option<V>>);

impl<V: Clone> Waiter<V> {
    /// The published result; `None` when the leader was dropped without publishing.
    pub(crate) async fn result(mut self) -> Option<V> {
        // The watch guard is cloned out and dropped within this statement.
        self.0
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|value| value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Key = (usize, [u8; 32]);

    fn key(n: u8) -> Key {
        (0, [n; 32])
    }

    #[tokio::test]
    async fn the_second_caller_waits_for_the_first_callers_result() {
        let flights = Flights::<Key, u32>::new();
        let Joined::Leader(leader, own) = flights.join(key(1)) else {
            panic!("the first caller must lead");
        };
        let Joined::Waiter(other) = flights.join(key(1)) else {
            panic!("the second caller must wait");
        };
        assert!(matches!(flights.join(key(2)), Joined::Leader(..)));
        leader.publish(7);
        assert_eq!(own.result().await, Some(7));
        assert_eq!(other.result().await, Some(7));
        assert_eq!(flights.len(), 0, "a published flight is no longer joinable");
        assert!(matches!(flights.join(key(1)), Joined::Leader(..)));
    }

    #[tokio::test]
    async fn a_leader_dropped_without_publishing_releases_its_waiters() {
        let flights = Flights::<Key, u32>::new();
        let Joined::Leader(leader, _) = flights.join(key(1)) else {
            panic!("the first caller must lead");
        };
        let Joined::Waiter(waiter) = flights.join(key(1)) else {
            panic!("the second caller must wait");
        };
        drop(leader);
        assert_eq!(waiter.result().await, None);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn an_old_leader_leaving_late_does_not_remove_a_newer_flight() {
        let flights = Flights::<Key, u32>::new();
        let Joined::Leader(old, _) = flights.join(key(1)) else {
            panic!("lead");
        };
        // Simulate the registration being gone (published) while `old` still exists.
        old.leave();
        let Joined::Leader(new, _) = flights.join(key(1)) else {
            panic!("a new flight starts");
        };
        drop(old);
        assert_eq!(flights.len(), 1, "the newer flight is still registered");
        drop(new);
        assert_eq!(flights.len(), 0);
    }
}

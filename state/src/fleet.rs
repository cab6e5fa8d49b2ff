//! `FleetIndex`: observations from check-ins and reports, in memory.
//!
//! **Architecture Invariant (I-3):** this is what the check-in path writes, and the only
//! thing it writes: no log, no database. Every method takes a short, synchronous lock on one
//! shard (never held across an `.await`), and no method on the check-in path does work
//! proportional to the fleet size.
//!
//! Every change marks its envoy dirty; [`FleetIndex::take_dirty`] hands the dirty ones to the
//! snapshot writer (`fleet_store`), which writes them to SQLite outside these locks.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vigo_proto::admin::RunSummary;

use crate::trait_index::{IndexKey, TraitIndex};
use crate::traits::{HeldTraits, NodeId, TraitStore};

/// Number of independently locked shards; a power of two well above the core count keeps
/// two check-ins from waiting on each other.
const N_SHARDS: usize = 64;

/// What the server has observed of one envoy since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvoyObservation {
    /// Last accepted check-in or report (ms since epoch).
    pub last_seen_ms: i64,
    /// Highest request counter accepted (anti-replay).
    pub last_counter: u64,
    /// Hash of the traits it last sent.
    pub traits_hash: Vec<u8>,
    /// Its traits, interned in the fleet's [`TraitStore`], once sent. The observation holds
    /// one reference to this root.
    pub traits: Option<NodeId>,
    /// Fingerprint of the bundle it reported holding.
    pub bundle_fingerprint: Vec<u8>,
    /// Summary of its last reported run.
    pub last_run: Option<RunSummary>,
    /// Number of run reports received.
    pub reports_received: u64,
}

/// A request whose counter did not grow: a replay, or a clone of the envoy's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request counter {counter} is not above {last}: replay refused")]
pub struct Replay {
    /// Counter sent.
    pub counter: u64,
    /// Highest counter accepted before.
    pub last: u64,
}

/// An envoy whose observation changed since the snapshot writer last took it.
#[derive(Debug)]
pub struct DirtyEnvoy {
    /// Its id.
    pub envoy_id: Arc<str>,
    /// A copy of its observation.
    pub observation: EnvoyObservation,
    /// A reference to its traits (`observation.traits`), so they outlive the write.
    pub traits: Option<HeldTraits>,
}

#[derive(Debug, Default)]
struct Entry {
    observation: EnvoyObservation,
    dirty: bool,
}

type Shard = hashbrown::HashMap<Arc<str>, Entry, RandomState>;

/// Observations of the whole fleet. See the module docs.
#[derive(Debug)]
pub struct FleetIndex {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    traits: Arc<TraitStore>,
    with_traits: AtomicUsize,
    /// Which envoys have which traits, for queries.
    index: TraitIndex,
    /// Traits changes not yet in `index`, oldest first, each holding a reference to both
    /// documents: the update reads the replaced document, whose large values may be on disk
    /// only, so it waits for [`Self::settle_index`], off the check-in path.
    index_pending: Mutex<Vec<IndexChange>>,
    /// Held while changes are applied, so they are applied in the order they were made.
    index_settling: Mutex<()>,
}

/// An envoy's traits went from `old` to `new` (roots, one reference each).
#[derive(Debug)]
struct IndexChange {
    envoy_id: Arc<str>,
    old: Option<NodeId>,
    new: NodeId,
}

impl Default for FleetIndex {
    fn default() -> Self {
        Self {
            shards: (0..N_SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            traits: Arc::new(TraitStore::default()),
            with_traits: AtomicUsize::new(0),
            index: TraitIndex::default(),
            index_pending: Mutex::new(Vec::new()),
            index_settling: Mutex::new(()),
        }
    }
}

impl FleetIndex {
    /// The store the envoys' traits are interned in.
    pub fn trait_store(&self) -> &Arc<TraitStore> {
        &self.traits
    }

    fn shard(&self, envoy_id: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(self.hasher.hash_one(envoy_id) as usize) % N_SHARDS])
    }

    /// Accepts a signed request: the counter must grow (anti-replay); marks the envoy seen.
    pub fn accept(&self, envoy_id: &str, counter: u64, now_ms: i64) -> Result<(), Replay> {
        let mut shard = self.shard(envoy_id);
        let entry = shard.entry_ref(envoy_id).or_default();
        if counter <= entry.observation.last_counter {
            return Err(Replay { counter, last: entry.observation.last_counter });
        }
        entry.dirty = true;
        let obs = &mut entry.observation;
        obs.last_counter = counter;
        obs.last_seen_ms = now_ms;
        Ok(())
    }

    /// Records what the envoy said it holds, and its traits when it sent them: `traits` is a
    /// root interned in [`Self::trait_store`] whose reference passes to the index (the
    /// previous root's is given back).
    pub fn record_check_in(
        &self,
        envoy_id: &str,
        bundle_fingerprint: &[u8],
        traits_hash: &[u8],
        traits: Option<NodeId>,
    ) {
        let mut shard = self.shard(envoy_id);
        let Some(entry) = shard.get_mut(envoy_id) else {
            if let Some(root) = traits {
                self.traits.release(root);
            }
            return;
        };
        entry.dirty = true;
        let obs = &mut entry.observation;
        if obs.bundle_fingerprint != bundle_fingerprint {
            obs.bundle_fingerprint = bundle_fingerprint.to_vec();
        }
        if let Some(root) = traits {
            obs.traits_hash = traits_hash.to_vec();
            // The observation's reference to the old root passes to the pending change, which
            // takes one more to the new; queued under the shard lock, so one envoy's changes
            // queue in the order they were made.
            let old = obs.traits.replace(root);
            if old.is_none() {
                self.with_traits.fetch_add(1, Ordering::Relaxed);
            }
            self.traits.retain(root);
            let change = IndexChange { envoy_id: entry_id(&shard, envoy_id), old, new: root };
            lock(&self.index_pending).push(change);
        }
    }

    /// Applies the traits changes queued since the last call to the query index, in order,
    /// and gives back the documents they held. May read cold traits from the snapshot: for
    /// the snapshot writer and queries, never the check-in path (I-3).
    pub fn settle_index(&self) {
        let _settling = lock(&self.index_settling);
        let changes = std::mem::take(&mut *lock(&self.index_pending));
        for change in changes {
            self.index.update(&self.traits, &change.envoy_id, change.old, Some(change.new));
            if let Some(old) = change.old {
                self.traits.release(old);
            }
            self.traits.release(change.new);
        }
    }

    /// The envoys whose traits have, for each entry of `all`, one of its keys (see
    /// [`TraitIndex`]); `None` when `all` narrows nothing.
    pub fn having(&self, all: &[Vec<IndexKey>]) -> Option<Vec<String>> {
        self.settle_index();
        self.index.having(all)
    }

    /// The query index's keys and the bytes of its bitmaps.
    pub fn index_stats(&self) -> (usize, usize) {
        self.settle_index();
        self.index.stats()
    }

    /// Number of envoys whose traits are held.
    pub fn n_with_traits(&self) -> usize {
        self.with_traits.load(Ordering::Relaxed)
    }

    /// Whether the envoy's stored traits are the ones hashing to `traits_hash`.
    pub fn has_traits(&self, envoy_id: &str, traits_hash: &[u8]) -> bool {
        let shard = self.shard(envoy_id);
        shard.get(envoy_id).is_some_and(|e| e.observation.traits.is_some() && e.observation.traits_hash == traits_hash)
    }

    /// A reference to the traits last sent by the envoy, if their hash is `traits_hash`.
    pub fn traits_if_current(&self, envoy_id: &str, traits_hash: &[u8]) -> Option<HeldTraits> {
        let shard = self.shard(envoy_id);
        let obs = &shard.get(envoy_id)?.observation;
        let root = obs.traits.filter(|_| obs.traits_hash == traits_hash)?;
        // Retained under the shard lock: `record_check_in` cannot release it in between.
        self.traits.retain(root);
        Some(HeldTraits::adopt(self.traits.clone(), root))
    }

    /// Records a reported run.
    pub fn record_run(&self, envoy_id: &str, summary: RunSummary) {
        let mut shard = self.shard(envoy_id);
        let entry = shard.entry_ref(envoy_id).or_default();
        entry.dirty = true;
        let obs = &mut entry.observation;
        obs.reports_received += 1;
        let newer = obs.last_run.as_ref().is_none_or(|r| r.started_at_ms <= summary.started_at_ms);
        if newer {
            obs.last_run = Some(summary);
        }
    }

    /// A copy of what is known of one envoy.
    pub fn get(&self, envoy_id: &str) -> Option<EnvoyObservation> {
        self.shard(envoy_id).get(envoy_id).map(|e| e.observation.clone())
    }

    /// Number of envoys observed since start.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether nothing was observed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of envoys whose last accepted request was at or after `cutoff_ms`.
    ///
    /// Scans the whole fleet, one shard lock at a time: for a metrics scrape or an operator,
    /// never for the check-in path (I-3).
    pub fn count_seen_since(&self, cutoff_ms: i64) -> usize {
        self.shards.iter().map(|s| lock(s).values().filter(|e| e.observation.last_seen_ms >= cutoff_ms).count()).sum()
    }

    /// Number of shards; [`Self::take_dirty`] takes a range of them.
    pub const fn n_shards() -> usize {
        N_SHARDS
    }

    /// The envoys in `shards` that changed since the last call, with their dirty marks
    /// cleared. Scans those shards, one lock at a time: for the snapshot writer, never for
    /// the check-in path (I-3).
    pub fn take_dirty(&self, shards: std::ops::Range<usize>) -> Vec<DirtyEnvoy> {
        let mut dirty = Vec::new();
        for shard in &self.shards[shards] {
            let mut shard = lock(shard);
            for (envoy_id, entry) in shard.iter_mut().filter(|(_, e)| e.dirty) {
                entry.dirty = false;
                let observation = entry.observation.clone();
                // Retained under the shard lock: `record_check_in` cannot release it in between.
                let traits = observation.traits.map(|root| {
                    self.traits.retain(root);
                    HeldTraits::adopt(self.traits.clone(), root)
                });
                dirty.push(DirtyEnvoy { envoy_id: envoy_id.clone(), observation, traits });
            }
        }
        dirty
    }

    /// Marks every envoy dirty, so the next [`Self::take_dirty`] hands over the whole fleet
    /// (after a snapshot write failed).
    pub fn mark_all_dirty(&self) {
        for shard in &self.shards {
            lock(shard).values_mut().for_each(|e| e.dirty = true);
        }
    }

    /// Puts back an observation read from the snapshot, not dirty. Its traits root, if any,
    /// is a reference in [`Self::trait_store`] that passes to the index. An envoy already
    /// observed since the start keeps what it has.
    pub fn restore(&self, envoy_id: &str, observation: EnvoyObservation) {
        let mut shard = self.shard(envoy_id);
        if shard.contains_key(envoy_id) {
            if let Some(root) = observation.traits {
                self.traits.release(root);
            }
            return;
        }
        if observation.traits.is_some() {
            self.with_traits.fetch_add(1, Ordering::Relaxed);
            self.index.update(&self.traits, envoy_id, None, observation.traits);
        }
        shard.insert(Arc::from(envoy_id), Entry { observation, dirty: false });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shard's own copy of an envoy's id (shared, not copied).
fn entry_id(shard: &Shard, envoy_id: &str) -> Arc<str> {
    shard.get_key_value(envoy_id).map_or_else(|| Arc::from(envoy_id), |(id, _)| id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_must_grow() {
        let fleet = FleetIndex::default();
        fleet.accept("e1", 5, 100).unwrap();
        assert_eq!(fleet.accept("e1", 5, 101), Err(Replay { counter: 5, last: 5 }));
        assert_eq!(fleet.accept("e1", 4, 101), Err(Replay { counter: 4, last: 5 }));
        fleet.accept("e1", 6, 102).unwrap();
        fleet.accept("e2", 1, 102).unwrap();
        assert_eq!(fleet.get("e1").unwrap().last_seen_ms, 102);
        assert_eq!(fleet.len(), 2);
    }

    #[test]
    fn traits_are_kept_with_their_hash_and_replaced_ones_released() {
        let fleet = FleetIndex::default();
        let store = fleet.trait_store().clone();
        fleet.accept("e1", 1, 1).unwrap();
        fleet.record_check_in("e1", b"fp", b"h1", Some(store.intern_json(r#"{"a":1}"#).unwrap()));
        let held = fleet.traits_if_current("e1", b"h1").unwrap();
        assert_eq!(store.to_json(held.root()), r#"{"a":1}"#);
        assert!(fleet.has_traits("e1", b"h1"));
        assert_eq!(fleet.n_with_traits(), 1);
        assert!(fleet.traits_if_current("e1", b"h2").is_none());
        assert!(!fleet.has_traits("e1", b"h2"));

        // New traits replace the old; the old document lives on while a compile still holds it.
        fleet.record_check_in("e1", b"fp", b"h2", Some(store.intern_json(r#"{"b":2}"#).unwrap()));
        assert_eq!(store.to_json(held.root()), r#"{"a":1}"#);
        drop(held);
        assert_eq!(fleet.n_with_traits(), 1, "replaced, not added");
        assert!(store.stats().nodes > 3, "the old document waits for the index update");
        fleet.settle_index();
        assert_eq!(store.to_json(fleet.traits_if_current("e1", b"h2").unwrap().root()), r#"{"b":2}"#);
        assert_eq!(store.stats().nodes, 3, "only {{\"b\":2}}, \"b\" and 2 are left");

        // Traits for an envoy never accepted are given back at once.
        fleet.record_check_in("e9", b"fp", b"h1", Some(store.intern_json(r#"{"c":3}"#).unwrap()));
        assert_eq!(store.stats().nodes, 3);
        assert_eq!(fleet.n_with_traits(), 1);
    }

    #[test]
    fn count_seen_since_counts_envoys_seen_at_or_after_the_cutoff() {
        let fleet = FleetIndex::default();
        assert_eq!(fleet.count_seen_since(0), 0);
        fleet.accept("e1", 1, 1_000).unwrap();
        fleet.accept("e2", 1, 2_000).unwrap();
        fleet.accept("e3", 1, 3_000).unwrap();
        assert_eq!(fleet.count_seen_since(0), 3);
        assert_eq!(fleet.count_seen_since(2_000), 2, "the cutoff itself counts");
        assert_eq!(fleet.count_seen_since(3_001), 0);
        // A later check-in moves an envoy back inside the window.
        fleet.accept("e1", 2, 5_000).unwrap();
        assert_eq!(fleet.count_seen_since(3_001), 1);
        // A refused (replayed) request does not.
        assert!(fleet.accept("e2", 1, 6_000).is_err());
        assert_eq!(fleet.count_seen_since(3_001), 1);
    }

    #[test]
    fn changes_mark_envoys_dirty_once_and_refusals_do_not() {
        let fleet = FleetIndex::default();
        let all = 0..FleetIndex::n_shards();
        fleet.accept("e1", 1, 10).unwrap();
        fleet.accept("e1", 2, 20).unwrap();
        fleet.accept("e2", 1, 10).unwrap();
        let mut dirty: Vec<_> =
            fleet.take_dirty(all.clone()).into_iter().map(|d| (d.envoy_id, d.observation)).collect();
        dirty.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(dirty.len(), 2, "each envoy once");
        assert_eq!((&*dirty[0].0, dirty[0].1.last_counter), ("e1", 2), "as of its last change");
        assert!(fleet.take_dirty(all.clone()).is_empty(), "taken means clean");
        assert!(fleet.accept("e1", 2, 30).is_err());
        assert!(fleet.take_dirty(all.clone()).is_empty(), "a refused replay changes nothing");
        fleet.record_run("e2", RunSummary { run_id: 1, ..Default::default() });
        assert_eq!(fleet.take_dirty(all.clone()).len(), 1);
        fleet.mark_all_dirty();
        assert_eq!(fleet.take_dirty(all).len(), 2);
    }

    #[test]
    fn the_latest_run_wins() {
        let fleet = FleetIndex::default();
        fleet.record_run("e1", RunSummary { run_id: 2, started_at_ms: 20, ..Default::default() });
        fleet.record_run("e1", RunSummary { run_id: 1, started_at_ms: 10, ..Default::default() });
        let obs = fleet.get("e1").unwrap();
        assert_eq!(obs.last_run.unwrap().run_id, 2);
        assert_eq!(obs.reports_received, 2);
    }
}

//! Kernel evidence, kept in bounded per-key ring windows until spans come to look at it.
//!
//! Four bounds, each counted when it bites: entries per key (a ring: the oldest entry goes),
//! number of keys and entries in all (the least recently touched eighth of the keys goes, so a
//! flood of new keys costs amortised O(log n) per insert instead of a scan each), and age
//! (entries older than the retention are pruned). The entry bound is what sizes the memory:
//! keys × per-key alone would allow far more than any detection needs. A query says when
//! evidence inside its window may have been dropped.
use std::{collections::HashMap, collections::VecDeque, hash::Hash};

use crate::shared::{
    evidence::{RunqEntry, TcpEntry, Timed},
    netkey::ConnKey,
};

#[derive(Clone, Debug)]
pub struct Window<T> {
    items: VecDeque<T>,
    /// Largest timestamp among entries pushed out of the ring (0: none).
    dropped_upto: u64,
    /// Last time (Unix ns) anything was added: drives key eviction.
    touched: u64,
}

impl<T: Timed> Window<T> {
    pub fn items(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// True if entries with timestamps ≥ `from` may have been dropped.
    pub fn truncated_since(&self, from: u64) -> bool {
        self.dropped_upto != 0 && self.dropped_upto >= from
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_keys: usize,
    pub per_key: usize,
    /// Entries over all keys.
    pub max_entries: usize,
    pub retention_ns: u64,
}

impl Bounds {
    /// The most heap these bounds let a store of `T` entries under `K` keys hold: entries at
    /// their ring's largest capacity (a `VecDeque` doubles: < 2× the entries), plus each key's
    /// map slot and window (the map itself: < 2× the keys with hashbrown's load factor).
    pub fn max_bytes<K, T>(&self) -> usize {
        let entries = self.max_entries.min(self.max_keys * self.per_key);
        let key = size_of::<K>() + size_of::<Window<T>>() + 1;
        2 * entries * size_of::<T>() + 2 * self.max_keys * key
    }
}

/// A map's table keeps the size of its largest burst (hashbrown never shrinks by itself): once
/// it is mostly empty, give the room back, keeping twice what is held.
pub fn shrink_after_burst<K: Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.capacity() > 4 * map.len() {
        map.shrink_to(2 * map.len());
    }
}

/// What the bounds removed since the last call to [`Windows::take_evictions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub ring_full: u64,
    pub key_cap: u64,
    pub expired: u64,
}

pub struct Windows<K, T> {
    map: HashMap<K, Window<T>>,
    /// Entries over all keys.
    entries: usize,
    bounds: Bounds,
    /// Everything older than this (Unix ns) has been pruned by age.
    horizon: u64,
    ev: Evictions,
}

impl<K: Hash + Eq + Clone, T: Timed> Windows<K, T> {
    pub fn new(bounds: Bounds) -> Self {
        assert!(bounds.max_keys > 0 && bounds.per_key > 0 && bounds.max_entries > 0);
        Self {
            map: HashMap::new(),
            entries: 0,
            bounds,
            horizon: 0,
            ev: Evictions::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn push(&mut self, key: K, item: T) {
        let new_key = !self.map.contains_key(&key);
        if (new_key && self.map.len() >= self.bounds.max_keys)
            || self.entries >= self.bounds.max_entries
        {
            self.evict_oldest_keys();
        }
        let ts = item.ts();
        let per_key = self.bounds.per_key;
        // Most keys never see more than two entries (an RST and its echo on the peer's
        // socket); a storm of new connections is mostly such keys, and a `VecDeque` would
        // otherwise allocate room for four on the first push.
        let w = self.map.entry(key).or_insert_with(|| Window {
            items: VecDeque::with_capacity(2),
            dropped_upto: 0,
            touched: 0,
        });
        if w.items.len() >= per_key
            && let Some(old) = w.items.pop_front()
        {
            w.dropped_upto = w.dropped_upto.max(old.ts());
            self.ev.ring_full += 1;
            self.entries -= 1;
        }
        w.items.push_back(item);
        self.entries += 1;
        w.touched = w.touched.max(ts);
    }

    fn evict_oldest_keys(&mut self) {
        let n = (self.map.len() / 8).max(1);
        let mut touched: Vec<u64> = self.map.values().map(|w| w.touched).collect();
        let (_, cut, _) = touched.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut removed = 0;
        let mut entries = 0;
        self.map.retain(|_, w| {
            if removed < n && w.touched <= cut {
                removed += 1;
                entries += w.items.len();
                false
            } else {
                true
            }
        });
        self.ev.key_cap += removed as u64;
        self.entries -= entries;
    }

    /// Drops entries older than the retention, and keys left empty.
    pub fn prune(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.bounds.retention_ns);
        self.horizon = self.horizon.max(horizon);
        let mut expired = 0;
        self.map.retain(|_, w| {
            while w.items.front().is_some_and(|i| i.ts() < horizon) {
                w.items.pop_front();
                expired += 1;
            }
            !w.items.is_empty()
        });
        self.ev.expired += expired;
        self.entries -= expired as usize;
        shrink_after_burst(&mut self.map);
    }

    pub fn get(&self, key: &K) -> Option<&Window<T>> {
        self.map.get(key)
    }

    /// True if evidence at or after `from` may be missing for `key` (ring overflow, key
    /// eviction, or age).
    pub fn truncated(&self, key: &K, from: u64) -> bool {
        from < self.horizon || self.map.get(key).is_some_and(|w| w.truncated_since(from))
    }

    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.ev)
    }
}

/// (network namespace, connection).
pub type NetConnKey = (u64, ConnKey);

/// All kernel evidence the correlator holds.
pub struct Evidence {
    /// Run-queue waits by thread id.
    pub runq: Windows<u32, RunqEntry>,
    /// TCP events by network namespace and connection: two pods that each talk to their own
    /// 127.0.0.1:6379 have one 4-tuple and two connections.
    pub tcp: Windows<NetConnKey, TcpEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runq(end_ns: u64, delay_ns: u64) -> RunqEntry {
        RunqEntry {
            end_ns,
            delay_ns,
            pid: 1,
            cpu: 0,
        }
    }

    #[test]
    fn ring_per_key_keeps_the_newest_and_flags_truncation() {
        let mut w = Windows::new(Bounds {
            max_keys: 10,
            per_key: 3,
            max_entries: usize::MAX,
            retention_ns: u64::MAX,
        });
        for t in 1..=5 {
            w.push(7u32, runq(t * 100, 10));
        }
        let kept: Vec<u64> = w.get(&7).unwrap().items().map(|e| e.end_ns).collect();
        assert_eq!(kept, [300, 400, 500]);
        assert!(w.truncated(&7, 150), "entry at 200 was dropped");
        assert!(!w.truncated(&7, 201));
        assert_eq!(w.take_evictions().ring_full, 2);
    }

    #[test]
    fn key_cap_evicts_least_recently_touched() {
        let mut w = Windows::new(Bounds {
            max_keys: 16,
            per_key: 4,
            max_entries: usize::MAX,
            retention_ns: u64::MAX,
        });
        for k in 0..16u32 {
            w.push(k, runq(1_000 + u64::from(k), 1));
        }
        // Key 0 is touched again, so it is the newest.
        w.push(0, runq(5_000, 1));
        w.push(100, runq(6_000, 1));
        assert!(w.len() <= 16);
        assert!(w.get(&0).is_some() && w.get(&100).is_some());
        assert!(w.get(&1).is_none(), "the least recently touched key went");
        assert_eq!(w.take_evictions().key_cap, 2, "an eighth of 16");
        // A flood of new keys never grows the map past the cap.
        for k in 1000..5000u32 {
            w.push(k, runq(u64::from(k) * 10, 1));
            assert!(w.len() <= 16);
        }
    }

    #[test]
    fn prune_by_age_and_report_horizon() {
        let mut w = Windows::new(Bounds {
            max_keys: 10,
            per_key: 10,
            max_entries: usize::MAX,
            retention_ns: 1_000,
        });
        w.push(1u32, runq(100, 1));
        w.push(1u32, runq(1_500, 1));
        w.push(2u32, runq(200, 1));
        w.prune(2_000);
        assert_eq!(w.len(), 1);
        assert_eq!(w.entries(), 1);
        assert!(w.truncated(&1, 500), "before the horizon at 1000");
        assert!(!w.truncated(&1, 1_200));
        assert_eq!(w.take_evictions().expired, 2);
    }

    #[test]
    fn entry_bound_holds_under_a_flood_of_keys_and_counts_what_went() {
        // Many entries per key on few keys, then one entry per key on many: either way the
        // store never holds more than max_entries, and what it let go is counted.
        let bounds = Bounds {
            max_keys: 1000,
            per_key: 64,
            max_entries: 500,
            retention_ns: u64::MAX,
        };
        let mut w = Windows::new(bounds);
        let mut pushed = 0u64;
        for k in 0..20u32 {
            for t in 0..64u64 {
                w.push(k, runq(u64::from(k) * 1000 + t, 1));
                pushed += 1;
                assert!(w.entries() <= 500);
            }
        }
        for k in 100..20_000u32 {
            w.push(k, runq(1_000_000 + u64::from(k), 1));
            pushed += 1;
            assert!(w.entries() <= 500 && w.len() <= 1000);
        }
        assert_eq!(
            w.entries(),
            w.map.values().map(|x| x.items.len()).sum::<usize>()
        );
        let ev = w.take_evictions();
        // Every entry pushed is either held or counted as evicted (key_cap counts keys: count
        // the entries they held through the books instead).
        assert!(ev.key_cap > 0);
        assert!(pushed > w.entries() as u64);
        assert!(bounds.max_bytes::<u32, RunqEntry>() < 200 * 1024);
    }
}

//! Kernel evidence, kept in bounded per-key ring windows until spans come to look at it.
//!
//! Four bounds, each counted when it bites: entries per key (a ring: the oldest entry goes),
//! number of keys and entries in all (the least recently touched eighth of the keys goes, so a
//! flood of new keys costs amortised O(log n) per insert instead of a scan each), and age
//! (entries older than the retention are pruned). The entry bound is what sizes the memory:
//! keys × per-key alone would allow far more than any detection needs. A query says when
//! evidence inside its window may have been dropped.
//!
//! Every entry lives in one slab (a `Vec`, linked per key), not in a small buffer per key: a
//! reset storm makes thousands of new keys at once, and one small long-lived allocation each,
//! scattered among the burst's short-lived ones, kept the heap's pages from being returned
//! after it. The slab grows as entries come (reserving it at the entry bound up front cost
//! ~2 MiB of resident heap at start, measured) and is compacted once mostly free.
use std::{collections::HashMap, hash::Hash};

use crate::shared::{
    evidence::{RunqEntry, TcpEntry, Timed},
    netkey::ConnKey,
};

/// End of a list.
const NIL: u32 = u32::MAX;

enum Slot<T> {
    Used { item: T, next: u32 },
    Free { next: u32 },
}

/// One key's entries, oldest first: a list through the slab (no heap of its own).
#[derive(Clone, Copy, Debug)]
struct Ring {
    head: u32,
    tail: u32,
    len: u32,
    /// Largest timestamp among entries pushed out of the ring (0: none).
    dropped_upto: u64,
    /// Last time (Unix ns) anything was added: drives key eviction.
    touched: u64,
}

impl Ring {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
        len: 0,
        dropped_upto: 0,
        touched: 0,
    };
}

/// The entries of every key, with a free list; their memory is one allocation.
struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: u32,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NIL,
        }
    }

    fn push_back(&mut self, r: &mut Ring, item: T) {
        let i = if self.free == NIL {
            let i = u32::try_from(self.slots.len()).expect("evidence slab past u32 slots");
            self.slots.push(Slot::Used { item, next: NIL });
            i
        } else {
            let i = self.free;
            let Slot::Free { next } = self.slots[i as usize] else {
                unreachable!("free list points at a used slot")
            };
            self.free = next;
            self.slots[i as usize] = Slot::Used { item, next: NIL };
            i
        };
        if r.tail == NIL {
            r.head = i;
        } else if let Slot::Used { next, .. } = &mut self.slots[r.tail as usize] {
            *next = i;
        }
        r.tail = i;
        r.len += 1;
    }

    fn front(&self, r: &Ring) -> Option<&T> {
        match self.slots.get(r.head as usize)? {
            Slot::Used { item, .. } => Some(item),
            Slot::Free { .. } => None,
        }
    }

    fn pop_front(&mut self, r: &mut Ring) -> Option<T> {
        if r.head == NIL {
            return None;
        }
        let i = r.head;
        let slot = std::mem::replace(&mut self.slots[i as usize], Slot::Free { next: self.free });
        self.free = i;
        let Slot::Used { item, next } = slot else {
            unreachable!("a ring points at a free slot")
        };
        r.head = next;
        if next == NIL {
            r.tail = NIL;
        }
        r.len -= 1;
        Some(item)
    }

    fn clear(&mut self, r: &mut Ring) {
        while self.pop_front(r).is_some() {}
    }

    /// After a burst the slab keeps the pages its largest fill touched: once mostly free, move
    /// what is held into a fresh one (in each key's order) and let the old one go.
    fn compact<K>(&mut self, map: &mut HashMap<K, Ring>, entries: usize) {
        if self.slots.len() <= 1024 || self.slots.len() <= 4 * entries {
            return;
        }
        let mut old = std::mem::replace(self, Self::new());
        self.slots.reserve_exact(entries);
        for r in map.values_mut() {
            let mut moved = Ring {
                head: NIL,
                tail: NIL,
                len: 0,
                ..*r
            };
            while let Some(item) = old.pop_front(r) {
                self.push_back(&mut moved, item);
            }
            *r = moved;
        }
    }
}

/// One key's evidence, as a query sees it.
pub struct Window<'a, T> {
    ring: &'a Ring,
    slab: &'a Slab<T>,
}

impl<'a, T: Timed> Window<'a, T> {
    /// Oldest first.
    pub fn items(&self) -> impl Iterator<Item = &'a T> + use<'a, T> {
        let slots = &self.slab.slots;
        let mut at = self.ring.head;
        std::iter::from_fn(move || match slots.get(at as usize)? {
            Slot::Used { item, next } => {
                at = *next;
                Some(item)
            }
            Slot::Free { .. } => None,
        })
    }

    pub fn len(&self) -> usize {
        self.ring.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.ring.len == 0
    }

    /// True if entries with timestamps ≥ `from` may have been dropped.
    pub fn truncated_since(&self, from: u64) -> bool {
        self.ring.dropped_upto != 0 && self.ring.dropped_upto >= from
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
    /// Entries these bounds let a store hold at once.
    fn entries(&self) -> usize {
        self.max_entries
            .min(self.max_keys.saturating_mul(self.per_key))
    }

    /// The most heap these bounds let a store of `T` entries under `K` keys hold: the slab at
    /// the entry bound (a `Vec` doubles: < 2× the entries), plus each key's map slot (the map
    /// itself: < 2× the keys with hashbrown's load factor).
    pub fn max_bytes<K, T>(&self) -> usize {
        let key = size_of::<K>() + size_of::<Ring>() + 1;
        2 * self.entries() * size_of::<Slot<T>>() + 2 * self.max_keys * key
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
    map: HashMap<K, Ring>,
    slab: Slab<T>,
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
            slab: Slab::new(),
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

    /// Slots the slab holds (used or free): what its memory follows.
    pub fn slots(&self) -> usize {
        self.slab.slots.len()
    }

    pub fn push(&mut self, key: K, item: T) {
        let new_key = !self.map.contains_key(&key);
        if (new_key && self.map.len() >= self.bounds.max_keys)
            || self.entries >= self.bounds.max_entries
        {
            self.evict_oldest_keys();
        }
        let ts = item.ts();
        let r = self.map.entry(key).or_insert(Ring::EMPTY);
        if r.len as usize >= self.bounds.per_key
            && let Some(old) = self.slab.pop_front(r)
        {
            r.dropped_upto = r.dropped_upto.max(old.ts());
            self.ev.ring_full += 1;
            self.entries -= 1;
        }
        self.slab.push_back(r, item);
        self.entries += 1;
        r.touched = r.touched.max(ts);
    }

    fn evict_oldest_keys(&mut self) {
        let n = (self.map.len() / 8).max(1);
        let mut touched: Vec<u64> = self.map.values().map(|r| r.touched).collect();
        let (_, cut, _) = touched.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut removed = 0;
        let mut entries = 0;
        let slab = &mut self.slab;
        self.map.retain(|_, r| {
            if removed < n && r.touched <= cut {
                removed += 1;
                entries += r.len as usize;
                slab.clear(r);
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
        let slab = &mut self.slab;
        self.map.retain(|_, r| {
            while slab.front(r).is_some_and(|i| i.ts() < horizon) {
                slab.pop_front(r);
                expired += 1;
            }
            r.len > 0
        });
        self.ev.expired += expired;
        self.entries -= expired as usize;
        shrink_after_burst(&mut self.map);
        self.slab.compact(&mut self.map, self.entries);
    }

    pub fn get(&self, key: &K) -> Option<Window<'_, T>> {
        self.map.get(key).map(|ring| Window {
            ring,
            slab: &self.slab,
        })
    }

    /// True if evidence at or after `from` may be missing for `key` (ring overflow, key
    /// eviction, or age).
    pub fn truncated(&self, key: &K, from: u64) -> bool {
        from < self.horizon || self.get(key).is_some_and(|w| w.truncated_since(from))
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
    fn the_slab_is_compacted_after_a_burst_and_keeps_each_key_in_order() {
        let mut w = Windows::new(Bounds {
            max_keys: 4096,
            per_key: 4,
            max_entries: usize::MAX,
            retention_ns: 1_000,
        });
        // A burst of keys, and one key that keeps its ring full (its oldest pushed out).
        for k in 0..2000u32 {
            w.push(k, runq(10, 1));
        }
        for t in 0..6u64 {
            w.push(9999, runq(5_000 + t, 1));
        }
        assert_eq!(w.slots(), 2004);
        w.prune(5_500);
        assert_eq!((w.len(), w.entries()), (1, 4));
        assert!(w.slots() <= 4, "{} slots kept for 4 entries", w.slots());
        let kept: Vec<u64> = w.get(&9999).unwrap().items().map(|e| e.end_ns).collect();
        assert_eq!(kept, [5_002, 5_003, 5_004, 5_005]);
        assert!(
            w.truncated(&9999, 5_001),
            "the ring's drops survive the compaction"
        );
        // Freed slots are reused before the slab grows.
        w.push(1, runq(5_100, 1));
        w.push(9999, runq(5_200, 1));
        assert_eq!((w.entries(), w.slots()), (5, 5));
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
            w.map
                .keys()
                .map(|k| w.get(k).unwrap().items().count())
                .sum::<usize>()
        );
        let ev = w.take_evictions();
        // Every entry pushed is either held or counted as evicted (key_cap counts keys: count
        // the entries they held through the books instead).
        assert!(ev.key_cap > 0);
        assert!(pushed > w.entries() as u64);
        assert!(bounds.max_bytes::<u32, RunqEntry>() < 200 * 1024);
    }
}

//! Maps shared by the programs. Sizes here are defaults; the agent resizes the ring buffers and
//! tables from its configuration before loading.
use agent_common::{COUNTER_MAX, Counter, SockOwner};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};

/// TCP events (retransmits, RSTs) for the agent.
#[map]
pub static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Lossless totals, indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_MAX, 0);

/// Socket address → owner. LRU so that sockets whose destruction we missed age out instead of
/// filling the table.
#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Reads a global the loader patched before load. A volatile read keeps the compiler from
/// folding in the compile-time default.
#[inline(always)]
pub fn global<T: Copy>(g: &T) -> T {
    unsafe { core::ptr::read_volatile(g) }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags that batch wake-ups: the reader is woken only once `wake_bytes` are waiting
/// (it drains on a short timer as well, so nothing waits longer than that).
#[inline(always)]
pub fn wake_flags(ring: &RingBuf, wake_bytes: u64) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA) >= wake_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race us.
        unsafe { *slot += n };
    }
}
